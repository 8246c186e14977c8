"""Finding the images in a folder, in a stable order, without wandering into places we should not.

Hidden files and folders (name starting with ".") are skipped, and so are temporary files (``*.tmp``, our
own atomic-write leftovers) and any folder passed in ``exclude_dirs`` (an output folder inside the input
folder). Symlinked folders are followed after all the real ones, and each real folder is visited at most
once, so symlink cycles end and a folder reached twice is captioned once, under its real path when that is
inside ``root`` (else under one link, always the same one). Paths come back as ``root / relative path``
(links are not resolved, so sidecars land beside the path the user sees), sorted by their relative path
parts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from icg.errors import IcgError

logger = logging.getLogger(__name__)

#: The extensions ICG looks for; ``icg.imaging.supported_extensions`` keeps those this Pillow can read.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tiff", ".tif", ".avif")
DEFAULT_IGNORE_SUFFIXES = (".tmp",)


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``{"JPG", ".png"}`` -> ``{".jpg", ".png"}``."""
    return frozenset("." + ext.strip().lstrip(".").lower() for ext in extensions if ext.strip().lstrip("."))


def discover_images(
    root: str | os.PathLike,
    recursive: bool = True,
    extensions: Iterable[str] | None = None,
    ignore_suffixes: Iterable[str] = DEFAULT_IGNORE_SUFFIXES,
    exclude_dirs: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """List the image files under ``root``, sorted by relative path (case-sensitive).

    ``extensions`` defaults to what this Pillow can read (``icg.imaging.supported_extensions``); matching
    is case-insensitive. Raises ``IcgError`` when ``root`` is missing or not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise IcgError(f"image folder not found: {root}")
    if not root.is_dir():
        raise IcgError(f"not a folder: {root}")
    if extensions is None:
        from icg.imaging import supported_extensions  # imports Pillow only when needed

        extensions = supported_extensions()
    wanted = normalise_extensions(extensions)
    ignored = tuple(suffix.lower() for suffix in ignore_suffixes)
    excluded = {os.path.realpath(d) for d in exclude_dirs}

    found: list[Path] = []
    visited: set[str] = set()
    pending = [root]  # real folders, depth-first in sorted order
    linked: list[Path] = []  # symlinked folders, followed once no real folder is left
    while pending or linked:
        folder = pending.pop() if pending else linked.pop(0)
        real = os.path.realpath(folder)
        if real in visited or real in excluded:
            continue
        visited.add(real)
        subfolders: list[Path] = []
        links: list[Path] = []
        for entry in _list_folder(folder, is_root=folder == root):
            name = entry.name
            if name.startswith("."):
                continue
            if _is_dir(entry):
                if recursive:
                    (links if entry.is_symlink() else subfolders).append(folder / name)
            elif _is_file(entry):
                lower = name.lower()
                if os.path.splitext(lower)[1] in wanted and not lower.endswith(ignored):
                    found.append(folder / name)
        pending.extend(sorted(subfolders, reverse=True))
        linked.extend(sorted(links))
    found.sort(key=lambda path: path.relative_to(root).parts)
    return found


def _list_folder(folder: Path, is_root: bool) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        if is_root:
            raise IcgError(f"cannot read image folder {folder}: {exc.strerror or exc}") from exc
        logger.warning("skipping unreadable folder %s: %s", folder, exc.strerror or exc)
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symlinks; broken links are neither file nor folder
    except OSError:
        return False
