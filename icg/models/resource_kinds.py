"""The ``tokenizer`` and ``clip`` kinds: what captioners need, installed under their registry ids only
(no detection, no loading of their own: ``icg.models.loading`` loads them for the captioners)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from icg.captioners.kinds import ImportJob, ModelKind, read_state
from icg.errors import CheckpointError, ConfigError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


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
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(out))
    except ImportError:
        return "tokenizer files copied (not checked: transformers is not installed)"
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{', '.join(map(str, paths))}: not a loadable tokenizer ({err})") from err
    return f"tokenizer: {len(tokenizer)} tokens"


def _import_clip(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    """The CLIP's one weights file; a lone torch file of another name is installed under the entry's."""
    from icg.models.importer import clip_feature_dim
    from icg.models.loading import clip_label

    candidates = _candidates(paths)
    wanted = job.entry.required_files if job.entry is not None else ()
    if len(wanted) == 1 and wanted[0] not in candidates and len(paths) == 1 and paths[0].is_file():
        src = paths[0]
        if src.suffix not in TORCH_SUFFIXES:
            raise ConfigError(
                f"{src}: {job.entry.id} is installed as {wanted[0]} (a tensors-only torch state_dict); "
                f"give that file (a {src.suffix} can be used directly with --clip FOLDER instead)"
            )
        candidates[wanted[0]] = src
    _copy_registry_files(candidates, paths, out, job)
    entry = job.entry
    state = read_state(out / wanted[0])
    if not any(k.startswith("visual.") for k in state):
        raise CheckpointError(f"{candidates[wanted[0]]}: not open_clip CLIP weights (no visual.* tensors)")
    proj = state.get("text_projection")
    dim = int(proj.shape[-1]) if proj is not None else None
    expected = clip_feature_dim(dict(entry.clip or {}))
    if dim is not None and expected is not None and dim != expected:
        raise CheckpointError(
            f"{candidates[wanted[0]]}: {dim}-dim CLIP features, but {clip_label(entry.clip)} has {expected}"
        )
    return f"CLIP {clip_label(entry.clip)}: {dim or '?'}-dim features"


TOKENIZER = ModelKind(
    name="tokenizer", title="tokenizer", formats="a tokenizer folder", import_files=_import_tokenizer
)
CLIP = ModelKind(
    name="clip",
    title="CLIP",
    formats="open_clip CLIP weights",
    import_files=_import_clip,
    registry_needs=("clip",),
)
#: Registered by icg.captioners.kinds (BUILTIN_MODULES) on first use.
KINDS = (TOKENIZER, CLIP)
