"""Reading the tensors of torch zip archives without running their code.

OpenAI's ``clip`` package (and open_clip 2.20) keep CLIP as a TorchScript archive such as
``~/.cache/clip/ViT-L-14.pt``: a zip holding ``<name>/data.pkl`` (the module tree, pickled), the
TorchScript code and ``<name>/data/<key>`` (one raw storage per file). ``torch.save`` files
(``open_clip_pytorch_model.bin``) share that zip layout with a plain dict of tensors in ``data.pkl``.

``read_refs`` unpickles ``data.pkl`` with an unpickler that allows only what describes tensors: the
archive's module objects (``__torch__.*``) become plain ``ModuleState`` containers, ``_rebuild_tensor_v2``
records a ``TensorRef`` (storage key, dtype, offset, size, stride) and storages are never touched. Any
other global is code: the file is refused (``UnsafePickleError``). A ``torch.*`` global it does not know
(a layout another torch release writes) is ``ArchiveFormatError``; ``load_tensors`` then falls back to
``torch.jit.load`` (TorchScript, not Python: what the WebUI itself runs on this file) and logs which
reader was used. Tensor data is read from ``data/<key>`` only for the tensors asked for.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.errors import CheckpointError, UnsafePickleError

logger = logging.getLogger(__name__)

RESTRICTED = "restricted reader (no code run)"
JIT = "torch.jit.load (TorchScript)"

#: Storage class names in these archives -> torch dtype names.
STORAGE_DTYPES = {
    "HalfStorage": "float16",
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class ArchiveFormatError(CheckpointError):
    """The archive is laid out in a way the restricted reader does not know (not a refusal)."""


class ModuleState:
    """A module object of the archive, reduced to its attributes (``state``); nothing of it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, Mapping) else {}


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's data is: a storage of the archive and the view into it."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    if not isinstance(storage, _Storage):
        raise ArchiveFormatError(f"a tensor without a storage ({type(storage).__name__})")
    try:
        return TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    except (TypeError, ValueError) as err:
        raise ArchiveFormatError(f"a tensor with an unreadable shape ({err})") from err


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


def _ordered_dict(*args: Any) -> dict[Any, Any]:
    return dict(*args)


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return ModuleState  # the archive's own module classes: plain containers here
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" or module.startswith("torch."):
            raise ArchiveFormatError(f"{self._source}: the restricted reader does not know {module}.{name}")
        raise UnsafePickleError(
            f"{self._source}: refused: its data.pkl asks for the Python global '{module}.{name}' (code, "
            "not tensors), so it was not loaded"
        )

    def persistent_load(self, pid: Any) -> Any:
        if (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            return _Storage(pid[2], pid[1].dtype, pid[4])
        raise ArchiveFormatError(f"{self._source}: an unknown storage reference {pid!r:.80}")


def _data_pkl(archive: zipfile.ZipFile, path: Path) -> str:
    names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(names) != 1:
        raise ArchiveFormatError(f"{path}: not a torch zip archive (no <name>/data.pkl)")
    return names[0]


def is_torch_zip(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a zip with one ``<name>/data.pkl`` (TorchScript archive or torch.save file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            _data_pkl(archive, Path(path))
    except (OSError, zipfile.BadZipFile, ArchiveFormatError):
        return False
    return True


def _flatten(obj: Any, prefix: str, out: dict[str, TensorRef], depth: int = 0) -> None:
    if depth > 64:
        raise ArchiveFormatError("the module tree is nested too deeply")
    items = obj.state.items() if isinstance(obj, ModuleState) else obj.items()
    for name, value in items:
        if not isinstance(name, str):
            continue
        key = f"{prefix}{name}"
        if isinstance(value, TensorRef):
            out[key] = value
        elif isinstance(value, ModuleState | dict):
            _flatten(value, key + ".", out, depth + 1)


@dataclass(frozen=True)
class ArchiveRefs:
    """The tensors named in an archive's ``data.pkl``; ``scripted``: its top is a TorchScript module."""

    refs: dict[str, TensorRef]
    scripted: bool

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: r.size for k, r in self.refs.items()}


def read_refs(path: str | os.PathLike[str]) -> ArchiveRefs:
    """The tensor names and shapes of a torch zip archive, read by the restricted unpickler (no tensor
    data is read). ``UnsafePickleError`` when it holds code, ``CheckpointError`` when it is no archive."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(_data_pkl(archive, path))
    except (OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable torch zip archive ({err})") from err
    try:
        top = _TensorsOnlyUnpickler(data, str(path)).load()
    except (UnsafePickleError, ArchiveFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as err:
        raise ArchiveFormatError(f"{path}: data.pkl can't be read ({type(err).__name__}: {err})") from err
    refs: dict[str, TensorRef] = {}
    if isinstance(top, ModuleState | dict):
        _flatten(top, "", refs)
    return ArchiveRefs(refs, isinstance(top, ModuleState))


def _materialise(archive: zipfile.ZipFile, root: str, ref: TensorRef, path: Path, key: str):
    import torch

    dtype = getattr(torch, ref.storage.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    try:
        raw = archive.read(f"{root}/data/{ref.storage.key}")
    except KeyError as err:
        raise ArchiveFormatError(f"{path}: {key}: its storage data/{ref.storage.key} is missing") from err
    if len(raw) != ref.storage.numel * itemsize:
        raise CheckpointError(f"{path}: {key}: storage data/{ref.storage.key} has the wrong size")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True) if n > 0)
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or (ref.storage.numel and last >= ref.storage.numel):
        raise CheckpointError(f"{path}: {key}: the tensor reaches outside its storage")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return torch.as_strided(flat, ref.size, ref.stride, ref.offset).clone()


def _restricted_tensors(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    refs = read_refs(path).refs
    with zipfile.ZipFile(path) as archive:
        root = _data_pkl(archive, path).split("/")[0]
        return {k: _materialise(archive, root, refs[k], path, k) for k in keys if k in refs}


def is_scripted(path: str | os.PathLike[str]) -> bool:
    """True when the zip holds TorchScript code (``<name>/code/``): an archive, not a torch.save file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.count("/") >= 2 and n.split("/")[1] == "code" for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def tensor_shapes(path: str | os.PathLike[str]) -> tuple[bool, dict[str, tuple[int, ...]]]:
    """``(scripted, {name: shape})`` of a torch zip archive: by the restricted reader (no tensor data
    read), or by ``torch.jit.load`` for a TorchScript archive it can't read (logged)."""
    path = Path(path)
    try:
        refs = read_refs(path)
    except ArchiveFormatError as err:
        if not is_scripted(path):
            raise
        logger.info("%s: the restricted reader can't read it (%s); falling back to %s", path, err, JIT)
        return True, {k: tuple(v.shape) for k, v in _jit_state(path).items()}
    return refs.scripted, refs.shapes()


def _jit_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure of the fallback means the same thing
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({reason})") from err
    return dict(module.state_dict())


def _jit_tensors(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    state = _jit_state(path)
    return {k: state[k].detach().clone() for k in keys if k in state}


def load_tensors(path: str | os.PathLike[str], keys: Iterable[str]) -> tuple[dict[str, Any], str]:
    """The tensors ``keys`` of an archive (those it has) and which reader gave them: the restricted
    one, or ``torch.jit.load`` where this torch's archive layout is one it does not know (logged).
    A file holding code is refused, never handed to the fallback."""
    path = Path(path)
    wanted = list(keys)
    try:
        return _restricted_tensors(path, wanted), RESTRICTED
    except ArchiveFormatError as err:
        logger.info("%s: the restricted reader can't read it (%s); falling back to %s", path, err, JIT)
    return _jit_tensors(path, wanted), JIT
