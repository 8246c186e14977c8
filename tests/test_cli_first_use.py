"""A new user's first commands: typos fail at once, empty folders say why, long runs show progress."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import icg.commands.batch as batch_command
import icg.commands.caption as caption_command
from icg.cli import main
from tests.test_batch_cli import model_args
from tests.test_batch_engine import make_images

ROOT = Path(__file__).resolve().parents[1]


def _no_models(*args, **kwargs):
    raise AssertionError("a model manager was made before the inputs were checked")


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(caption_command, "make_manager", _no_models)
    monkeypatch.setattr(batch_command, "make_manager", _no_models)


def test_a_missing_file_among_many_fails_before_any_model(tmp_path, capsys, no_models):
    make_images(tmp_path, [f"{i}.png" for i in range(12)])
    images = [str(tmp_path / f"{i}.png") for i in range(12)] + [str(tmp_path / "typo.png")]
    assert main(["caption", *images, "--batch-size", "2", "--models-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"icg: error: {tmp_path / 'typo.png'}: file not found"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["caption", "{tmp}/nope.png"], "{tmp}/nope.png: file not found"),
        (["caption", "{tmp}"], "{tmp}: is a folder, not an image file"),
        (["batch", "{tmp}/nodir"], "image folder not found: {tmp}/nodir"),
    ],
)
def test_a_typo_fails_without_importing_torch(tmp_path, argv, message):
    """In a fresh interpreter: the error names the file, torch is never imported, no download advice."""
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--models-dir", str(tmp_path / "models")]
    code = (
        "import sys\nfrom icg.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('torch' in sys.modules, rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["False", "1"]
    assert done.stderr.strip() == "icg: error: " + message.format(tmp=tmp_path)


def test_an_empty_folder_says_what_was_looked_for(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    assert main(["batch", str(tmp_path), "--ext", "png,JPG", "--no-recursive"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == (
        f"no images found in {tmp_path} (subfolders not searched); looked for files ending in .jpg, .png"
    )
    assert "0img" not in captured.err


def test_an_empty_folder_names_every_default_extension(tmp_path, capsys):
    assert main(["batch", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"no images found in {tmp_path} or its subfolders" in out and ".png" in out and ".jpg" in out


def test_batch_says_what_it_loads(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    assert main(["batch", str(tmp_path), *model_args()]) == 0
    err = capsys.readouterr().err
    assert "icg: loading " in err and "on cpu to caption 1 image(s)" in err


def test_batch_no_progress_is_quiet_on_stderr(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    assert main(["batch", str(tmp_path), *model_args("--no-progress")]) == 0
    assert capsys.readouterr().err == ""


def test_caption_shows_progress_for_many_files(tmp_path, capsys):
    make_images(tmp_path, [f"{i}.png" for i in range(5)])
    images = [str(tmp_path / f"{i}.png") for i in range(5)]
    assert main(["caption", *images, *model_args("--batch-size", "2")]) == 0
    captured = capsys.readouterr()
    assert "5/5" in captured.err and "captioning" in captured.err
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == images


def test_caption_no_progress(tmp_path, capsys):
    make_images(tmp_path, [f"{i}.png" for i in range(5)])
    images = [str(tmp_path / f"{i}.png") for i in range(5)]
    assert main(["caption", *images, *model_args("--no-progress")]) == 0
    assert capsys.readouterr().err == ""


def test_caption_batch_size_is_checked_when_parsing(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["caption", "x.png", "--batch-size", "0"])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err
