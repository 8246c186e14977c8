"""Where models live on disk.

The models folder is chosen as: an explicit override (command-line flag or setting; inside the WebUI the
adapter passes ``<webui models path>/icg``) > ``$ICG_HOME`` > the user cache folder (``$XDG_CACHE_HOME/icg``
or ``~/.cache/icg`` on Linux and macOS, ``%LOCALAPPDATA%\\icg`` on Windows).

Layout, meant to be readable by a person::

    <models_dir>/
        <model id>/...files       one folder per registry entry, files as the registry names them
        cache/                    derived data (converted checkpoints, text features), safe to delete

Nothing is created at import time; ``ensure_dir`` creates folders when something is about to be written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from icg.errors import ConfigError
from icg.models.registry import RESERVED_IDS, ModelEntry

ENV_HOME = "ICG_HOME"
CACHE_DIRNAME = "cache"


def user_cache_dir() -> Path:
    """The per-user cache folder for icg (not created)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "icg"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "icg"


def models_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The models folder: ``override`` > ``$ICG_HOME`` > the user cache folder. Not created."""
    if override is not None and str(override).strip():
        return Path(override).expanduser()
    home = os.environ.get(ENV_HOME, "").strip()
    if home:
        return Path(home).expanduser()
    return user_cache_dir()


def model_dir(entry_or_id: ModelEntry | str, root: str | os.PathLike[str]) -> Path:
    """``<root>/<model id>``, the folder holding one model's files (not created)."""
    model_id = entry_or_id.id if isinstance(entry_or_id, ModelEntry) else str(entry_or_id)
    if (
        not model_id
        or model_id in (".", "..")
        or model_id in RESERVED_IDS
        or any(sep in model_id for sep in ("/", "\\", ":"))
    ):
        raise ConfigError(f"{model_id!r} can't be used as a model folder name")
    return Path(root) / model_id


def cache_dir(root: str | os.PathLike[str]) -> Path:
    """``<root>/cache``, for derived data that can be rebuilt (not created)."""
    return Path(root) / CACHE_DIRNAME


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and return it; ``ConfigError`` if that is impossible."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"can't create the folder {folder}: {err}") from err
    return folder


def folder_signature(folder: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of a models folder (one directory scan): a digest of its path, its modification
    time and each entry's name and modification time. It changes when a model folder is added, removed or
    renamed, or when files land in one (an import, a download, a copy by hand), so a UI can list the
    models afresh only then. A string, so it survives a UI's state (gradio 4 turns tuples into lists);
    an unreadable folder has a signature too (and changes when it becomes readable)."""
    import hashlib

    path = Path(folder)
    try:
        with os.scandir(path) as scan:
            entries = sorted((e.name, e.stat(follow_symlinks=False).st_mtime_ns) for e in scan)
        facts = (str(path), path.stat().st_mtime_ns, entries)
    except OSError:
        facts = (str(path), None, [])
    return hashlib.sha256(repr(facts).encode("utf-8", "surrogateescape")).hexdigest()
