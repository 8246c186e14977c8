"""Finding the images in a folder, in a stable order, without wandering into places we should not.

Hidden files and folders (name starting with ".") are skipped, and so are temporary files (``*.tmp``, our
own atomic-write leftovers) and any folder passed in ``exclude_dirs`` (an output folder inside the input
folder). Symlinked folders are followed after all the real ones, and each real folder is visited at most
once, so symlink cycles end and a folder reached twice is captioned once, under its real path when that is
inside ``root`` (else under one link, always the same one). Paths come back as ``root / relative path``
(links are not resolved, so sidecars land beside the path the user sees), sorted by their relative path
parts.

A symbolic link with an image's name whose target is missing (or a link loop) is not an image, but the
user meant one there: ``discover`` lists it in ``broken`` with the reason, so a run reports it as a
failure instead of leaving it out silently.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from icg.errors import IcgError

logger = logging.getLogger(__name__)

#: The extensions ICG looks for; ``icg.imaging.supported_extensions`` keeps those this Pillow can read.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tiff", ".tif", ".avif")
DEFAULT_IGNORE_SUFFIXES = (".tmp",)


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``{"JPG", ".png"}`` -> ``{".jpg", ".png"}``."""
    return frozenset("." + ext.strip().lstrip(".").lower() for ext in extensions if ext.strip().lstrip("."))


@dataclass(frozen=True)
class Discovery:
    """What ``discover`` found: the image files, and the links with an image name that lead nowhere."""

    images: list[Path]
    broken: list[tuple[Path, str]]  # (path, reason), sorted like ``images``


def discover_images(
    root: str | os.PathLike,
    recursive: bool = True,
    extensions: Iterable[str] | None = None,
    ignore_suffixes: Iterable[str] = DEFAULT_IGNORE_SUFFIXES,
    exclude_dirs: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """List the image files under ``root``, sorted by relative path (case-sensitive); see ``discover``."""
    return discover(root, recursive, extensions, ignore_suffixes, exclude_dirs).images


def discover(
    root: str | os.PathLike,
    recursive: bool = True,
    extensions: Iterable[str] | None = None,
    ignore_suffixes: Iterable[str] = DEFAULT_IGNORE_SUFFIXES,
    exclude_dirs: Iterable[str | os.PathLike] = (),
) -> Discovery:
    """The image files under ``root`` and the broken links with an image name, by relative path.

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
    broken: list[tuple[Path, str]] = []
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
            else:
                lower = name.lower()
                if os.path.splitext(lower)[1] not in wanted or lower.endswith(ignored):
                    continue
                if _is_file(entry):
                    found.append(folder / name)
                elif (reason := _broken_link(entry)) is not None:
                    broken.append((folder / name, reason))
        pending.extend(sorted(subfolders, reverse=True))
        linked.extend(sorted(links))
    found.sort(key=lambda path: path.relative_to(root).parts)
    broken.sort(key=lambda item: item[0].relative_to(root).parts)
    return Discovery(found, broken)


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


def _broken_link(entry: os.DirEntry) -> str | None:
    """Why the symbolic link ``entry`` leads to no file, or ``None`` (not a link, or a working one)."""
    try:
        if not entry.is_symlink():
            return None
        target = os.readlink(entry.path)
    except OSError:
        return None  # gone meanwhile
    try:
        os.stat(entry.path)
    except FileNotFoundError:
        return f"broken symbolic link to {target}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop through {target}"
        return f"unreadable symbolic link: {exc.strerror or exc}"
    return None  # it leads somewhere that is not a file (a folder, a device): not an image
