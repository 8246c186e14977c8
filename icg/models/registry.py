"""The catalogue of known models: what each one is, which files it consists of once installed, and where
those files come from.

The catalogue is ``registry.json`` beside this module (package data). Every entry is validated when it is
loaded; a malformed entry raises ``ConfigError`` naming the entry and the field. Nothing here touches the
network or the disk beyond reading the JSON file.

Files: ``files`` lists what the model folder holds once the model is installed (what ``present`` checks
and what the loaders read). Most entries download exactly those files. An entry with ``convert_from``
instead downloads the files named there (a torch ``.pt`` state_dict, the SBG vocabulary pickles) and
converts them once into ``files`` (safetensors + JSON); which converter runs follows from the entry's
kind (``CONVERTERS``), and the downloaded originals are deleted afterwards unless asked to keep them.

Source semantics: every ``hf`` or ``url`` source provides one downloaded file of the entry (``filename``
is its local name inside the model folder; for ``hf`` it is also the path inside the repository): a
name of ``convert_from`` when the entry has one, else a name of ``files``. Several automatic sources may
provide the same file: they are tried in order. ``manual`` sources are pages a person opens in a
browser; they are never fetched, only shown with the import command.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from icg.errors import ConfigError, ModelNotFound

logger = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).with_name("registry.json")
SCHEMA_VERSION = 1

MODEL_KINDS = ("clip-prefix", "sbg", "sbg-vocabulary", "tokenizer", "clip")
SOURCE_KINDS = ("hf", "url", "manual")
AUTO_SOURCE_KINDS = ("hf", "url")

# Folder names inside the models folder that a model id may not take.
RESERVED_IDS = frozenset({"cache", "tmp"})

# Kinds whose downloads may be converted: kind -> (the installed files the converter writes, the names
# its inputs must have; None when any single file name will do).
CONVERTERS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = MappingProxyType(
    {
        "clip-prefix": (("config.json", "model.safetensors"), None),
        "sbg-vocabulary": (("vocabulary.json",), ("all_labels.pkl", "encyclopedia.pkl")),
    }
)

DEFAULT_DECODING: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "clip-prefix": MappingProxyType({"strategy": "greedy", "max_new_tokens": 67, "stop": "."}),
        "sbg": MappingProxyType({"num_candidates": 5, "top_k": 50, "temperature": 1.0}),
    }
)

HF_ENDPOINT = "https://huggingface.co"

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SOURCE_KEYS = frozenset(
    {"kind", "repo", "filename", "revision", "url", "size", "sha256", "note", "optional"}
)
_ENTRY_KEYS = frozenset(
    {
        "id",
        "display_name",
        "kind",
        "description",
        "clip",
        "normalize",
        "prefix_length",
        "decoding",
        "requires",
        "files",
        "convert_from",
        "sources",
    }
)
_ENTRY_REQUIRED = ("id", "display_name", "kind", "description", "files", "sources")


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
    sha256: str | None = None
    note: str = ""
    optional: bool = False

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
        for name in ("repo", "filename", "revision", "url", "size", "sha256"):
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
    files: tuple[str, ...]
    sources: tuple[ModelSource, ...]
    clip: Mapping[str, str] | None = None
    normalize: bool = True
    prefix_length: int | None = None
    decoding: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    requires: tuple[str, ...] = ()
    convert_from: tuple[str, ...] = ()

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


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _optional_str(value: Any, where: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{name}' must be a non-empty string or null, got {value!r}")
    return value


def _check_relative_path(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"'{name}' must be a non-empty string, got {value!r}")
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or ".." in path.parts or value.startswith("."):
        raise _fail(where, f"'{name}' must be a plain relative file name, got {value!r}")
    return value


def _parse_source(raw: Any, where: str) -> ModelSource:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"a source must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SOURCE_KEYS)
    if unknown:
        raise _fail(where, f"unknown source field(s) {unknown}")
    kind = raw.get("kind")
    if kind not in SOURCE_KINDS:
        raise _fail(where, f"source kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
    repo = _optional_str(raw.get("repo"), where, "repo")
    url = _optional_str(raw.get("url"), where, "url")
    revision = _optional_str(raw.get("revision"), where, "revision")
    filename = raw.get("filename")
    if kind == "hf":
        if repo is None:
            raise _fail(where, "an 'hf' source needs 'repo'")
        filename = _check_relative_path(filename, where, "filename")
    elif kind == "url":
        if url is None or not url.startswith("https://"):
            raise _fail(where, f"a 'url' source needs an https:// 'url', got {url!r}")
        filename = _check_relative_path(filename, where, "filename")
    else:
        if url is None or not url.startswith(("https://", "http://")):
            raise _fail(where, f"a 'manual' source needs the page 'url', got {url!r}")
        filename = _optional_str(filename, where, "filename")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise _fail(where, f"'size' must be a non-negative integer or null, got {size!r}")
    sha256 = raw.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.match(sha256)):
        raise _fail(where, f"'sha256' must be 64 lowercase hex digits or null, got {sha256!r}")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise _fail(where, f"'note' must be a string, got {note!r}")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise _fail(where, f"'optional' must be true or false, got {optional!r}")
    return ModelSource(
        kind=kind,
        filename=filename,
        repo=repo,
        revision=revision,
        url=url,
        size=size,
        sha256=sha256,
        note=note,
        optional=optional,
    )


def _parse_entry(raw: Any, index: int) -> ModelEntry:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"model registry entry #{index}: must be an object, got {type(raw).__name__}")
    model_id = raw.get("id")
    where = (
        f"model registry entry {model_id!r}"
        if isinstance(model_id, str)
        else f"model registry entry #{index}"
    )
    missing = [k for k in _ENTRY_REQUIRED if k not in raw]
    if missing:
        raise _fail(where, f"missing field(s) {missing}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}")
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or model_id in RESERVED_IDS:
        raise _fail(
            where, "'id' must be lowercase letters, digits, '.', '_' or '-' (and not a reserved name)"
        )
    kind = raw["kind"]
    if kind not in MODEL_KINDS:
        raise _fail(where, f"unknown kind {kind!r} (known: {', '.join(MODEL_KINDS)})")
    display_name, description = raw["display_name"], raw["description"]
    if not isinstance(display_name, str) or not display_name.strip():
        raise _fail(where, "'display_name' must be a non-empty string")
    if not isinstance(description, str):
        raise _fail(where, "'description' must be a string")

    clip = raw.get("clip")
    if clip is not None:
        if (
            not isinstance(clip, Mapping)
            or set(clip) != {"arch", "pretrained"}
            or not all(isinstance(v, str) and v for v in clip.values())
        ):
            raise _fail(where, f"'clip' must be {{'arch': str, 'pretrained': str}} or null, got {clip!r}")
        clip = MappingProxyType(dict(clip))
    elif kind in ("clip-prefix", "sbg", "clip"):
        raise _fail(where, f"a {kind!r} model needs 'clip'")

    normalize = raw.get("normalize", True)
    if not isinstance(normalize, bool):
        raise _fail(where, f"'normalize' must be true or false, got {normalize!r}")
    prefix_length = raw.get("prefix_length")
    if prefix_length is not None and (
        isinstance(prefix_length, bool) or not isinstance(prefix_length, int) or prefix_length <= 0
    ):
        raise _fail(where, f"'prefix_length' must be a positive integer or null, got {prefix_length!r}")
    if kind == "clip-prefix" and prefix_length is None:
        raise _fail(where, "a 'clip-prefix' model needs 'prefix_length'")

    decoding = raw.get("decoding") or {}
    if not isinstance(decoding, Mapping) or not all(isinstance(k, str) for k in decoding):
        raise _fail(where, f"'decoding' must be an object, got {decoding!r}")
    decoding = MappingProxyType({**DEFAULT_DECODING.get(kind, {}), **decoding})

    requires = raw.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise _fail(where, f"'requires' must be a list of model ids, got {requires!r}")

    files = raw["files"]
    if not isinstance(files, list) or not files:
        raise _fail(where, "'files' must be a non-empty list of file names")
    files = [_check_relative_path(f, where, "files") for f in files]
    if len(set(files)) != len(files):
        raise _fail(where, f"'files' lists a name twice: {files}")

    convert_from = _parse_convert_from(raw.get("convert_from"), kind, files, where)
    downloads = convert_from or files
    field_name = "convert_from" if convert_from else "files"

    raw_sources = raw["sources"]
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail(where, "'sources' must be a non-empty list")
    sources = tuple(_parse_source(s, f"{where}, source #{i}") for i, s in enumerate(raw_sources))
    for source in sources:
        if source.is_auto and source.filename not in downloads:
            raise _fail(where, f"source file {source.filename!r} is not listed in {field_name!r} {downloads}")
    has_manual = any(s.kind == "manual" for s in sources)
    for name in downloads:
        if not has_manual and not any(s.is_auto and s.filename == name for s in sources):
            raise _fail(where, f"file {name!r} has no source (add an 'hf', 'url' or 'manual' source)")
    if convert_from and any(s.optional for s in sources if s.is_auto):
        raise _fail(where, "the inputs of a conversion can't be 'optional'")

    return ModelEntry(
        id=model_id,
        display_name=display_name,
        kind=kind,
        description=description,
        files=tuple(files),
        sources=sources,
        clip=clip,
        normalize=normalize,
        prefix_length=prefix_length,
        decoding=decoding,
        requires=tuple(requires),
        convert_from=tuple(convert_from),
    )


def _parse_convert_from(value: Any, kind: str, files: list[str], where: str) -> list[str]:
    """Validate ``convert_from``: only for kinds with a converter, which fixes ``files`` (and maybe the
    input names)."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise _fail(where, "'convert_from' must be a non-empty list of file names")
    names = [_check_relative_path(v, where, "convert_from") for v in value]
    if len(set(names)) != len(names):
        raise _fail(where, f"'convert_from' lists a name twice: {names}")
    if kind not in CONVERTERS:
        raise _fail(where, f"a {kind!r} model can't have 'convert_from' (only {', '.join(CONVERTERS)})")
    outputs, inputs = CONVERTERS[kind]
    if sorted(files) != sorted(outputs):
        raise _fail(where, f"a converted {kind!r} model installs {list(outputs)}, so 'files' must be that")
    if inputs is None and len(names) != 1:
        raise _fail(where, f"a {kind!r} conversion reads one file, 'convert_from' names {names}")
    if inputs is not None and sorted(names) != sorted(inputs):
        raise _fail(where, f"a {kind!r} conversion reads {list(inputs)}, 'convert_from' names {names}")
    overlap = sorted(set(names) & set(files))
    if overlap:
        raise _fail(where, f"{overlap} can't be both converted and installed")
    return names


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
        entry = _parse_entry(raw, index)
        if entry.id in entries:
            raise ConfigError(f"{origin}: model registry entry {entry.id!r} appears twice (duplicate id)")
        entries[entry.id] = entry
    for entry in entries.values():
        for dep in entry.requires:
            if dep not in entries:
                raise ConfigError(
                    f"{origin}: model registry entry {entry.id!r} requires unknown model {dep!r}"
                )
            if dep == entry.id:
                raise ConfigError(f"{origin}: model registry entry {entry.id!r} requires itself")
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
