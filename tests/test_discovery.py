"""discover_images on real folder trees: order, filters, symlinks, exclusions, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from icg.discovery import discover_images, normalise_extensions
from icg.errors import IcgError


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # discovery never opens files, so any bytes do


def _rel(root: Path, paths: list[Path]) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def _symlink(link: Path, target: Path) -> None:
    try:
        link.symlink_to(target, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")


def test_finds_images_sorted_by_relative_parts(tmp_path):
    _touch(tmp_path, "b.png", "a/z.png", "a-b.png", "B.JPG", "a/c/d.webp", "c.Jpeg", "x.gif", "y.tiff")
    _touch(tmp_path, "z.bmp")
    found = discover_images(tmp_path)
    # by parts, case-sensitive: "a" < "a-b.png" (a plain string sort would put "a-b.png" before "a/z.png")
    expected = ["B.JPG", "a/c/d.webp", "a/z.png", "a-b.png", "b.png", "c.Jpeg", "x.gif", "y.tiff", "z.bmp"]
    assert _rel(tmp_path, found) == expected
    assert all(path.is_absolute() == tmp_path.is_absolute() and path.is_file() for path in found)
    assert discover_images(tmp_path) == found  # deterministic


def test_skips_hidden_temp_and_non_images(tmp_path):
    _touch(
        tmp_path,
        "keep.png",
        ".hidden.png",
        ".git/objects/a.png",
        "sub/.cache/b.png",
        ".keep.png.1a2b3c.tmp",
        "photo.png.tmp",
        "notes.txt",
        "keep.txt",
        "keep.caption",
        "manifest.jsonl",
        "manifest.csv",
        "noext",
        "sub/ok.jpg",
    )
    assert _rel(tmp_path, discover_images(tmp_path)) == ["keep.png", "sub/ok.jpg"]


def test_ignore_suffixes_apply_even_to_image_names(tmp_path):
    _touch(tmp_path, "a.png", "b.tmp.png", "c.bak.png")
    assert _rel(tmp_path, discover_images(tmp_path, ignore_suffixes=(".bak.png",))) == ["a.png", "b.tmp.png"]


def test_not_recursive(tmp_path):
    _touch(tmp_path, "a.png", "sub/b.png")
    assert _rel(tmp_path, discover_images(tmp_path, recursive=False)) == ["a.png"]


@pytest.mark.parametrize("extensions", [("png",), (".PNG",), ["Png", ""], {"png"}])
def test_extensions_are_case_insensitive(tmp_path, extensions):
    _touch(tmp_path, "a.PNG", "b.png", "c.jpg")
    assert _rel(tmp_path, discover_images(tmp_path, extensions=extensions)) == ["a.PNG", "b.png"]


def test_normalise_extensions():
    assert normalise_extensions(["JPG", ".png", " webp ", "", "."]) == {".jpg", ".png", ".webp"}


def test_exclude_output_folder(tmp_path):
    _touch(tmp_path, "a.png", "out/a.png", "out/deep/b.png", "other/c.png")
    found = discover_images(tmp_path, exclude_dirs=[tmp_path / "out"])
    assert _rel(tmp_path, found) == ["a.png", "other/c.png"]
    found = discover_images(tmp_path, exclude_dirs=[str(tmp_path / "out" / "deep")])
    assert _rel(tmp_path, found) == ["a.png", "other/c.png", "out/a.png"]


def test_symlink_cycle_terminates(tmp_path):
    _touch(tmp_path, "a.png", "sub/b.png")
    _symlink(tmp_path / "sub" / "loop", tmp_path)
    _symlink(tmp_path / "sub" / "self", tmp_path / "sub")
    assert _rel(tmp_path, discover_images(tmp_path)) == ["a.png", "sub/b.png"]


def test_symlinked_folder_outside_root_is_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    _touch(root, "a.png")
    _touch(outside, "b.png", "deeper/c.png")
    _symlink(root / "linked", outside)
    assert _rel(root, discover_images(root)) == ["a.png", "linked/b.png", "linked/deeper/c.png"]


def test_folder_reached_twice_is_listed_once_under_its_real_path(tmp_path):
    _touch(tmp_path, "real/a.png")
    _symlink(tmp_path / "alias", tmp_path / "real")  # sorts before "real" but must not win
    _symlink(tmp_path / "zlink", tmp_path / "real")
    assert _rel(tmp_path, discover_images(tmp_path)) == ["real/a.png"]


def test_broken_symlinks_are_ignored(tmp_path):
    _touch(tmp_path, "a.png")
    try:
        (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")
    _symlink(tmp_path / "gone_dir", tmp_path / "missing_dir")
    assert _rel(tmp_path, discover_images(tmp_path)) == ["a.png"]


def test_symlinked_file_is_listed(tmp_path):
    _touch(tmp_path, "a.png")
    try:
        (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")
    assert _rel(tmp_path, discover_images(tmp_path)) == ["a.png", "b.png"]


def _deny(monkeypatch, denied: Path) -> None:
    """Make ``os.scandir`` fail on ``denied`` as an unreadable folder would (chmod is moot for root)."""
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_subfolder_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    _touch(tmp_path, "a.png", "locked/b.png")
    _deny(monkeypatch, tmp_path / "locked")
    assert _rel(tmp_path, discover_images(tmp_path)) == ["a.png"]
    assert "locked" in caplog.text and "Permission denied" in caplog.text


def test_unreadable_root_is_an_error(tmp_path, monkeypatch):
    _deny(monkeypatch, tmp_path)
    with pytest.raises(IcgError, match="cannot read image folder"):
        discover_images(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(IcgError, match="not found.*nope"):
        discover_images(tmp_path / "nope")


def test_root_is_a_file(tmp_path):
    _touch(tmp_path, "a.png")
    with pytest.raises(IcgError, match="not a folder"):
        discover_images(tmp_path / "a.png")


def test_relative_root(tmp_path, monkeypatch):
    _touch(tmp_path, "imgs/a.png", "imgs/s/b.png")
    monkeypatch.chdir(tmp_path)
    assert discover_images("imgs") == [Path("imgs/a.png"), Path("imgs/s/b.png")]


def test_empty_folder(tmp_path):
    assert discover_images(tmp_path) == []


def test_dangling_links_with_an_image_name_are_listed_as_broken(tmp_path):
    from icg.discovery import discover

    _touch(tmp_path, "a.png")
    try:
        (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
        (tmp_path / "notes.txt").symlink_to(tmp_path / "missing.txt")  # not an image: not ours
        (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")
    _touch(tmp_path, "sub/b.png")
    (tmp_path / "sub" / "old.jpg").symlink_to("../nowhere/old.jpg")
    found = discover(tmp_path)
    assert _rel(tmp_path, found.images) == ["a.png", "sub/b.png"]
    assert {path.relative_to(tmp_path).as_posix(): reason for path, reason in found.broken} == {
        "gone.png": f"broken symbolic link to {tmp_path / 'missing.png'}",
        "loop.png": f"symbolic link loop through {tmp_path / 'loop.png'}",
        "sub/old.jpg": "broken symbolic link to ../nowhere/old.jpg",
    }
