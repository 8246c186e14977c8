"""Model kinds as records: everything ICG knows about one kind of model, in one place.

A ``ModelKind`` says how to recognise the kind in a folder (``detect``), describe an installed folder in
one line (``describe``), load it as a captioner (``load``, only for captioner kinds), import files a
person brings (``recognise`` + ``import_files``) and convert a downloaded original once (``convert``),
plus the registry facts an entry of the kind must state. ``icg.models`` (loading, importing, converting,
registry validation) looks kinds up here and has no per-kind code.

A new kind is one module defining its record(s) in ``KINDS`` plus one registration: its name in
``BUILTIN_MODULES`` (or a ``register`` call by the code that uses it, as the tests do). The built-in
records (clip-prefix; sbg and sbg-vocabulary; tokenizer and clip) are registered on first use, so
importing this module is cheap and never imports ``icg.models``. Records are checked in registration
order (the built-in ones first, in ``BUILTIN_MODULES`` order): the first kind whose ``detect`` answers
wins.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from icg.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from icg.models.loading import ResolvedModel
    from icg.models.manager import Captioner, ModelManager
    from icg.models.registry import ModelEntry

#: The modules whose import registers the built-in kinds, in detection order.
BUILTIN_MODULES = ("icg.captioners.prefix_kind", "icg.sbg.kind", "icg.models.resource_kinds")


@dataclass
class ImportJob:
    """What ``import_files`` gets besides the sources: the registry entry (None for a user's own model)
    and the person's options. ``originals`` are the files ``--keep-original`` copies into the model
    folder; an importer may change it (e.g. to the pickles it found inside a folder)."""

    entry: ModelEntry | None
    root: Path
    registry: Mapping[str, ModelEntry]
    originals: list[Path]
    clip: str | None = None
    normalize: bool | None = None
    n_head: int | None = None
    mapper_heads: int | None = None
    tokenizer: str | None = None
    vocabulary: str | None = None


@dataclass(frozen=True)
class Conversion:
    """How downloaded originals become the installed files: ``outputs`` (what ``files`` must be),
    ``inputs`` (the names the originals must have; None: any one file) and ``run(entry, folder, out)``,
    which reads ``entry.convert_from`` in ``folder`` and writes the outputs into the empty folder ``out``
    (the caller moves them into place)."""

    outputs: tuple[str, ...]
    inputs: tuple[str, ...] | None
    run: Callable[[ModelEntry, Path, Path], None]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model; see the module docstring. Callables may import heavy libraries lazily.

    ``detect(path)``: True when a file or an installed folder holds this kind (read its configs, never
    trust the name alone). ``describe(folder)``: one line for a person; ``CheckpointError`` when the
    folder is incomplete. ``settings(folder, entry)``: what ``ResolvedModel.meta`` carries (registry
    facts over the folder's own settings). ``load(name, resolved, manager)``: the captioner.
    ``recognise(paths, probe)``: True when files a person brings are of this kind (default: one path that
    ``detect`` accepts). ``import_files(paths, out, job)`` checks and converts them into the empty folder
    ``out`` and returns one line on what it found. ``local_copy(entry, folder, dirs)`` installs a
    registry model from a copy another tool already keeps on this machine (read-only; ``dirs``: extra
    folders to look in) and says where it came from, or None; downloads try it first.
    ``registry_needs``: the registry fields an entry of
    this kind must set. ``decoding``: the registry's decoding defaults of the kind.
    """

    name: str
    title: str
    formats: str  # what its files look like, for "can't tell what this holds" messages
    detect: Callable[[Path], bool] | None = None
    describe: Callable[[Path], str] | None = None
    settings: Callable[[Path, ModelEntry | None], Mapping[str, Any]] | None = None
    load: Callable[[str, ResolvedModel, ModelManager], Captioner] | None = None
    recognise: Callable[[Sequence[Path], Probe], bool] | None = None
    import_files: Callable[[Sequence[Path], Path, ImportJob], str] | None = None
    convert: Conversion | None = None
    local_copy: Callable[[ModelEntry, Path, Sequence[str]], str | None] | None = None
    registry_needs: tuple[str, ...] = ()
    decoding: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def captioner(self) -> bool:
        """True for kinds that caption images (they load); the others are what captioners need."""
        return self.load is not None


# ------------------------------------------------------------------------------------------ file probes
def read_json(path: Path) -> Any:
    """A JSON file's data; ``CheckpointError`` naming the file when it can't be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from err


def folder_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of a folder as a dict; None when there is none (or ``path`` is a file)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    data = read_json(config)
    if not isinstance(data, dict):
        raise CheckpointError(f"{config}: not a model config (a JSON object)")
    return data


class Probe:
    """Facts about files a person wants to import, read once however many kinds ask."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def tensor_names(self, path: Path) -> frozenset[str]:
        """The tensor names in a weights file (safetensors: its header only)."""
        if path not in self._names:
            read = tensor_shapes if path.suffix == ".safetensors" else read_state
            self._names[path] = frozenset(read(path))
        return self._names[path]


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, without reading the data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def read_state(path: Path) -> dict[str, Any]:
    """The tensors of a weights file (a tensors-only torch file is read with ``weights_only=True``)."""
    from icg.clip_encoder import load_tensor_file

    return load_tensor_file(path)


# ------------------------------------------------------------------------------------------ the registry
_lock = threading.RLock()
_kinds: dict[str, ModelKind] = {}
_builtins_loaded = False


def _ensure_builtins() -> None:
    """Register the ``KINDS`` of ``BUILTIN_MODULES`` first, in that order (whatever imported first)."""
    global _builtins_loaded
    with _lock:
        if not _builtins_loaded:
            builtin = [kind for module in BUILTIN_MODULES for kind in importlib.import_module(module).KINDS]
            _kinds.update({kind.name: kind for kind in builtin})
            _builtins_loaded = True


def register(kind: ModelKind) -> ModelKind:
    """Add ``kind`` (after the built-in kinds); a second kind of the same name is refused."""
    _ensure_builtins()
    with _lock:
        if kind.name in _kinds and _kinds[kind.name] is not kind:
            raise ConfigError(f"model kind {kind.name!r} is registered already")
        _kinds[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the kind ``name`` (a no-op when it is not registered)."""
    with _lock:
        _kinds.pop(name, None)


def kinds() -> tuple[ModelKind, ...]:
    """Every registered kind, in registration (= detection) order."""
    _ensure_builtins()
    with _lock:
        return tuple(_kinds.values())


def names(*, captioners_only: bool = False) -> tuple[str, ...]:
    """The names of the registered kinds (only those that caption, with ``captioners_only``)."""
    return tuple(k.name for k in kinds() if k.captioner or not captioners_only)


def get(name: str) -> ModelKind:
    """The kind ``name``; ``ConfigError`` listing the known kinds otherwise."""
    for kind in kinds():
        if kind.name == name:
            return kind
    raise ConfigError(f"unknown model kind {name!r} (known: {', '.join(names())})")


def _formats() -> str:
    return ", ".join(k.formats for k in kinds() if k.detect is not None)


def detect(path: Path) -> ModelKind:
    """The kind of an installed folder or a loadable file; ``CheckpointError`` when none claims it."""
    path = Path(path)
    for kind in kinds():
        if kind.detect is not None and kind.detect(path):
            return kind
    what = "folder" if path.is_dir() else "file"
    raise CheckpointError(f"{path}: not a model {what} ICG knows (expected {_formats()})")


def recognise(paths: Sequence[Path]) -> ModelKind:
    """The kind of files a person brings to import; ``ConfigError`` asking for ``--kind`` otherwise."""
    probe = Probe()
    for kind in kinds():
        if kind.import_files is None:
            continue
        if kind.recognise is not None:
            if kind.recognise(paths, probe):
                return kind
        elif len(paths) == 1 and kind.detect is not None and kind.detect(paths[0]):
            return kind
    if len(paths) == 1:
        what = f"{paths[0]}: can't tell what this {'folder' if paths[0].is_dir() else 'file'} holds"
    else:
        what = f"can't tell what {', '.join(map(str, paths))} hold"
    raise ConfigError(f"{what} (expected {_formats()}); name the kind with --kind")
