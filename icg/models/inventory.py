"""One status record per model: what ``icg models``, ``icg doctor``, ``GET /icg/v1/models`` (and with it
the WebUI's Models panel) and the model dropdowns all show. Nothing else decides what is installed.

The models are the registry's (installed or not), then the local models: every folder in the models
folder whose name is no registry id and that holds a complete model (``loading.describe_folder``: what
``icg import`` writes or training saves), then any extra names a front end offers (paths given on the
command line).

The rule for **installed**: a model is installed when it can be loaded without any network.

* A registry model: each of its required files is in ``<models dir>/<id>``, or, for a model converted
  once after the download (a ``.pt`` checkpoint, the vocabulary pickles), its downloaded originals are
  there; they are converted locally on first use, so they count as installed.
* A local model or a path: it exists (a complete folder, or a file).
* And in both cases every registry model it requires (CLIP, tokenizer, vocabulary: the registry's
  ``requires``, or what a local model's settings name) is installed by the same rule. A requirement the
  runtime supplies itself (``RuntimeConfig.clip`` / ``.tokenizer``) is not required.

``missing`` names every file still to fetch, as ``<id>/<file>``, for the model and its requirements.
Sizes are the model's own: ``size_bytes`` on disk now, ``expected_bytes`` its download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icg.errors import IcgError
from icg.models.download import (
    IMPORT_COMMAND,
    expected_size,
    local_size,
    missing_downloads,
    pointer_problems,
    present,
    ready_to_convert,
)
from icg.models.paths import model_dir
from icg.models.pointers import source_of
from icg.models.registry import RESERVED_IDS, ModelEntry, load_registry, with_requirements

logger = logging.getLogger(__name__)

LOCAL_SOURCE = "local"


@dataclass(frozen=True)
class ModelStatus:
    """What one model is and whether it can be used now (see the module docstring for the rule)."""

    id: str
    display_name: str
    kind: str
    description: str
    installed: bool
    missing: tuple[str, ...]  # "<id>/<file>" still to fetch, for the model and its requirements
    requires: tuple[str, ...]  # registry models it needs (transitively), requirements first
    size_bytes: int  # its own files on disk now
    expected_bytes: int | None  # its own download; None when a size is unknown
    manual_only: bool  # something missing can only be installed by hand
    loaded: bool  # in the model manager's memory now
    default: bool  # the front end's preselected model
    path: Path  # where it lives
    source: str  # where its weights are from: another tool's file it points to (icg.models.pointers),
    # else its first download address; "local" for a user's own model
    registered: bool  # in the registry (False: a folder the user imported or trained, or a path)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``icg models --json`` prints and ``GET /icg/v1/models`` returns per model."""
        data = asdict(self)
        data["missing"] = list(self.missing)
        data["requires"] = list(self.requires)
        data["path"] = str(self.path)
        return data


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file, or of every file under a folder (0 when it does not exist)."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_file():
            return path.stat().st_size
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def supplied_kinds(runtime: Any) -> frozenset[str]:
    """The requirement kinds a ``RuntimeConfig`` supplies itself (``clip`` / ``tokenizer`` overrides)."""
    kinds = set()
    if getattr(runtime, "clip", None):
        kinds.add("clip")
    if getattr(runtime, "tokenizer", None):
        kinds.add("tokenizer")
    return frozenset(kinds)


# ------------------------------------------------------------------------------------------ the rule
def own_missing(entry: ModelEntry, root: Path) -> list[str]:
    """The files ``entry`` itself still needs fetched ([] when present or its originals await conversion)."""
    if present(entry, root) or ready_to_convert(entry, root):
        return []
    return missing_downloads(entry, root)


def requirements(
    entries: Iterable[ModelEntry], registry: Mapping[str, ModelEntry], supplied: Iterable[str] = ()
) -> list[ModelEntry]:
    """``entries`` and what they require, transitively, requirements first, without the kinds the runtime
    supplies (a model of a supplied kind given in ``entries`` itself is kept)."""
    given = {e.id for e in entries}
    skip = frozenset(supplied)
    return [e for e in with_requirements(list(entries), registry) if e.id in given or e.kind not in skip]


def _registry_status(
    entry: ModelEntry, root: Path, registry: Mapping[str, ModelEntry], supplied: frozenset[str]
) -> ModelStatus:
    needed = requirements([entry], registry, supplied)
    waiting = {e.id: own_missing(e, root) for e in needed}
    missing = tuple(f"{e_id}/{name}" for e_id, files in waiting.items() for name in files)
    lacking = [e for e in needed if waiting[e.id]]
    unmet = [e.id for e in lacking if e.id != entry.id]
    on_disk = local_size(entry, root)
    note = ""
    if ready_to_convert(entry, root):
        note = "downloaded, converted on first use"
    elif waiting[entry.id] and entry.manual_only:
        note = f"manual download, then: {IMPORT_COMMAND.format(id=entry.id)}"
    elif waiting[entry.id] and on_disk:
        note = "partly downloaded"
    if unmet:
        note = "; ".join(filter(None, [note, f"needs {', '.join(unmet)} (not installed)"]))
    note = "; ".join(filter(None, [note, *pointer_problems(entry, root)]))
    folder = model_dir(entry, root)
    linked = next(filter(None, (source_of(folder, f) for f in entry.required_files)), None)
    return ModelStatus(
        id=entry.id,
        display_name=entry.display_name,
        kind=entry.kind,
        description=entry.description,
        installed=not missing,
        missing=missing,
        requires=tuple(e.id for e in needed if e.id != entry.id),
        size_bytes=on_disk,
        expected_bytes=expected_size(entry),
        manual_only=any(e.manual_only for e in lacking),
        loaded=False,
        default=False,
        path=model_dir(entry, root),
        source=linked or entry.sources[0].download_url,
        registered=True,
        note=note,
    )


# ------------------------------------------------------------------------------------------ local models
def _clip_requirement(clip: Mapping[str, Any] | None, registry: Mapping[str, ModelEntry]) -> str | None:
    from icg.models.loading import DEFAULT_CLIP

    clip = clip or DEFAULT_CLIP
    if clip.get("weights_path"):
        return None
    for entry in registry.values():
        own = entry.clip or {}
        if entry.kind == "clip" and (own.get("arch"), own.get("pretrained")) == (
            clip.get("arch"),
            clip.get("pretrained"),
        ):
            return entry.id
    return None


def _named_requirements(path: Path, kind: str, registry: Mapping[str, ModelEntry]) -> list[str]:
    """The registry ids a local model's settings name (its CLIP, tokenizer, vocabulary)."""
    from icg.models.loading import DEFAULT_TOKENIZER
    from icg.sbg.kind import sbg_meta

    if kind == "clip-prefix":
        config: dict[str, Any] = {}
        if path.is_dir():
            with contextlib.suppress(OSError, ValueError):
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        tokenizer = config.get("tokenizer") or DEFAULT_TOKENIZER
        names = [_clip_requirement(config.get("clip"), registry), tokenizer]
    elif kind == "sbg":
        meta = sbg_meta(path, None)
        names = [_clip_requirement(meta["clip"], registry), meta["tokenizer"], meta["vocabulary"]]
    else:
        names = []
    return [n for n in names if isinstance(n, str) and n in registry]


def _local_status(
    name: str,
    path: Path,
    kind: str,
    display: str,
    registry: Mapping[str, ModelEntry],
    supplied: frozenset[str],
    root: Path,
) -> ModelStatus:
    named = [registry[n] for n in _named_requirements(path, kind, registry)]
    needed = [e for e in requirements(named, registry) if e.kind not in supplied]
    missing = tuple(f"{e.id}/{f}" for e in needed for f in own_missing(e, root))
    unmet = [e.id for e in needed if own_missing(e, root)]
    return ModelStatus(
        id=name,
        display_name=display,
        kind=kind,
        description=f"{display}, local model at {path}",
        installed=not missing,
        missing=missing,
        requires=tuple(e.id for e in needed),
        size_bytes=tree_size(path),
        expected_bytes=0,
        manual_only=any(e.manual_only for e in needed if own_missing(e, root)),
        loaded=False,
        default=False,
        path=path,
        source=LOCAL_SOURCE,
        registered=False,
        note=f"needs {', '.join(unmet)} (not installed)" if unmet else "",
    )


def _describe(path: Path) -> tuple[str, str] | None:
    """``(kind, description)`` of a complete model file or folder, None when it is not one."""
    from icg.models.loading import describe_folder, detect_kind

    try:
        if path.is_file():
            return detect_kind(path), f"model file {path.name}"
        return describe_folder(path)
    except (IcgError, OSError) as err:
        logger.debug("not a model: %s (%s)", path, err)
        return None


def _local_folders(root: Path, registry: Mapping[str, ModelEntry]) -> list[tuple[str, Path, str, str]]:
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        name = folder.name
        if not folder.is_dir() or name.startswith(".") or name in RESERVED_IDS or name in registry:
            continue
        described = _describe(folder)
        if described is not None:
            found.append((name, folder, *described))
    return found


def _path_status(
    name: str, root: Path, registry: Mapping[str, ModelEntry], supplied: frozenset[str]
) -> ModelStatus:
    path = Path(name).expanduser()
    if not path.exists() and not name.startswith(".") and (root / name).is_dir():
        path = root / name  # a folder in the models folder (loading.resolve_model looks there too)
    described = _describe(path) if path.exists() else None
    if described is not None:
        return _local_status(name, path, *described, registry, supplied, root)
    return ModelStatus(
        id=name,
        display_name=path.name or name,
        kind="unknown",
        description=f"not a model: {path}",
        installed=False,
        missing=(str(path),),
        requires=(),
        size_bytes=tree_size(path),
        expected_bytes=None,
        manual_only=True,
        loaded=False,
        default=False,
        path=path,
        source=LOCAL_SOURCE,
        registered=False,
        note="not found" if not path.exists() else "not a complete model",
    )


# ------------------------------------------------------------------------------------------ the inventory
def inventory(
    root: str | os.PathLike[str],
    *,
    registry: Mapping[str, ModelEntry] | None = None,
    supplied: Iterable[str] = (),
    loaded: Iterable[str] = (),
    default: str | None = None,
    extra: Iterable[str] = (),
) -> list[ModelStatus]:
    """Every registry model, then every local model in ``root``, then each of ``extra`` (names or paths
    a front end offers) not listed yet. ``supplied``: requirement kinds the runtime provides
    (``supplied_kinds``); ``loaded``: the names in memory; ``default``: the preselected model."""
    entries = registry if registry is not None else load_registry()
    root_path = Path(root)
    kinds = frozenset(supplied)
    rows = [_registry_status(e, root_path, entries, kinds) for e in entries.values()]
    rows += [
        _local_status(name, path, kind, display, entries, kinds, root_path)
        for name, path, kind, display in _local_folders(root_path, entries)
    ]
    listed = {row.id for row in rows}
    for name in dict.fromkeys(extra):
        if name and name not in listed:
            rows.append(_path_status(name, root_path, entries, kinds))
            listed.add(name)
    in_memory = set(loaded)
    return [dataclasses.replace(row, loaded=row.id in in_memory, default=row.id == default) for row in rows]


def model_status(
    name: str,
    root: str | os.PathLike[str],
    *,
    registry: Mapping[str, ModelEntry] | None = None,
    supplied: Iterable[str] = (),
) -> ModelStatus:
    """The record of one model by name: a registry id, a model folder in ``root``, or a path."""
    entries = registry if registry is not None else load_registry()
    kinds = frozenset(supplied)
    if name in entries:
        return _registry_status(entries[name], Path(root), entries, kinds)
    return _path_status(name, Path(root), entries, kinds)


def manager_inventory(
    manager: Any, *, extra: Iterable[str] = (), default: str | None = None
) -> list[ModelStatus]:
    """``inventory`` of a ``ModelManager``'s models folder, with its runtime overrides and loaded models."""
    return inventory(
        manager.models_dir,
        supplied=supplied_kinds(manager.runtime),
        loaded=manager.loaded().get("captioners", []),
        default=default,
        extra=extra,
    )


def captioner_ids(rows: Iterable[ModelStatus]) -> list[str]:
    """The ids of the rows a user can caption with (registry captioners, installed or not, and local ones)."""
    from icg.captioners import kinds

    return [row.id for row in rows if row.kind in kinds.names(captioners_only=True)]
