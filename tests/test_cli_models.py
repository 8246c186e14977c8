"""``icg models``, ``icg download`` and ``icg import`` through ``icg.cli.main``, end to end on the
fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from icg.cli import main
from icg.models import download
from tests.model_fixtures import fixture_models, install_fake_hub, use_test_registry, write_image
from tests.test_download import check_install_block

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fx():
    return fixture_models()


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("ICG_HOME", str(root))
    return root


def test_import_then_caption_end_to_end(fx, models, tmp_path, capsys):
    assert main(["import", fx["clip_prefix_pt"], "--as", "tiny-cap", "--clip", fx["clip_dir"]]) == 0
    out = capsys.readouterr().out
    assert f"imported tiny-cap (clip-prefix) -> {models / 'tiny-cap'}" in out
    assert "mlp mapper 32 -> 10 x 128" in out and "python -m icg caption --model tiny-cap" in out
    image = write_image(tmp_path / "img.png")
    argv = ["caption", "--model", "tiny-cap", str(image), "--clip", fx["clip_dir"]]
    assert main([*argv, "--tokenizer", fx["tokenizer_dir"], "--json", "--max-new-tokens", "6"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny-cap" and result["source"] == str(image)
    assert result["decoding"]["max_new_tokens"] == 6 and isinstance(result["caption"], str)
    # without a tokenizer, the default one is missing: one line naming the download command
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python -m icg download gpt2-tokenizer" in err


def test_import_refuses_a_mismatch_with_one_line(fx, models, capsys):
    assert main(["import", fx["clip_prefix_pt"], "--as", "clip-prefix-flickr8k"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("icg: error: ") and len(err.splitlines()) == 1
    assert "mapper input 32 vs the CLIP's 768" in err
    assert not (models / "clip-prefix-flickr8k").exists()
    with pytest.raises(SystemExit) as info:  # an argument error: argparse's usage message, exit 2
        main(["import", fx["clip_prefix_pt"], "--as", "x", "--clip", fx["clip_dir"], "--n-head", "0"])
    assert info.value.code == 2 and "--n-head: must be at least 1" in capsys.readouterr().err


def test_import_force_and_vocabulary(fx, models, capsys):
    args = ["import", fx["all_labels_pkl"], fx["encyclopedia_pkl"], "--as", "my-vocab"]
    assert main(args) == 0
    assert (models / "my-vocab" / "vocabulary.json").is_file()
    assert main(args) == 1 and "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--keep-original"]) == 0
    assert "replaced my-vocab (sbg-vocabulary)" in capsys.readouterr().out
    assert (models / "my-vocab" / "all_labels.pkl").is_file()


def test_models_lists_registry_and_own_models(fx, models, capsys):
    assert (
        main(["import", fx["sbg_generator_dir"], "--as", "my-sbg", "--tokenizer", fx["tokenizer_dir"]]) == 0
    )
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models_dir"] == str(models)
    rows = {r["id"]: r for r in data["models"]}
    assert {
        "clip-prefix-flickr8k",
        "sbg-flickr8k",
        "sbg-vocabulary",
        "gpt2-tokenizer",
        "clip-vit-l-14-openai",
    } <= set(rows)
    assert {"clipcap-coco-mlp", "clipcap-conceptual-mlp", "my-sbg"} <= set(rows)
    assert rows["clip-prefix-flickr8k"]["installed"] is False
    assert "clip-prefix-flickr8k/flickr8k_gradient.pt" in rows["clip-prefix-flickr8k"]["missing"]
    assert rows["clip-prefix-flickr8k"]["source"].endswith(
        "Anshler/clip-prefix/resolve/main/flickr8k_gradient.pt"
    )
    vocabulary = rows["sbg-vocabulary"]
    assert vocabulary["expected_bytes"] == 107881 + 51281 and vocabulary["size_bytes"] == 0
    own = rows["my-sbg"]
    assert not own["registered"] and own["kind"] == "sbg" and own["path"] == str(models / "my-sbg")
    # its tokenizer was imported with it; the CLIP and the vocabulary it names are not installed
    assert own["requires"] == ["clip-vit-l-14-openai", "sbg-vocabulary"] and own["installed"] is False
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert f"models folder: {models}" in text and "my-sbg" in text and "(your model)" in text
    assert "manual download, then: python -m icg import FILE --as clipcap-coco-mlp" in text


@pytest.mark.parametrize("how", ["ICG_OFFLINE", "unreachable"])
def test_download_fails_fast_with_one_clear_message(models, monkeypatch, capsys, how):
    calls = install_fake_hub(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if how == "ICG_OFFLINE":
        monkeypatch.setenv("ICG_OFFLINE", "1")
    else:
        monkeypatch.setattr(download, "probe_origin", lambda origin, timeout=0: "unreachable (no route)")
    assert main(["download", "clip-prefix-flickr8k", "--no-deps", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "downloading 1 model(s)" in captured.out and "in total" in captured.out
    headline = captured.err.splitlines()[0]
    assert headline.startswith("icg: error: ") and "'clip-prefix-flickr8k'" in headline
    check_install_block(
        captured.err,
        [
            "https://huggingface.co/Anshler/clip-prefix/resolve/main/flickr8k_gradient.pt",
            "https://www.mediafire.com/file/qof8qa7odm4dfck/flickr8k_prefix-030.pt/file",
        ],
        "python -m icg import FILE --as clip-prefix-flickr8k",
    )
    assert [c for c in calls if not c["local_files_only"]] == []  # never the hub's slow retry loop
    assert not (models / "clip-prefix-flickr8k").exists()


def test_download_with_requirements_converts(fx, models, tmp_path, monkeypatch, capsys):
    use_test_registry(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    install_fake_hub(monkeypatch)
    assert main(["download", "tiny-prefix", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "downloading 3 model(s)" in out and "tiny-clip, tiny-tokenizer, tiny-prefix" in out
    assert f"ok: tiny-prefix -> {models / 'tiny-prefix'}" in out
    assert sorted(p.name for p in (models / "tiny-prefix").iterdir() if p.is_file()) == [
        "config.json",
        "model.safetensors",
    ]
    assert main(["download", "tiny-prefix"]) == 0
    assert "already installed" in capsys.readouterr().out
    image = write_image(tmp_path / "img.png")
    assert main(["caption", "--model", "tiny-prefix", str(image)]) == 0
    assert capsys.readouterr().out.strip()


def test_unknown_id_and_manual_model(models, capsys):
    assert main(["download", "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["download", "clipcap-coco-mlp", "--no-deps"]) == 1
    err = capsys.readouterr().err
    assert (
        "can't be downloaded automatically" in err
        and "python -m icg import FILE --as clipcap-coco-mlp" in err
    )


def test_real_offline_download_from_a_subprocess_is_fast(tmp_path):
    """As a person runs it here (no network, no fake hub): fails fast, exit 1, the clear message."""
    env = {
        "PATH": "/usr/bin:/bin",
        "ICG_HOME": str(tmp_path / "m"),
        "HOME": str(tmp_path),
        "ICG_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "icg", "download", "sbg-vocabulary"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # "fast": no retries against an unreachable host (subprocess.run raises past it)
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    base = "https://raw.githubusercontent.com/Anshler/ICG_sd_extension/"
    urls = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith(base)]
    assert [url.rsplit("/", 1)[-1] for url in urls] == ["all_labels.pkl", "encyclopedia.pkl"]
    check_install_block(result.stderr, urls, "python -m icg import FOLDER --as sbg-vocabulary")


def test_download_probes_again_after_the_network_came_back(models, tmp_path, monkeypatch, capsys):
    use_test_registry(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    install_fake_hub(monkeypatch)  # the hub answers now
    download._mark_unreachable(download.hf_endpoint(), "unreachable (down a moment ago)")
    assert main(["download", "tiny-clip", "--quiet"]) == 0
    assert f"ok: tiny-clip -> {models / 'tiny-clip'}" in capsys.readouterr().out
