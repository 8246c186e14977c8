"""load_image on real files: orientation, modes, animations, and a corpus of broken files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from icg.discovery import IMAGE_EXTENSIONS
from icg.errors import IcgError, ImageError
from icg.imaging import DEFAULT_MAX_PIXELS, ImageTooLarge, load_image, supported_extensions

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _close(actual, expected, tol=12):
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def _halves(size=(40, 20), left=RED, right=BLUE) -> Image.Image:
    img = Image.new("RGB", size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG (and its CRC) without adding pixel data."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


# ---------------------------------------------------------------------------------------------- good files


def test_rgb_jpeg_round_trip(tmp_path):
    path = tmp_path / "photo.jpg"
    _halves().save(path, quality=95)
    img = load_image(path)
    assert (img.mode, img.size) == ("RGB", (40, 20))
    assert _close(img.getpixel((5, 10)), RED) and _close(img.getpixel((35, 10)), BLUE)


@pytest.mark.parametrize(
    ("orientation", "size", "top_left", "bottom_right"),
    [(1, (40, 20), RED, BLUE), (3, (40, 20), BLUE, RED), (6, (20, 40), RED, BLUE), (8, (20, 40), BLUE, RED)],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, top_left, bottom_right):
    path = tmp_path / f"rotated{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    _halves().save(path, quality=95, exif=exif.tobytes())
    img = load_image(path)
    assert img.size == size
    assert _close(img.getpixel((2, 2)), top_left)
    assert _close(img.getpixel((size[0] - 3, size[1] - 3)), bottom_right)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    img = load_image(path)
    assert img.mode == "RGB"
    assert _close(img.getpixel((8, 8)), RED, tol=30)


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32896, 128), (0, 0)])
def test_16bit_png_is_scaled_not_clipped(tmp_path, value, expected):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 7), value, dtype=np.uint16)).save(path)
    img = load_image(path)
    assert (img.mode, img.size) == ("RGB", (7, 6))
    assert img.getpixel((3, 3)) == (expected,) * 3


def test_16bit_tiff_and_32bit_int_image(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.full((5, 5), 257 * 200, dtype=np.uint16)).save(path)
    assert load_image(path).getpixel((0, 0)) == (200, 200, 200)
    int_image = Image.fromarray(np.full((4, 4), 257 * 60, dtype=np.int32))
    assert int_image.mode == "I"
    assert load_image(int_image).getpixel((1, 1)) == (60, 60, 60)


def test_float_image_is_clipped_to_8bit():
    img = Image.fromarray(np.array([[-5.0, 100.4], [300.0, np.nan]], dtype=np.float32))
    assert img.mode == "F"
    assert np.asarray(load_image(img))[..., 0].tolist() == [[0, 100], [255, 0]]


def test_palette_transparency_composites_on_white(tmp_path):
    path = tmp_path / "palette.png"
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((1, 5)) == WHITE  # transparent black becomes white, not black
    assert out.getpixel((8, 5)) == RED


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (0, 0, 0, 0), WHITE),
        ("RGBA", (255, 0, 0, 255), RED),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("LA", (0, 0), WHITE),
        ("LA", (0, 255), (0, 0, 0)),
    ],
)
def test_alpha_composites_on_white(tmp_path, mode, colour, expected):
    path = tmp_path / "alpha.png"
    Image.new(mode, (4, 4), colour).save(path)
    assert _close(load_image(path).getpixel((2, 2)), expected, tol=1)


def test_rgb_png_with_transparent_colour(tmp_path):
    path = tmp_path / "trns.png"
    _halves(size=(8, 4), left=(0, 0, 0), right=GREEN).save(path, transparency=(0, 0, 0))
    out = load_image(path)
    assert out.getpixel((1, 1)) == WHITE and out.getpixel((6, 1)) == GREEN


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel(tmp_path, mode):
    path = tmp_path / f"gray_{mode}.png"
    Image.new(mode, (5, 5), 255).save(path)
    out = load_image(path)
    assert (out.mode, out.getpixel((2, 2))) == ("RGB", WHITE)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(tmp_path, fmt):
    path = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.new("RGB", (12, 12), colour) for colour in (RED, GREEN, BLUE)]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    with Image.open(path) as check:
        assert check.n_frames == 3
    out = load_image(path)
    assert (out.mode, out.size) == ("RGB", (12, 12))
    assert _close(out.getpixel((6, 6)), RED, tol=2)


def test_open_image_at_later_frame_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 6), colour) for colour in (RED, GREEN)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as img:
        img.seek(1)
        assert _close(load_image(img).getpixel((2, 2)), RED, tol=2)


def test_bytes_and_pil_inputs(tmp_path):
    data = _png_bytes(_halves(size=(6, 2)))
    assert load_image(data).getpixel((0, 0)) == RED
    assert load_image(bytearray(data)).getpixel((5, 1)) == BLUE
    assert load_image(memoryview(data)).size == (6, 2)
    source = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    out = load_image(source)
    assert out is not source and source.mode == "RGBA" and out.getpixel((1, 1)) == WHITE
    rgb = Image.new("RGB", (3, 3), GREEN)
    assert load_image(rgb) is not rgb


def test_string_path_accepted(tmp_path):
    path = tmp_path / "s.bmp"
    Image.new("RGB", (3, 2), BLUE).save(path)
    assert load_image(str(path)).getpixel((0, 0)) == BLUE


def test_supported_extensions():
    exts = supported_extensions()
    assert {".png", ".jpg", ".jpeg", ".gif", ".bmp"} <= set(exts)
    assert set(exts) <= set(IMAGE_EXTENSIONS)
    assert (".avif" in exts) == (Image.registered_extensions().get(".avif") in Image.OPEN)


# ---------------------------------------------------------------------------------------------- bad files


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _claimed_size_png(tmp_path, width, height):
    """A 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""
    return _write(tmp_path, "bomb.png", _patch_png_size(_png_bytes(Image.new("L", (1, 1))), width, height))


def _truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return _write(tmp_path, "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])


def _truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    data = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    return _write(tmp_path, "truncated.png", data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "missing.png", "not found"),
        (lambda tmp: _write(tmp, "empty.png", b""), "empty file"),
        (lambda tmp: _write(tmp, "text.png", b"this is not an image\n" * 20), "not an image"),
        (lambda tmp: _write(tmp, "sig.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "not an image"),
        (_truncated_jpeg, "truncated"),
        (_truncated_png, "cannot decode"),
        (lambda tmp: _claimed_size_png(tmp, 10**5, 10**5), "decompression bomb"),
    ],
    ids=["missing", "zero-byte", "text", "bad-png-body", "truncated-jpeg", "truncated-png", "bomb"],
)
def test_bad_files_raise_image_error_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value)
    assert reason in str(err.value)
    assert isinstance(err.value, IcgError)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_truncated_bytes_and_zero_bytes(tmp_path):
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(_truncated_jpeg(tmp_path).read_bytes())
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")


def test_truncated_images_stay_refused():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_max_pixels_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50), RED).save(path)
    with pytest.raises(ImageError, match="too large.*5000 pixels, limit 4999"):
        load_image(path, max_pixels=4999)
    assert load_image(path, max_pixels=5000).size == (100, 50)
    assert load_image(path, max_pixels=None).size == (100, 50)
    with pytest.raises(ImageError, match="too large"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_claiming_huge_size_is_refused_without_decoding(tmp_path):
    path = _claimed_size_png(tmp_path, 12_000, 12_000)  # 144M pixels: between Pillow's two limits
    with pytest.raises(ImageTooLarge, match="too large"):  # an ImageError the API answers with 413
        load_image(path, max_pixels=10**8)
    with pytest.raises(ImageTooLarge, match="decompression bomb"):  # above Pillow's own hard limit
        load_image(_claimed_size_png(tmp_path, 20_000, 20_000), max_pixels=None)


def test_pillow_bomb_warning_as_error_is_an_image_error(tmp_path):
    path = _claimed_size_png(tmp_path, 10_000, 10_000)  # above Pillow's warning limit
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(path)
    assert limit == Image.MAX_IMAGE_PIXELS
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485
