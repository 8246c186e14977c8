"""Read plain-data pickles without executing anything.

Some published files (the SBG vocabulary) are pickles that hold only lists, dicts, tuples, str, int,
float, bool, bytes and None. Those types have dedicated pickle opcodes, so they load without any global
lookup. ``safe_load`` uses an unpickler whose ``find_class`` refuses *every* global and whose
``persistent_load`` refuses every persistent id, so a pickle that tries to reach a class or function
(``os.system``, ``builtins.eval``, ...) is rejected before anything is called.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from typing import Any, BinaryIO

from icg.errors import CheckpointError, UnsafePickleError

logger = logging.getLogger(__name__)

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build builtin containers and scalars but nothing that needs a global."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every global: plain data never needs one."""
        raise UnsafePickleError(
            f"{self._source}: refused to load the global '{module}.{name}'; this file may only hold plain "
            "data (lists, dicts, tuples, strings, numbers), so it was not unpickled"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (used by torch checkpoints and custom pickles, never by plain data)."""
        raise UnsafePickleError(
            f"{self._source}: refused a persistent id ({type(pid).__name__}); this file may only hold "
            "plain data, so it was not unpickled"
        )


def safe_load(path_or_bytes: PathOrBytes) -> Any:
    """Unpickle plain data from a file path or from bytes, refusing every global and persistent id.

    Raises ``UnsafePickleError`` (naming the file and the global it tried) when the pickle references a
    class or function, and ``CheckpointError`` when the file can't be read or is not a valid pickle.
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        source = "<bytes>"
        data = bytes(path_or_bytes)
    else:
        source = os.fspath(path_or_bytes)
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise CheckpointError(f"{source}: can't read the file: {err.strerror or err}") from err
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        MemoryError,
        RecursionError,
    ) as err:
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{source}: not a valid plain-data pickle ({reason})") from err
    logger.debug("safely unpickled %s (%s)", source, type(obj).__name__)
    return obj
