"""Importing and converting models: shape checks, the conversion round trip, atomic installs, and the
conversion of downloaded originals."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from icg.errors import CheckpointError, ConfigError, DownloadError, ModelNotFound, UnsafePickleError
from icg.models import download, importer
from icg.models.registry import load_registry
from tests.model_fixtures import fixture_models, install_fake_hub, use_test_registry


@pytest.fixture(scope="module")
def fx():
    return fixture_models()


@pytest.fixture(scope="module")
def prefix_state(fx):
    return torch.load(fx["clip_prefix_pt"], map_location="cpu", weights_only=True)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


# ------------------------------------------------------------------------------------------ CLIP-prefix
def test_predecessor_checkpoint_is_converted(fx, tmp_path):
    result = importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"])
    folder = tmp_path / "mine"
    assert result.folder == folder and result.kind == "clip-prefix" and not result.replaced
    assert result.files == ("config.json", "model.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "icg-clip-prefix"
    assert config["mapper"]["kind"] == "mlp" and config["mapper"]["clip_dim"] == 32
    assert config["clip"]["weights_path"] == str(Path(fx["clip_weights"]).resolve())
    assert config["normalize"] is True and config["tokenizer"] == "gpt2-tokenizer"
    assert "mlp mapper 32 -> 10 x 128" in result.details
    assert _leftovers(tmp_path) == []
    # the usual permissions, not a temporary file's private 0600
    probe = tmp_path / "probe"
    probe.touch()
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_conversion_round_trip_gives_identical_logits(fx, prefix_state, tmp_path):
    from icg.captioners.prefix import load_prefix_model

    before, _ = load_prefix_model(fx["clip_prefix_pt"])
    importer.import_model([fx["clip_prefix_pt"]], "rt", tmp_path, clip=fx["clip_dir"])
    after, cfg = load_prefix_model(tmp_path / "rt")
    assert cfg.prefix_length == 10
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 32, generator=generator)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    tokens = torch.randint(0, 300, (3, 7), generator=generator)
    with torch.inference_mode():
        assert torch.equal(before.prefix(feats), after.prefix(feats))
        assert torch.equal(before(feats, tokens).logits, after(feats, tokens).logits)
    saved = after.state_dict()
    for key, value in prefix_state.items():
        if key.startswith("gpt.") and key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(saved[key], value), key


def test_registry_facts_apply_and_mismatched_clip_is_refused(fx, tmp_path):
    # clip-prefix-flickr8k is registered on ViT-L-14 (768-dim features); the fixture's mapper takes 32
    with pytest.raises(CheckpointError) as info:
        importer.import_model([fx["clip_prefix_pt"]], "clip-prefix-flickr8k", tmp_path)
    text = str(info.value)
    assert "mapper input 32 vs the CLIP's 768" in text and "clip-prefix-tiny.pt" in text
    assert not (tmp_path / "clip-prefix-flickr8k").exists() and _leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match="contradicts"):
        importer.import_model(
            [fx["clip_prefix_pt"]], "clip-prefix-flickr8k", tmp_path, clip="ViT-B-32/openai"
        )
    with pytest.raises(ConfigError, match="is a clip-prefix in the model registry"):
        importer.import_model([fx["clip_prefix_pt"]], "clip-prefix-flickr8k", tmp_path, kind="sbg")


def test_registry_id_import_writes_registry_facts(fx, tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    result = importer.import_model([fx["clip_prefix_pt"]], "tiny-prefix", tmp_path / "models")
    config = json.loads((result.folder / "config.json").read_text())
    assert config["clip"] == {"arch": "icg-tiny-clip", "pretrained": "tiny", "quick_gelu": False}
    assert config["normalize"] is False  # the test registry says so
    assert config["decoding"]["max_new_tokens"] == 9
    assert config["tokenizer"] == "tiny-tokenizer"
    assert download.present(load_registry()["tiny-prefix"], tmp_path / "models")


def test_unknown_clip_width_needs_the_clip_named(fx, tmp_path):
    with pytest.raises(ConfigError) as info:
        importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path)
    assert "32-dim CLIP features" in str(info.value) and "--clip" in str(info.value)
    with pytest.raises(CheckpointError, match="mapper input 32 vs the CLIP's 512"):
        importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip="ViT-B-32/openai")
    with pytest.raises(ConfigError, match="does not know the CLIP architecture"):
        importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip="NoSuchNet/openai")


def test_mapper_output_must_fit_the_gpt2_width(fx, prefix_state, tmp_path):
    state = dict(prefix_state)
    state["clip_project.model.2.weight"] = torch.zeros(10 * 128 + 64, 640)
    state["clip_project.model.2.bias"] = torch.zeros(10 * 128 + 64)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        importer.import_model([bad], "bad", tmp_path / "models", clip=fx["clip_dir"])
    assert "mapper output size 1344 is not a multiple of the GPT-2 width 128" in str(info.value)
    assert "bad.pt" in str(info.value)


def test_registered_prefix_length_is_enforced(fx, prefix_state, tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    state = dict(prefix_state)
    state["clip_project.model.2.weight"] = torch.zeros(5 * 128, 640)
    state["clip_project.model.2.bias"] = torch.zeros(5 * 128)
    short = tmp_path / "short.pt"
    torch.save(state, short)
    with pytest.raises(CheckpointError, match="makes 5 prefix tokens .* registered with 10"):
        importer.import_model([short], "tiny-prefix", tmp_path / "models")


def test_heads_must_divide_the_width(fx, tmp_path):
    with pytest.raises(ConfigError, match="3 attention heads do not divide the GPT-2 width 128"):
        importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"], n_head=3)


def test_not_a_state_dict_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"gpt.x": torch.zeros(2), "other": torch.zeros(1)}, junk)
    with pytest.raises(CheckpointError, match="not a CLIP-prefix state_dict"):
        importer.import_model([junk], "junk", tmp_path / "m", kind="clip-prefix", clip="ViT-B-32/openai")


def test_ids_are_checked(fx, tmp_path):
    for bad in ("Mine", "../x", "cache", ".hidden", "a/b"):
        with pytest.raises(ConfigError, match="can't be a model id"):
            importer.import_model([fx["clip_prefix_pt"]], bad, tmp_path)
    with pytest.raises(ModelNotFound, match="no such file"):
        importer.import_model([tmp_path / "missing.pt"], "x", tmp_path)


def test_existing_folder_needs_force_and_a_failed_import_keeps_it(fx, tmp_path, prefix_state):
    importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"])
    before = (tmp_path / "mine" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already exists .*--force"):
        importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"])
    # a forced import that fails leaves the old model untouched
    state = dict(prefix_state)
    state["clip_project.model.0.weight"] = torch.zeros(640, 48)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError):
        importer.import_model([bad], "mine", tmp_path, clip=fx["clip_dir"], force=True)
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == before
    assert _leftovers(tmp_path) == []
    result = importer.import_model(
        [fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"], force=True, keep_original=True
    )
    assert result.replaced
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "clip-prefix-tiny.pt",
        "config.json",
        "model.safetensors",
    ]
    assert _leftovers(tmp_path) == []


def test_an_empty_folder_is_not_a_model(fx, tmp_path):
    (tmp_path / "mine").mkdir()
    importer.import_model([fx["clip_prefix_pt"]], "mine", tmp_path, clip=fx["clip_dir"])
    assert (tmp_path / "mine" / "config.json").is_file()


def test_an_icg_folder_imports_again_with_new_facts(fx, tmp_path):
    importer.import_model([fx["clip_prefix_pt"]], "a", tmp_path, clip=fx["clip_dir"])
    importer.import_model([tmp_path / "a"], "b", tmp_path, normalize=False)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["normalize"] is False and config["clip"]["arch"] == "icg-tiny-clip"
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (
        tmp_path / "a" / "model.safetensors"
    ).read_bytes()


# ------------------------------------------------------------------------------------------ SBG
def test_sbg_folder_is_copied_with_its_settings(fx, tmp_path):
    result = importer.import_model([fx["sbg_generator_dir"]], "my-sbg", tmp_path, clip="ViT-B-32/openai")
    assert result.kind == "sbg"
    folder = tmp_path / "my-sbg"
    assert {"config.json", "model.safetensors", "generation_config.json", "icg.json"} <= set(result.files)
    meta = json.loads((folder / "icg.json").read_text())
    assert meta["format"] == "icg-sbg"
    assert meta["clip"] == {"arch": "ViT-B-32", "pretrained": "openai", "quick_gelu": True}
    assert meta["vocabulary"] == "sbg-vocabulary" and meta["tokenizer"] == "gpt2-tokenizer"
    assert meta["decoding"]["num_candidates"] == 5
    src = Path(fx["sbg_generator_dir"]) / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == src.read_bytes()


def test_sbg_registry_id_takes_registry_facts(fx, tmp_path):
    importer.import_model([fx["sbg_generator_dir"]], "sbg-flickr8k", tmp_path)
    meta = json.loads((tmp_path / "sbg-flickr8k" / "icg.json").read_text())
    assert meta["clip"]["arch"] == "ViT-L-14" and meta["normalize"] is True
    assert download.present(load_registry()["sbg-flickr8k"], tmp_path)


def test_sbg_config_that_does_not_fit_the_weights_is_refused(fx, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(fx["sbg_generator_dir"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["n_embd"] = 256
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json says n_embd 256, but the weights are 128 wide"):
        importer.import_model([folder], "x", tmp_path / "models")
    assert not (tmp_path / "models" / "x").exists()


def test_sbg_torch_weights_and_lone_files(fx, tmp_path):
    from safetensors.torch import load_file

    original = load_file(str(Path(fx["sbg_generator_dir"]) / "model.safetensors"))
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(Path(fx["sbg_generator_dir"]) / "config.json", folder)
    torch.save(
        {**original, "lm_head.weight": original["transformer.wte.weight"]}, folder / "pytorch_model.bin"
    )
    importer.import_model([folder], "from-bin", tmp_path / "models")
    converted = load_file(str(tmp_path / "models" / "from-bin" / "model.safetensors"))
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    # a lone weights file: the GPT-2 config is sized from the tensors
    result = importer.import_model(
        [Path(fx["sbg_generator_dir"]) / "model.safetensors"], "lone", tmp_path / "models", kind="sbg"
    )
    config = json.loads((result.folder / "config.json").read_text())
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["vocab_size"]) == (128, 2, 2, 320)
    assert config["model_type"] == "gpt2"


# ------------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_from_a_folder_or_two_files_in_any_order(fx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(fx["all_labels_pkl"], src)
    shutil.copy(fx["encyclopedia_pkl"], src)
    result = importer.import_model([src], "v1", tmp_path / "m")
    assert result.kind == "sbg-vocabulary" and result.files == ("vocabulary.json",)
    data = json.loads((tmp_path / "m" / "v1" / "vocabulary.json").read_text())
    assert data["format"] == "icg-sbg-vocabulary" and data["labels"][3] == ["dog", "NOUN", 600]
    importer.import_model(
        [fx["encyclopedia_pkl"], fx["all_labels_pkl"]], "v2", tmp_path / "m", keep_original=True
    )
    v2 = tmp_path / "m" / "v2"
    assert json.loads((v2 / "vocabulary.json").read_text()) == data
    assert sorted(p.name for p in v2.iterdir()) == ["all_labels.pkl", "encyclopedia.pkl", "vocabulary.json"]
    importer.import_model([v2 / "vocabulary.json"], "v3", tmp_path / "m")
    assert json.loads((tmp_path / "m" / "v3" / "vocabulary.json").read_text()) == data


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_vocabulary_pickle_is_refused_and_nothing_installed(fx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(fx["all_labels_pkl"], src)
    (src / "encyclopedia.pkl").write_bytes(pickle.dumps({"scenery": _Evil()}))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        importer.import_model([src], "evil", tmp_path / "m")
    assert not (tmp_path / "m" / "evil").exists() and _leftovers(tmp_path / "m") == []


# ------------------------------------------------------------------------------------------ tokenizer, CLIP
def test_registry_tokenizer_and_clip_imports_check_their_files(fx, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="gpt2-tokenizer needs vocab.json, merges.txt"):
        importer.import_model([fx["tokenizer_dir"]], "gpt2-tokenizer", tmp_path)
    # the tiny CLIP's 32-dim weights are not ViT-B-32's 512
    with pytest.raises(CheckpointError, match="32-dim CLIP features, but ViT-B-32/openai has 512"):
        importer.import_model([fx["clip_bin"]], "clip-vit-b-32-openai", tmp_path)
    # a .safetensors state dict is accepted as a CLIP file too, and checked the same way
    with pytest.raises(CheckpointError, match="32-dim CLIP features, but ViT-B-32/openai has 512"):
        importer.import_model([fx["clip_weights"]], "clip-vit-b-32-openai", tmp_path)
    use_test_registry(monkeypatch, tmp_path)
    result = importer.import_model([fx["tokenizer_dir"]], "tiny-tokenizer", tmp_path / "m")
    assert "tokens" in result.details
    importer.import_model([fx["clip_bin"]], "tiny-clip", tmp_path / "m")
    assert download.present(load_registry()["tiny-clip"], tmp_path / "m")


def test_detect_import_kind(fx, tmp_path):
    detect = importer.detect_import_kind
    assert detect([Path(fx["clip_prefix_pt"])]) == "clip-prefix"
    assert detect([Path(fx["sbg_generator_dir"])]) == "sbg"
    assert detect([Path(fx["sbg_generator_dir"]) / "model.safetensors"]) == "sbg"
    assert detect([Path(fx["all_labels_pkl"]), Path(fx["encyclopedia_pkl"])]) == "sbg-vocabulary"
    with pytest.raises(ConfigError, match="can't tell what this folder holds"):
        detect([tmp_path])


# ------------------------------------------------------------------------------------------ downloads
def test_downloaded_checkpoint_is_converted_once_and_the_original_deleted(fx, tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    calls = install_fake_hub(monkeypatch)
    entry = load_registry()["tiny-prefix"]
    root = tmp_path / "models"
    folder = download.download_model(entry, root, offline=False, progress=False)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model.safetensors",
    ]
    assert download.present(entry, root)
    assert download.missing_downloads(entry, root) == ["tiny.pt"]  # the original is gone
    config = json.loads((folder / "config.json").read_text())
    assert config["normalize"] is False and config["clip"]["arch"] == "icg-tiny-clip"
    assert [c["filename"] for c in calls] == ["tiny.pt"]
    download.download_model(entry, root, offline=False, progress=False)  # present: nothing happens
    assert len(calls) == 1


def test_keep_original_and_local_originals_are_converted_offline(fx, tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    calls = install_fake_hub(monkeypatch)
    entries = load_registry()
    root = tmp_path / "models"
    download.download_models(["tiny-vocabulary"], root, offline=False, progress=False, keep_original=True)
    assert sorted(p.name for p in (root / "tiny-vocabulary").iterdir() if p.is_file()) == [
        "all_labels.pkl",
        "encyclopedia.pkl",
        "vocabulary.json",
    ]
    # originals a person copied in are converted without any network, even offline
    (root / "tiny-prefix").mkdir(parents=True)
    shutil.copy(fx["clip_prefix_pt"], root / "tiny-prefix" / "tiny.pt")
    assert download.ready_to_convert(entries["tiny-prefix"], root)
    calls.clear()
    download.download_model(entries["tiny-prefix"], root, offline=True)
    assert calls == [] and download.present(entries["tiny-prefix"], root)
    assert not (root / "tiny-prefix" / "tiny.pt").exists()


def test_a_failed_conversion_says_what_to_do(fx, tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    root = tmp_path / "models"
    (root / "tiny-prefix").mkdir(parents=True)
    torch.save({"gpt.x": torch.zeros(1)}, root / "tiny-prefix" / "tiny.pt")
    with pytest.raises(DownloadError) as info:
        download.download_model(load_registry()["tiny-prefix"], root, offline=True)
    text = str(info.value)
    assert "could not be converted" in text and "Delete tiny.pt" in text
    assert (root / "tiny-prefix" / "tiny.pt").exists()
    assert not download.present(load_registry()["tiny-prefix"], root)
    assert [p.name for p in (root / "tiny-prefix").iterdir()] == ["tiny.pt"]
