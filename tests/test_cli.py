"""The command line as a user meets it: captions printed, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icg.cli import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def tiny_args(fixture_files, tmp_path):
    return [
        "--model",
        fixture_files["clip_prefix_pt"],
        "--clip",
        fixture_files["clip_dir"],
        "--tokenizer",
        fixture_files["tokenizer_dir"],
        "--device",
        "cpu",
        "--models-dir",
        str(tmp_path),
    ]


def test_caption_prints_one_caption(image, tiny_args, capsys):
    assert main(["caption", image, *tiny_args, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith(".")


def test_caption_json_for_several_images(image, tiny_args, capsys, tmp_path):
    second = tmp_path / "second.jpg"
    Image.open(image).convert("RGB").save(second)
    assert (
        main(
            [
                "caption",
                image,
                str(second),
                *tiny_args,
                "--json",
                "--strategy",
                "beam",
                "--beams",
                "2",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == [image, str(second)]
    for r in results:
        assert r["caption"] and r["decoding"]["strategy"] == "beam"
        assert len(r["candidates"]) == 2 and r["score_kind"] == "logprob"
        assert set(r["timings"]) >= {"load", "encode", "decode"}


def test_missing_image_is_one_line_error(tiny_args, capsys, tmp_path):
    missing = tmp_path / "nope.png"
    assert main(["caption", str(missing), *tiny_args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.png" in err[0] and err[0].startswith("icg: error:")


def test_not_an_image_is_one_line_error(tiny_args, capsys, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    assert main(["caption", str(text), *tiny_args]) == 1
    err = capsys.readouterr().err
    assert "notes.png" in err and "Traceback" not in err


def test_unknown_model_is_one_line_error(image, tmp_path, capsys):
    assert main(["caption", image, "--model", "no-such-model", "--models-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and "Traceback" not in err


def test_registry_model_not_installed_names_the_download_command(image, tmp_path, capsys):
    assert main(["caption", image, "--model", "clip-prefix-flickr8k", "--models-dir", str(tmp_path)]) == 1
    assert "python -m icg download clip-prefix-flickr8k" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["caption"])
    assert exc.value.code == 2


def test_doctor_runs_offline(tmp_path, capsys):
    assert main(["doctor", "--device", "cpu", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smoke caption on tiny random models: ok" in out and str(tmp_path) in out


@pytest.mark.slow  # a Python process that imports torch and builds every tiny model
def test_fixtures_module_writes_its_manifest(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tests.fixtures", str(tmp_path / "fx")],
        capture_output=True,
        text=True,
        check=True,
    )
    manifest = json.loads(out.stdout)
    for key, path in manifest.items():
        assert Path(path).exists(), key
