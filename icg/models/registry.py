"""The catalogue of known models: what each one is, which files it consists of once installed, and where
those files come from.

The catalogue is ``registry.json`` beside this module (package data). Every entry is validated when it is
loaded, by building the frozen ``ModelEntry`` / ``ModelSource`` records from it with typed fields
(``_parse``); a malformed entry raises a one-line ``ConfigError`` naming the file, the entry and the field.
An entry's ``kind`` is a registered kind (``icg.captioners.kinds``), which also says which fields it
needs, its decoding defaults and whether it converts. Nothing here touches the
network or the disk beyond reading the JSON file.

Files: ``files`` lists what the model folder holds once the model is installed (what ``present`` checks
and what the loaders read). Most entries download exactly those files. An entry with ``convert_from``
instead downloads the files named there (a torch ``.pt`` state_dict, the SBG vocabulary pickles) and
converts them once into ``files`` (safetensors + JSON); which converter runs follows from the entry's
kind (its ``ModelKind.convert`` in ``icg.captioners.kinds``), and the downloaded originals are deleted
afterwards unless asked to keep them.

Source semantics: every ``hf`` or ``url`` source provides one downloaded file of the entry (``filename``
is its local name inside the model folder; for ``hf`` it is also the path inside the repository): a
name of ``convert_from`` when the entry has one, else a name of ``files``. Several automatic sources may
provide the same file: they are tried in order. ``manual`` sources are pages a person opens in a
browser; they are never fetched, only shown with the import command.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

from icg.captioners import kinds
from icg.errors import ConfigError, ModelNotFound

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).with_name("registry.json")
SCHEMA_VERSION = 1

SOURCE_KINDS = ("hf", "url", "manual")
AUTO_SOURCE_KINDS = ("hf", "url")

# Folder names inside the models folder that a model id may not take.
RESERVED_IDS = frozenset({"cache", "tmp"})

HF_ENDPOINT = "https://huggingface.co"

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NON_EMPTY = MappingProxyType({"non_empty": True})  # field metadata: a list given must not be empty


@dataclass(frozen=True)
class ModelSource:
    """One place a file of a model comes from.

    ``hf``: ``repo`` + ``filename`` (+ ``revision``, default branch when None). ``url``: a direct HTTPS
    ``url`` saved as ``filename``. ``manual``: ``url`` is a web page for a person; ``filename`` is the name
    of the file it offers, for information. ``optional`` files may be absent from the source.
    """

    kind: str
    filename: str | None = None
    repo: str | None = None
    revision: str | None = None
    url: str | None = None
    size: int | None = None
    approx_size: int | None = None  # bytes, roughly, where the exact ``size`` is not known
    sha256: str | None = None
    note: str = ""
    optional: bool = False

    def check(self) -> None:
        """Refuse values a registry file may not hold (``ValueError`` naming the field)."""
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind must be one of {list(SOURCE_KINDS)}, got {self.kind!r}")
        for name in ("repo", "url", "revision", "filename"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name!r} must be a non-empty string or null")
        if self.kind == "hf" and self.repo is None:
            raise ValueError("an 'hf' source needs 'repo'")
        if self.kind == "url" and not (self.url or "").startswith("https://"):
            raise ValueError(f"a 'url' source needs an https:// 'url', got {self.url!r}")
        if self.kind == "manual" and not (self.url or "").startswith(("https://", "http://")):
            raise ValueError(f"a 'manual' source needs the page 'url', got {self.url!r}")
        if self.is_auto:
            _check_relative_path(self.filename, "filename")
        for name in ("size", "approx_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name!r} must be a non-negative integer or null, got {value!r}")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"'sha256' must be 64 lowercase hex digits or null, got {self.sha256!r}")

    @property
    def is_auto(self) -> bool:
        """True when the file can be fetched without a person (``hf`` or ``url``)."""
        return self.kind in AUTO_SOURCE_KINDS

    @property
    def download_url(self) -> str:
        """The address to show a person: the HTTPS URL of the file, or of the page for ``manual``."""
        if self.kind == "hf":
            revision = self.revision or "main"
            return f"{HF_ENDPOINT}/{self.repo}/resolve/{revision}/{self.filename}"
        return self.url or ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the registry's own layout)."""
        data: dict[str, Any] = {"kind": self.kind}
        for name in ("repo", "filename", "revision", "url", "size", "approx_size", "sha256"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.note:
            data["note"] = self.note
        if self.optional:
            data["optional"] = True
        return data


@dataclass(frozen=True)
class ModelEntry:
    """A known model: facts the checkpoint can't tell (CLIP model, normalisation) and its files."""

    id: str
    display_name: str
    kind: str
    description: str
    files: tuple[str, ...] = field(metadata=_NON_EMPTY)
    sources: tuple[ModelSource, ...] = field(metadata=_NON_EMPTY)
    clip: Mapping[str, str] | None = None
    normalize: bool = True
    prefix_length: int | None = None
    decoding: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    requires: tuple[str, ...] = ()
    convert_from: tuple[str, ...] = field(default=(), metadata=_NON_EMPTY)

    def check(self) -> None:
        """Refuse values a registry file may not hold (``ValueError`` naming the field)."""
        if not _ID_RE.match(self.id) or self.id in RESERVED_IDS:
            raise ValueError(
                "'id' must be lowercase letters, digits, '.', '_' or '-' "
                f"(and not a reserved name: {', '.join(sorted(RESERVED_IDS))})"
            )
        if self.kind not in kinds.names():
            raise ValueError(f"unknown kind {self.kind!r} (known: {', '.join(kinds.names())})")
        kind = kinds.get(self.kind)
        if not self.display_name.strip():
            raise ValueError("'display_name' must be a non-empty string")
        if self.clip is not None and (
            set(self.clip) != {"arch", "pretrained"} or not all(self.clip.values())
        ):
            raise ValueError(f"'clip' must be {{'arch': ..., 'pretrained': ...}} or null, got {self.clip!r}")
        for name in kind.registry_needs:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.kind!r} model needs {name!r}")
        if self.prefix_length is not None and self.prefix_length <= 0:
            raise ValueError(f"'prefix_length' must be a positive integer or null, got {self.prefix_length}")
        for name in ("files", "convert_from"):
            names = getattr(self, name)
            for value in names:
                _check_relative_path(value, name)
            if len(set(names)) != len(names):
                raise ValueError(f"{name!r} lists a name twice: {list(names)}")
        if self.convert_from:
            _check_conversion(kind, self.files, self.convert_from)
        field_name = "convert_from" if self.convert_from else "files"
        for source in self.auto_sources:
            if source.filename not in self.download_files:
                listed = list(self.download_files)
                raise ValueError(f"source file {source.filename!r} is not listed in {field_name!r} {listed}")
        for name in self.download_files if not self.manual_sources else ():
            if not self.sources_for(name):
                raise ValueError(f"file {name!r} has no source (add an 'hf', 'url' or 'manual' source)")
        if self.convert_from and any(s.optional for s in self.auto_sources):
            raise ValueError("the inputs of a conversion can't be 'optional'")

    @property
    def converted(self) -> bool:
        """True when the downloaded files are converted into ``files`` (see ``convert_from``)."""
        return bool(self.convert_from)

    @property
    def download_files(self) -> tuple[str, ...]:
        """The files the sources provide: ``convert_from`` for converted entries, else ``files``."""
        return self.convert_from or self.files

    @property
    def required_downloads(self) -> tuple[str, ...]:
        """The downloaded files needed to install the model (optional ones left out)."""
        return tuple(f for f in self.download_files if not self.is_optional(f))

    @property
    def auto_sources(self) -> tuple[ModelSource, ...]:
        """Sources fetched without a person, in order of preference."""
        return tuple(s for s in self.sources if s.is_auto)

    @property
    def manual_sources(self) -> tuple[ModelSource, ...]:
        """Pages a person downloads from, then imports the file."""
        return tuple(s for s in self.sources if s.kind == "manual")

    @property
    def manual_only(self) -> bool:
        """True when nothing of this model can be downloaded automatically."""
        return not self.auto_sources

    @property
    def required_files(self) -> tuple[str, ...]:
        """The installed files that must exist for the model to count as present (optional ones left out)."""
        if self.converted:
            return self.files
        return tuple(f for f in self.files if not self.is_optional(f))

    def sources_for(self, filename: str) -> tuple[ModelSource, ...]:
        """The automatic sources that provide ``filename``, in order."""
        return tuple(s for s in self.auto_sources if s.filename == filename)

    def is_optional(self, filename: str) -> bool:
        """A file is optional when every automatic source of it says so."""
        sources = self.sources_for(filename)
        return bool(sources) and all(s.optional for s in sources)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the registry's own layout), e.g. for an API listing."""
        return {
            "id": self.id,
            "display_name": self.display_name,
            "kind": self.kind,
            "description": self.description,
            "clip": dict(self.clip) if self.clip is not None else None,
            "normalize": self.normalize,
            "prefix_length": self.prefix_length,
            "decoding": dict(self.decoding),
            "requires": list(self.requires),
            "files": list(self.files),
            **({"convert_from": list(self.convert_from)} if self.convert_from else {}),
            "sources": [s.to_dict() for s in self.sources],
        }


def _check_relative_path(value: Any, name: str) -> None:
    path = PurePosixPath(value or "")
    if not value or "\\" in value or path.is_absolute() or ".." in path.parts or value.startswith("."):
        raise ValueError(f"{name!r} must hold plain relative file names, got {value!r}")


def _check_conversion(kind: kinds.ModelKind, files: tuple[str, ...], names: tuple[str, ...]) -> None:
    """``convert_from`` only for kinds with a converter, which fixes ``files`` (and maybe the inputs)."""
    conversion = kind.convert
    if conversion is None:
        can = ", ".join(k.name for k in kinds.kinds() if k.convert is not None)
        raise ValueError(f"a {kind.name!r} model can't have 'convert_from' (only {can})")
    outputs, inputs = conversion.outputs, conversion.inputs
    if sorted(files) != sorted(outputs):
        raise ValueError(f"a converted {kind.name!r} model installs {list(outputs)}: 'files' must be that")
    if inputs is None and len(names) != 1:
        raise ValueError(f"a {kind.name!r} conversion reads one file, 'convert_from' names {list(names)}")
    if inputs is not None and sorted(names) != sorted(inputs):
        raise ValueError(f"a {kind.name!r} conversion reads {list(inputs)}, not {list(names)}")
    if set(names) & set(files):
        raise ValueError(f"{sorted(set(names) & set(files))} can't be both converted and installed")


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _value(tp: Any, value: Any, where: str, name: str) -> Any:
    """``value`` (parsed JSON) as field type ``tp``: lists become tuples, objects read-only mappings,
    nested records are parsed; ``ConfigError`` naming the field otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _value(next(a for a in args if a is not type(None)), value, where, name)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name!r} must be a list, got {value!r}")
        return tuple(_value(args[0], v, f"{where}, {name} #{i}", name) for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: {name!r} must be an object, got {value!r}")
        if args[1] is str and not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: {name!r} must map names to strings, got {value!r}")
        return MappingProxyType(dict(value))
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, where)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {name!r} must be {_TYPE_NAMES[tp]}, got {value!r}")
    return value


def _parse(cls: type[_T], raw: Any, where: str) -> _T:
    """Dataclass ``cls`` from a JSON object, the way ``icg.config.from_dict`` builds settings, with every
    field checked against its type: unknown and missing fields are refused, a list given for a
    ``_NON_EMPTY`` field must not be empty, then the record's ``check()`` checks the values. Each error is one
    line naming ``where`` and the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    required = {n for n, f in fields.items() if f.default is f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if value == [] and fields[name].metadata.get("non_empty"):
            raise ConfigError(f"{where}: {name!r} must be a non-empty list")
        if value is None and name not in required and type(None) not in typing.get_args(hints[name]):
            continue  # null for a field with a default means the default
        values[name] = _value(hints[name], value, where, name)
    record = cls(**values)
    try:
        record.check()
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return record


def _parse_entry(raw: Any, index: int, origin: str) -> ModelEntry:
    model_id = raw.get("id") if isinstance(raw, Mapping) else None
    where = f"{origin}: entry {model_id!r}" if isinstance(model_id, str) else f"{origin}: entry #{index}"
    entry = _parse(ModelEntry, raw, where)
    decoding = MappingProxyType({**kinds.get(entry.kind).decoding, **entry.decoding})
    return dataclasses.replace(entry, decoding=decoding)  # the kind's defaults under the entry's own


def parse_registry(data: Any, origin: str = "model registry") -> dict[str, ModelEntry]:
    """Validate registry data (the parsed JSON) and return ``{id: ModelEntry}`` in file order."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: the top level must be an object with 'schema' and 'models'")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise ConfigError(
            f"{origin}: unsupported schema {schema!r} (this version of icg reads {SCHEMA_VERSION})"
        )
    unknown = sorted(set(data) - {"schema", "models"})
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level field(s) {unknown}")
    models = data.get("models")
    if not isinstance(models, list):
        raise ConfigError(f"{origin}: 'models' must be a list")
    entries: dict[str, ModelEntry] = {}
    for index, raw in enumerate(models):
        entry = _parse_entry(raw, index, origin)
        if entry.id in entries:
            raise ConfigError(f"{origin}: entry {entry.id!r} appears twice (duplicate id)")
        entries[entry.id] = entry
    for entry in entries.values():
        for dep in entry.requires:
            if dep not in entries:
                raise ConfigError(f"{origin}: entry {entry.id!r} requires unknown model {dep!r}")
            if dep == entry.id:
                raise ConfigError(f"{origin}: entry {entry.id!r} requires itself")
    return entries


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> tuple[ModelEntry, ...]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as err:
        raise ConfigError(f"model registry {path}: can't be read ({err})") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"model registry {path}: invalid JSON ({err})") from err
    return tuple(parse_registry(data, origin=f"model registry {path}").values())


def load_registry(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """Load and validate a registry file (default: the packaged ``registry.json``).

    Returns a fresh ``{id: ModelEntry}`` dict in file order; the parsed file is cached per path and mtime.
    """
    file = Path(path) if path is not None else REGISTRY_PATH
    try:
        mtime_ns = file.stat().st_mtime_ns
    except OSError as err:
        raise ConfigError(f"model registry {file}: can't be read ({err})") from err
    return {entry.id: entry for entry in _load_cached(str(file), mtime_ns)}


def get_entry(model_id: str, registry: Mapping[str, ModelEntry] | None = None) -> ModelEntry:
    """The entry for ``model_id``; ``ModelNotFound`` listing the known ids otherwise."""
    entries = registry if registry is not None else load_registry()
    try:
        return entries[model_id]
    except KeyError:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelNotFound(f"unknown model {model_id!r} (known models: {known})") from None


def resolve_entries(
    models: Iterable[str | ModelEntry], registry: Mapping[str, ModelEntry] | None = None
) -> list[ModelEntry]:
    """Turn ids or entries into entries (ids looked up in ``registry`` or the packaged one)."""
    out: list[ModelEntry] = []
    entries = registry
    for model in models:
        if isinstance(model, ModelEntry):
            out.append(model)
            continue
        if entries is None:
            entries = load_registry()
        out.append(get_entry(model, entries))
    return out


def with_requirements(
    models: Iterable[str | ModelEntry], registry: Mapping[str, ModelEntry] | None = None
) -> list[ModelEntry]:
    """The given models plus everything they ``require`` (transitively), requirements first, no repeats."""
    entries = dict(registry) if registry is not None else load_registry()
    ordered: dict[str, ModelEntry] = {}

    def visit(entry: ModelEntry, stack: tuple[str, ...]) -> None:
        if entry.id in ordered:
            return
        if entry.id in stack:
            raise ConfigError(
                f"model registry: circular 'requires' through {' -> '.join(stack + (entry.id,))}"
            )
        for dep in entry.requires:
            visit(get_entry(dep, entries), stack + (entry.id,))
        ordered[entry.id] = entry

    for entry in resolve_entries(models, entries):
        entries.setdefault(entry.id, entry)
        visit(entry, ())
    return list(ordered.values())
