"""Caption datasets: Flickr8k, Flickr30k and a folder of images with sidecar captions.

Every reader returns a ``CaptionDataset``: images in the order they first appear in the captions file
(for a folder: sorted by relative path), each with its captions in file order. Formats:

- Flickr8k (Kaggle ``captions.txt``): CSV with the header ``image,caption``, five rows per image;
  captions that contain commas are quoted (unquoted extra commas are tolerated and kept);
- Flickr8k (original ``Flickr8k.token.txt``): ``image.jpg#N<TAB>caption``;
- Flickr30k: the Kaggle ``results.csv`` (``image_name| comment_number| comment``, pipe-separated, one
  known row lacks its second pipe: ``x.jpg| 4 A dog ...``) and the ``captions.txt`` CSV variant
  (``image_name,comment_number,comment``); columns are found by name;
- a folder of images with a sidecar caption file beside each (``img.png`` + ``img.txt``, one caption
  per non-empty line): the usual LoRA training folder.

``CaptionDataset.split(test_images)`` reproduces the seed's split: the last ``test_images`` images
(1000 for Flickr8k/30k: the last 5000 caption rows) are the test set, the rest the training set.

This module imports no torch.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from icg.errors import ConfigError

log = logging.getLogger(__name__)

#: The seed's test split: the last 1000 images (5000 captions) of Flickr8k/30k.
DEFAULT_TEST_IMAGES = 1000
#: Caption files looked for, in this order, when a dataset is given as a folder.
CAPTION_FILES = (
    "captions.txt",
    "results.csv",
    "captions.csv",
    "Flickr8k.token.txt",
    "flickr30k_images/results.csv",
)
#: Image folders looked for beside a captions file (the Kaggle layouts), in this order.
IMAGE_DIRS = (
    "Images",
    "images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "flickr30k_images",
    "flickr30k_images/flickr30k_images",
    ".",
)
_IMAGE_COLUMNS = ("image", "image_name", "filename", "file_name", "file", "img", "image_id")
_CAPTION_COLUMNS = ("caption", "comment", "captions", "text", "sentence", "raw")
_NUMBER_COLUMNS = ("comment_number", "caption_number", "number", "idx")
_TOKEN_LINE = re.compile(r"^(?P<image>[^\t#]+)#\d+\t(?P<caption>.*)$")
_NUMBERED_CAPTION = re.compile(r"^\s*\d+\s+(?P<caption>\S.*)$")


class DatasetError(ConfigError):
    """A captions file or dataset folder is missing, malformed, or names no readable image."""


@dataclass(frozen=True)
class ImageCaptions:
    """One image of a dataset: its name as the captions file writes it, its path, its captions."""

    name: str
    path: Path
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CaptionDataset:
    """Images with their captions, in dataset order."""

    images: tuple[ImageCaptions, ...]
    source: str
    format: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        return sum(len(im.captions) for im in self.images)

    def split(self, test_images: int = DEFAULT_TEST_IMAGES) -> tuple[CaptionDataset, CaptionDataset]:
        """(train, test): the last ``test_images`` images are the test set (the seed's split)."""
        return split_images(self, test_images)

    def subset(self, images: Iterable[ImageCaptions], part: str) -> CaptionDataset:
        return CaptionDataset(tuple(images), self.source, f"{self.format}:{part}")


def check_test_images(total: int, test_images: int, source: str) -> None:
    if test_images < 0:
        raise DatasetError(f"--test-images must be 0 or more, not {test_images}")
    if test_images > total:
        raise DatasetError(
            f"{source}: the dataset has {total} images, fewer than the {test_images} test images asked for "
            "(set --test-images)"
        )


def split_images(dataset: CaptionDataset, test_images: int) -> tuple[CaptionDataset, CaptionDataset]:
    check_test_images(len(dataset), test_images, dataset.source)
    cut = len(dataset) - test_images
    return dataset.subset(dataset.images[:cut], "train"), dataset.subset(dataset.images[cut:], "test")


# ------------------------------------------------------------------------------------------ entry point
def load_dataset(
    path: str | Path,
    *,
    images_dir: str | Path | None = None,
    fmt: str = "auto",
    caption_ext: str = ".txt",
) -> CaptionDataset:
    """Read a dataset from a captions file, a folder holding one (Kaggle layouts), or a folder of
    images with sidecar captions. ``fmt``: ``auto``, ``flickr`` (a captions file) or ``folder``."""
    path = Path(path).expanduser()
    if fmt not in ("auto", "flickr", "folder"):
        raise DatasetError(f"unknown dataset format {fmt!r}; expected auto, flickr or folder")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        captions_file = None if fmt == "folder" else _find_captions_file(path)
        if captions_file is None:
            if fmt == "flickr":
                raise DatasetError(f"{path}: no captions file ({', '.join(CAPTION_FILES)}) in this folder")
            return read_folder(path, caption_ext=caption_ext)
        path = captions_file
    elif fmt == "folder":
        raise DatasetError(f"{path}: a folder dataset must be a folder of images with sidecar captions")
    return read_captions_file(path, images_dir=images_dir)


def _find_captions_file(folder: Path) -> Path | None:
    for name in CAPTION_FILES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------------ captions files
def read_captions_file(path: str | Path, *, images_dir: str | Path | None = None) -> CaptionDataset:
    """Read a Flickr8k/Flickr30k captions file; images are looked up in ``images_dir`` or beside it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise DatasetError(f"{path}: can't read the captions file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: the captions file is not UTF-8 text ({err})") from err
    rows, fmt = parse_captions(text, source=str(path))
    grouped: dict[str, list[str]] = {}
    for image, caption in rows:
        grouped.setdefault(image, []).append(caption)
    if not grouped:
        raise DatasetError(f"{path}: no captions found")
    folder = _resolve_images_dir(path, next(iter(grouped)), images_dir)
    images, missing = [], []
    for name, captions in grouped.items():
        image_path = folder / name
        if image_path.is_file():
            images.append(ImageCaptions(name, image_path, tuple(captions)))
        else:
            missing.append(name)
    if missing:
        log.warning(
            "%s: %d image(s) named in the captions file are not in %s and are left out (first: %s)",
            path,
            len(missing),
            folder,
            missing[0],
        )
    if not images:
        raise DatasetError(f"{path}: none of the images it names is in {folder}")
    log.info("%s: %d images, %d captions (%s)", path, len(images), sum(len(i.captions) for i in images), fmt)
    return CaptionDataset(tuple(images), str(path), fmt)


def parse_captions(text: str, *, source: str = "<captions>") -> tuple[list[tuple[str, str]], str]:
    """``(image, caption)`` rows of a captions file's text and the format name it was read as."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if _TOKEN_LINE.match(first):
        return _parse_token_lines(lines, source), "flickr8k-token"
    delimiter = "|" if "|" in first else ","
    return _parse_table(text, delimiter, source)


def _parse_token_lines(lines: list[str], source: str) -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _TOKEN_LINE.match(line)
        if match is None:
            raise DatasetError(
                f"{source}, line {number}: expected 'image.jpg#N<TAB>caption', got {line[:80]!r}"
            )
        caption = match["caption"].strip()
        if caption:
            rows.append((match["image"].strip(), caption))
    return rows


def _parse_table(text: str, delimiter: str, source: str) -> tuple[list[tuple[str, str]], str]:
    pipes = delimiter == "|"  # Flickr30k's results.csv: "name| 0| caption", no quoting
    quoting = csv.QUOTE_NONE if pipes else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting, skipinitialspace=pipes)
    header = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lower() for cell in row]
            break
    if header is None:
        raise DatasetError(f"{source}: empty captions file")
    image_col = _column(header, _IMAGE_COLUMNS)
    caption_col = _column(header, _CAPTION_COLUMNS)
    number_col = _column(header, _NUMBER_COLUMNS)
    has_header = image_col is not None and caption_col is not None
    if not has_header:
        # No recognisable header: the first row is data, laid out as image, caption.
        image_col, caption_col, number_col = 0, 1, None
        reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting, skipinitialspace=pipes)
    fmt = "flickr30k" if number_col is not None or delimiter == "|" else "flickr8k"
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        image = row[image_col].strip() if image_col < len(row) else ""
        if caption_col < len(row):
            # Unquoted commas inside a caption split it into extra cells: join them back.
            caption = delimiter.join(row[caption_col:]).strip()
        elif number_col is not None and len(row) == number_col + 1:
            # Flickr30k's results.csv has a row whose caption follows its number without a delimiter.
            match = _NUMBERED_CAPTION.match(row[number_col])
            caption = match["caption"].strip() if match else ""
        else:
            caption = ""
        if not image:
            raise DatasetError(f"{source}, line {reader.line_num}: a row without an image name")
        if not caption:
            log.warning("%s, line %d: row for %s has no caption; skipped", source, reader.line_num, image)
            continue
        rows.append((image, caption))
    return rows, fmt


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _resolve_images_dir(captions_file: Path, first_image: str, images_dir: str | Path | None) -> Path:
    if images_dir is not None:
        folder = Path(images_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: images folder not found")
        return folder
    for name in IMAGE_DIRS:
        folder = captions_file.parent / name
        if (folder / first_image).is_file():
            return folder
    raise DatasetError(
        f"{captions_file}: can't find its images (looked for {first_image} in "
        f"{', '.join(IMAGE_DIRS)} beside it); pass the images folder with --images"
    )


# ------------------------------------------------------------------------------------------ folders
def read_folder(root: str | Path, *, caption_ext: str = ".txt", recursive: bool = True) -> CaptionDataset:
    """Images under ``root`` that have a sidecar caption file; each non-empty line is one caption."""
    from icg.discovery import discover_images
    from icg.sinks import normalise_extension

    root = Path(root)
    ext = normalise_extension(caption_ext)
    images, without = [], 0
    for image_path in discover_images(root, recursive=recursive):
        sidecar = image_path.with_suffix(ext)
        if not sidecar.is_file():
            without += 1
            continue
        try:
            text = sidecar.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"{sidecar}: can't read the caption file ({err})") from err
        captions = tuple(line.strip() for line in text.splitlines() if line.strip())
        if captions:
            images.append(ImageCaptions(image_path.relative_to(root).as_posix(), image_path, captions))
        else:
            without += 1
    if without:
        log.warning("%s: %d image(s) without a non-empty %s caption file are left out", root, without, ext)
    if not images:
        raise DatasetError(
            f"{root}: no captions file ({', '.join(CAPTION_FILES)}) and no image with a {ext} caption file"
        )
    return CaptionDataset(tuple(images), str(root), "folder")
