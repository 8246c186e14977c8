"""Image loading: any file a user points us at becomes an upright RGB ``PIL.Image`` or an ``ImageError``.

``load_image`` applies the EXIF orientation, takes the first frame of animations, composites transparency
onto white, scales 16-bit and 32-bit samples down to 8 bits, and converts CMYK, palette and grayscale
images to RGB. It never accepts truncated data: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as it
is (False unless the host changed it) and the pixels are decoded inside the error handling, so a broken
file fails here rather than later in the pipeline.

Decompression bombs: the pixel count is checked against ``max_pixels`` before decoding. Pillow's own
checks run at ``Image.open``: its ``DecompressionBombError`` (above twice ``Image.MAX_IMAGE_PIXELS``) is
an ``ImageError`` here whatever ``max_pixels`` says, and so is its ``DecompressionBombWarning`` wherever a
warnings filter turns it into an exception. The warnings filters are not touched (they are process-wide
and not thread-safe), so between Pillow's two limits Pillow may print its warning and the image loads if
it is within ``max_pixels``.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from icg.discovery import IMAGE_EXTENSIONS
from icg.errors import ImageError

logger = logging.getLogger(__name__)


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (``max_pixels``, or Pillow's decompression-bomb limit),
    refused before its pixels are decoded; the API answers it with 413."""


#: Pillow's hard limit with its default settings (2 x ``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_PIXELS = 178_956_970

#: Divisor that maps high-depth sample values onto 0..255 (Pillow keeps 16-bit data in "I;16*" and "I").
_DEPTH_DIVISOR = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0, "F": 1.0}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_WHITE = (255, 255, 255, 255)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


def supported_extensions() -> tuple[str, ...]:
    """The ``IMAGE_EXTENSIONS`` (lower case, with the dot) that this Pillow can open."""
    registered = Image.registered_extensions()  # also loads every installed plugin
    return tuple(ext for ext in IMAGE_EXTENSIONS if registered.get(ext) in Image.OPEN)


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``source`` (a path, encoded bytes or an open image) as a new, upright RGB image.

    ``max_pixels=None`` disables ICG's own size check (Pillow's hard limit still applies). Raises
    ``ImageError`` naming the file and the reason when the image can't be read.
    """
    if isinstance(source, Image.Image):
        return _normalise(source, _image_name(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError("<bytes>: no image data (0 bytes)")
        return _open_and_normalise(io.BytesIO(bytes(source)), "<bytes>", max_pixels)
    path = Path(source)
    check_image_file(path)
    return _open_and_normalise(path, str(path), max_pixels)


def check_image_file(path: Path) -> None:
    """``ImageError`` when ``path`` is missing, unreadable, a folder or empty (nothing is decoded)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if stat.st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def _open_and_normalise(fp: Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    try:
        with Image.open(fp) as img:
            return _normalise(img, name, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or a format this Pillow can't read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot read image ({exc.strerror or exc})") from exc


def _normalise(img: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    """Decode ``img`` fully and return an upright RGB copy; decoding errors become ``ImageError``."""
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: image too large ({width}x{height} = {width * height} pixels, limit {max_pixels}); "
            "refused as a possible decompression bomb"
        )
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()  # decode here, so truncated or corrupt data fails inside this handler
        return _to_rgb(_upright(img, name))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise ImageError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _upright(img: Image.Image, name: str) -> Image.Image:
    """A copy of the decoded ``img`` turned by its EXIF orientation; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # the pixels decoded fine; only the metadata is bad
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
        return img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _DEPTH_DIVISOR:
        img = _to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit or 32-bit single-channel image onto 8-bit "L" (Pillow's own convert clips)."""
    import numpy as np  # only needed here; keeps ``import icg.imaging`` light

    samples = np.asarray(img, dtype=np.float64) / _DEPTH_DIVISOR[img.mode]
    samples = np.nan_to_num(samples, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(samples), 0, 255).astype(np.uint8))


def _image_name(img: Image.Image) -> str:
    return str(getattr(img, "filename", "") or "<image>")
