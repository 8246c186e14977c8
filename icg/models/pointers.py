"""Pointer files: an installed model file that lives elsewhere, referenced instead of copied.

A model folder may hold ``<file>.pointer.json`` instead of ``<file>`` (the CLIP weights another tool
already keeps, e.g. in the Hugging Face cache, or ICG's own converted copy beside it)::

    {"icg_pointer": 1,
     "target": "/home/me/.cache/huggingface/hub/models--.../open_clip_model.safetensors",
     "size": 1710540580, "mtime_ns": 1700000000000000000, "sha256": "…" or null,
     "format": "open_clip state dict",
     "source": "the Hugging Face cache (timm/vit_large_patch14_clip_224.openai): /home/me/..."}

``target`` is absolute, or a file name inside the same folder. A pointer is checked on every use: the
target must exist with the recorded size, and when its modification time changed its sha256 must still
match (no sha256 recorded: it no longer counts). A pointer that fails says so (``problem``) and the
model counts as not installed, so the normal resolution (other local copies, then the download) runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from icg.errors import CheckpointError

logger = logging.getLogger(__name__)

SUFFIX = ".pointer.json"
VERSION = 1


@dataclass(frozen=True)
class Pointer:
    path: Path  # the pointer file
    target: Path  # resolved: absolute
    size: int
    mtime_ns: int
    sha256: str | None
    format: str
    source: str


def pointer_path(folder: str | os.PathLike[str], name: str) -> Path:
    return Path(folder) / f"{name}{SUFFIX}"


def write_pointer(
    folder: str | os.PathLike[str],
    name: str,
    target: str | os.PathLike[str],
    *,
    source: str,
    fmt: str,
    sha256: str | None = None,
) -> Path:
    """Write ``<folder>/<name>.pointer.json`` referring to ``target`` (a file in ``folder`` is stored by
    name, so the folder can move). Written through a temporary name: never half a pointer."""
    folder, target = Path(folder), Path(target)
    stat = target.stat()
    stored = target.name if target.parent.resolve() == folder.resolve() else str(target.absolute())
    data = {
        "icg_pointer": VERSION,
        "target": stored,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
        "format": fmt,
        "source": source,
    }
    dest = pointer_path(folder, name)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    return dest


def read_pointer(path: str | os.PathLike[str]) -> Pointer:
    """The pointer in ``path``; ``CheckpointError`` naming the file and the field when it is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable pointer file ({err})") from err
    if not isinstance(data, dict) or data.get("icg_pointer") != VERSION:
        raise CheckpointError(f"{path}: not an ICG pointer file (icg_pointer must be {VERSION})")
    fields = {"target": str, "size": int, "mtime_ns": int, "format": str, "source": str}
    for field, kind in fields.items():
        if not isinstance(data.get(field), kind) or isinstance(data.get(field), bool):
            raise CheckpointError(f"{path}: pointer field {field!r} must be a {kind.__name__}")
    sha = data.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise CheckpointError(f"{path}: pointer field 'sha256' must be 64 hex digits or null")
    target = Path(data["target"])
    if not target.is_absolute():
        if target.name != data["target"]:
            raise CheckpointError(f"{path}: pointer field 'target' must be absolute or a name in its folder")
        target = path.parent / target
    return Pointer(path, target, data["size"], data["mtime_ns"], sha, data["format"], data["source"])


def _problem(pointer: Pointer) -> str | None:
    try:
        stat = pointer.target.stat()
    except OSError:
        return f"{pointer.path} points to {pointer.target}, which is gone (moved or deleted)"
    if stat.st_size != pointer.size:
        sizes = f"size {stat.st_size}, was {pointer.size}"
        return f"{pointer.path} points to {pointer.target}, which changed ({sizes})"
    if stat.st_mtime_ns != pointer.mtime_ns:
        from icg.models.download import sha256_file

        if pointer.sha256 is None or sha256_file(pointer.target) != pointer.sha256:
            return f"{pointer.path} points to {pointer.target}, which was modified since it was checked"
    return None


def resolve(folder: str | os.PathLike[str], name: str) -> tuple[Path | None, str | None]:
    """``(path, problem)`` of the installed file ``name`` in ``folder``: the file itself, else a pointer's
    checked target; ``(None, None)`` when neither is there, ``(None, why)`` for a pointer that fails."""
    real = Path(folder) / name
    if real.is_file():
        return real, None
    pointer_file = pointer_path(folder, name)
    if not pointer_file.is_file():
        return None, None
    try:
        pointer = read_pointer(pointer_file)
    except CheckpointError as err:
        return None, str(err)
    problem = _problem(pointer)
    if problem is not None:
        logger.debug("%s", problem)
        return None, problem
    return pointer.target, None


def installed_file(folder: str | os.PathLike[str], name: str) -> Path | None:
    """The file to read for ``name`` in ``folder`` (itself or a pointer's checked target), or None."""
    return resolve(folder, name)[0]


def source_of(folder: str | os.PathLike[str], name: str) -> str | None:
    """Where a pointer says the file ``name`` came from (None: no readable pointer)."""
    pointer_file = pointer_path(folder, name)
    if (Path(folder) / name).is_file() or not pointer_file.is_file():
        return None
    try:
        return read_pointer(pointer_file).source
    except CheckpointError:
        return None
