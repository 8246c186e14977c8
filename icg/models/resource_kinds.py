"""The ``tokenizer`` and ``clip`` kinds: what captioners need, installed under their registry ids only
(no detection, no loading of their own: ``icg.models.loading`` loads them for the captioners).

A CLIP is imported from an open_clip state dict or OpenAI's TorchScript archive, and installed from a
copy another tool keeps on this machine before any download (``icg.models.clip_sources``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from icg.captioners.kinds import ImportJob, ModelKind
from icg.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from icg.models.registry import ModelEntry

def _candidates(paths: Sequence[Path]) -> dict[str, Path]:
    """The files among ``paths`` (files, or the files in folders) by name."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            found.update({p.name: p for p in path.iterdir() if p.is_file()})
        else:
            found[path.name] = path
    return found


def _copy_registry_files(
    candidates: dict[str, Path], paths: Sequence[Path], out: Path, job: ImportJob
) -> None:
    """Copy the entry's files found among ``candidates`` into ``out``; its required ones must be there."""
    from icg.models.importer import copy_file

    entry = job.entry
    if entry is None:
        raise ConfigError(
            "a tokenizer or CLIP is imported under its registry id (see `python -m icg models`)"
        )
    missing = [f for f in entry.required_files if f not in candidates]
    if missing:
        raise ConfigError(f"{entry.id} needs {', '.join(missing)}; not found in {', '.join(map(str, paths))}")
    for name in entry.files:
        if name in candidates:
            copy_file(candidates[name], out / name)
    job.originals = []  # the installed files are the originals


def _import_tokenizer(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    _copy_registry_files(_candidates(paths), paths, out, job)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "tokenizer files copied (not checked: transformers is not installed)"
    from icg.models.loading import open_tokenizer

    try:
        tokenizer = open_tokenizer(out)
    except CheckpointError as err:
        raise CheckpointError(f"{', '.join(map(str, paths))}: not a loadable tokenizer ({err})") from err
    return f"tokenizer: {len(tokenizer)} tokens"


def _import_clip(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    """A CLIP's weights: one file (an open_clip state dict, ``.bin``/``.pt`` or ``.safetensors``, or
    OpenAI's TorchScript archive such as ``ViT-L-14.pt``), checked by its tensor shapes against the entry's
    CLIP (and an archive by its published sha256), or a folder holding the entry's files."""
    entry = job.entry
    wanted = entry.required_files if entry is not None else ()
    if len(wanted) == 1 and len(paths) == 1 and paths[0].is_file():
        return _import_clip_file(paths[0], out, job)
    candidates = _candidates(paths)
    _copy_registry_files(candidates, paths, out, job)
    return _check_clip_file(candidates[wanted[0]], job)[1]


def _check_clip_file(src: Path, job: ImportJob):
    """Check ``src`` against the entry's CLIP: its feature width first (the clearest message), then
    every tensor's shape; returns ``(identified file, one line on it)``."""
    from icg.models import clip_sources
    from icg.models.importer import clip_feature_dim
    from icg.models.loading import clip_label

    entry = job.entry
    layout, shapes = clip_sources.file_shapes(src)
    if not any(k.startswith("visual.") for k in shapes):
        raise CheckpointError(f"{src}: not open_clip CLIP weights (no visual.* tensors)")
    proj = shapes.get("text_projection")
    dim = int(proj[-1]) if proj else None
    expected = clip_feature_dim(dict(entry.clip or {}))
    if dim is not None and expected is not None and dim != expected:
        raise CheckpointError(f"{src}: {dim}-dim CLIP features, but {clip_label(entry.clip)} has {expected}")
    found = clip_sources.identify(src, dict(entry.clip or {}))
    return found, f"CLIP {clip_label(entry.clip)}: {dim or '?'}-dim features, {layout}"


def _import_clip_file(src: Path, out: Path, job: ImportJob) -> str:
    from icg.models import clip_sources
    from icg.models.importer import copy_file
    from icg.models.pointers import write_pointer

    if job.entry is None:
        _copy_registry_files({}, [src], out, job)  # raises: a CLIP is imported under its registry id
    name = job.entry.required_files[0]
    found, details = _check_clip_file(src, job)
    job.originals = []  # the installed files are the originals (or their conversion)
    if found.layout == clip_sources.ARCHIVE:
        clip = dict(job.entry.clip or {})
        reader = clip_sources.convert_archive(src, clip, out / clip_sources.CONVERTED_NAME)
        source = f"imported from {src} (converted; read by {reader})"
    elif src.suffix == ".safetensors":
        copy_file(src, out / clip_sources.CONVERTED_NAME)
        source = f"imported from {src}"
    else:
        copy_file(src, out / name)
        return details
    write_pointer(out, name, out / clip_sources.CONVERTED_NAME, source=source, fmt=clip_sources.STATE_DICT)
    return f"{details} ({source})"


def _local_copy(entry: ModelEntry, folder: Path, dirs: Sequence[str]) -> str | None:
    from icg.models.clip_sources import use_local_copy

    return use_local_copy(entry, folder, dirs)


TOKENIZER = ModelKind(
    name="tokenizer", title="tokenizer", formats="a tokenizer folder", import_files=_import_tokenizer
)
CLIP = ModelKind(
    name="clip",
    title="CLIP",
    formats="open_clip CLIP weights or an OpenAI CLIP archive",
    import_files=_import_clip,
    local_copy=_local_copy,
    registry_needs=("clip",),
)
#: Registered by icg.captioners.kinds (BUILTIN_MODULES) on first use.
KINDS = (TOKENIZER, CLIP)
