"""Resolving model names: registry ids in the models folder, paths, users' own models, CLIPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icg.config import ClipSpec
from icg.errors import CheckpointError, ConfigError, ModelNotFound
from icg.models import download, importer, loading
from icg.models.manager import ModelManager, RuntimeConfig
from icg.pipeline import caption_images
from tests.model_fixtures import TINY_CLIP, fixture_models, install_fake_hub, use_test_registry, write_image


@pytest.fixture(scope="module")
def fx():
    return fixture_models()


@pytest.fixture
def registry(monkeypatch, tmp_path):
    use_test_registry(monkeypatch, tmp_path)


def _manager(root: Path, **kw) -> ModelManager:
    return ModelManager(RuntimeConfig(device="cpu", models_dir=str(root), **kw))


# ------------------------------------------------------------------------------------------ registry ids
def test_registry_id_downloaded_converted_and_captioned(fx, registry, tmp_path, monkeypatch):
    install_fake_hub(monkeypatch)
    root = tmp_path / "models"
    download.download_models(
        ["tiny-prefix", "tiny-clip", "tiny-tokenizer"], root, offline=False, progress=False
    )
    manager = _manager(root)
    resolved = loading.resolve_model("tiny-prefix", manager)
    assert (resolved.kind, resolved.path, resolved.entry.id) == (
        "clip-prefix",
        root / "tiny-prefix",
        "tiny-prefix",
    )
    captioner = manager.captioner("tiny-prefix")
    # registry facts: raw features, decoding defaults, the registry's CLIP file (no open_clip download)
    assert captioner.normalize is False and captioner.decoding.max_new_tokens == 9
    assert captioner.model_id == "tiny-prefix"
    assert captioner.clip_spec.weights_path == str(root / "tiny-clip" / "open_clip_pytorch_model.bin")
    assert captioner.clip_spec.arch == "icg-tiny-clip"
    [result] = caption_images(manager, "tiny-prefix", [write_image(tmp_path / "a.png")])
    assert result.model == "tiny-prefix" and isinstance(result.caption, str)


def test_missing_registry_model_names_the_download_command(fx, registry, tmp_path):
    manager = _manager(tmp_path / "models")
    with pytest.raises(ModelNotFound) as info:
        manager.captioner("tiny-prefix")
    text = str(info.value)
    assert "'tiny-prefix'" in text and "python -m icg download tiny-prefix" in text
    assert str(tmp_path / "models") in text
    with pytest.raises(ModelNotFound) as info:
        manager.captioner("tiny-manual")
    text = str(info.value)
    assert "python -m icg import FILE --as tiny-manual" in text and "https://example.invalid/page" in text


def test_allow_download_fetches_on_first_use(fx, registry, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the conftest's; downloads are allowed here
    calls = install_fake_hub(monkeypatch)
    root = tmp_path / "models"
    manager = _manager(root, allow_download=True)
    captioner = manager.captioner("tiny-prefix")
    assert captioner.model_id == "tiny-prefix"
    assert {c["filename"] for c in calls} >= {"tiny.pt", "tokenizer.json", "open_clip_pytorch_model.bin"}
    assert download.present(loading._entry("tiny-prefix"), root)


def test_hub_cache_is_used_without_permission_to_download(fx, registry, tmp_path, monkeypatch):
    calls = install_fake_hub(monkeypatch, cached=True)
    root = tmp_path / "models"
    captioner = _manager(root).captioner("tiny-prefix")
    assert captioner.normalize is False
    assert calls and all(c["local_files_only"] for c in calls)  # only cache look-ups


def test_originals_in_the_folder_are_converted_on_first_use(fx, registry, tmp_path, monkeypatch):
    install_fake_hub(monkeypatch)
    root = tmp_path / "models"
    download.download_models(["tiny-clip", "tiny-tokenizer"], root, offline=False, progress=False)
    (root / "tiny-prefix").mkdir()
    (root / "tiny-prefix" / "tiny.pt").write_bytes(Path(fx["clip_prefix_pt"]).read_bytes())
    monkeypatch.setenv("ICG_OFFLINE", "1")
    assert _manager(root).captioner("tiny-prefix").model_id == "tiny-prefix"
    assert (root / "tiny-prefix" / "config.json").is_file() and not (
        root / "tiny-prefix" / "tiny.pt"
    ).exists()


def test_not_a_captioner(fx, registry, tmp_path):
    root = tmp_path / "models"
    importer.import_model([fx["all_labels_pkl"], fx["encyclopedia_pkl"]], "my-vocab", root)
    manager = _manager(root)
    with pytest.raises(ModelNotFound, match="is a sbg-vocabulary, not a captioning model"):
        loading.resolve_model("tiny-vocabulary", manager)
    with pytest.raises(ModelNotFound, match="holds a sbg-vocabulary, not a captioning model"):
        loading.resolve_model("my-vocab", manager)
    with pytest.raises(ModelNotFound, match="python -m icg models"):
        loading.resolve_model("nothing-like-this", manager)


# ------------------------------------------------------------------------------------------ paths, own models
def test_paths_and_users_own_models(fx, tmp_path):
    root = tmp_path / "models"
    importer.import_model([fx["clip_prefix_pt"]], "mine", root, clip=fx["clip_dir"])
    manager = _manager(root, tokenizer=fx["tokenizer_dir"])
    by_path = loading.resolve_model(fx["clip_prefix_pt"], manager)
    assert (by_path.kind, by_path.path, by_path.entry) == ("clip-prefix", Path(fx["clip_prefix_pt"]), None)
    by_folder = loading.resolve_model(str(root / "mine"), manager)
    by_name = loading.resolve_model("mine", manager)
    assert by_folder.path == by_name.path == root / "mine" and by_name.kind == "clip-prefix"
    own = manager.captioner("mine")
    assert own.model_id == "mine" and own.clip_spec.arch == "icg-tiny-clip"
    assert own.clip_spec.weights_path == str(Path(fx["clip_weights"]).resolve())
    # the predecessor file directly: same weights, so the same caption
    image = write_image(tmp_path / "b.png", seed=3)
    manager = _manager(root, tokenizer=fx["tokenizer_dir"], clip=fx["clip_dir"])
    direct = caption_images(manager, fx["clip_prefix_pt"], [image])[0].caption
    imported = caption_images(manager, "mine", [image])[0].caption
    assert direct == imported


def test_sbg_settings_from_the_registry_and_icg_json(fx, registry, tmp_path, monkeypatch):
    install_fake_hub(monkeypatch)
    root = tmp_path / "models"
    download.download_models(["tiny-sbg"], root, offline=False, progress=False)
    manager = _manager(root)
    resolved = loading.resolve_model("tiny-sbg", manager)
    assert resolved.kind == "sbg" and resolved.path == root / "tiny-sbg"
    assert resolved.meta["clip"] == TINY_CLIP and resolved.meta["normalize"] is True
    assert resolved.meta["vocabulary"] == "tiny-vocabulary" and resolved.meta["tokenizer"] == "tiny-tokenizer"
    assert resolved.meta["decoding"]["num_candidates"] == 5
    importer.import_model(
        [fx["sbg_generator_dir"]],
        "my-sbg",
        root,
        clip=fx["clip_dir"],
        tokenizer=fx["tokenizer_dir"],
        vocabulary="tiny-vocabulary",
        normalize=False,
    )
    own = loading.resolve_model("my-sbg", manager)
    assert own.meta["clip"]["weights_path"] == str(Path(fx["clip_weights"]).resolve())
    assert own.meta["tokenizer"] == str(Path(fx["tokenizer_dir"]).resolve())
    assert own.meta["vocabulary"] == "tiny-vocabulary" and own.meta["normalize"] is False
    # a GPT-2 folder that ships its tokenizer uses it
    folder = tmp_path / "with-tok"
    folder.mkdir()
    for src in (*Path(fx["sbg_generator_dir"]).iterdir(), *Path(fx["tokenizer_dir"]).iterdir()):
        (folder / src.name).write_bytes(src.read_bytes())
    assert loading.resolve_model(str(folder), manager).meta["tokenizer"] == str(folder)


def test_bad_icg_json_is_named(fx, tmp_path):
    root = tmp_path / "models"
    importer.import_model([fx["sbg_generator_dir"]], "s", root)
    meta = json.loads((root / "s" / "icg.json").read_text())
    (root / "s" / "icg.json").write_text(json.dumps({**meta, "colour": "red"}))
    with pytest.raises(Exception, match="icg.json: unknown setting"):
        loading.resolve_model("s", _manager(root))


def test_vocabulary_resolution(fx, registry, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    install_fake_hub(monkeypatch)
    root = tmp_path / "models"
    manager = _manager(root, allow_download=True)
    path = loading.resolve_vocabulary("tiny-vocabulary", manager)
    assert path == root / "tiny-vocabulary" / "vocabulary.json" and path.is_file()
    assert not (root / "tiny-vocabulary" / "all_labels.pkl").exists()
    importer.import_model([fx["all_labels_pkl"], fx["encyclopedia_pkl"]], "my-vocab", root)
    assert loading.resolve_vocabulary("my-vocab", manager) == root / "my-vocab" / "vocabulary.json"
    assert (
        loading.resolve_vocabulary(str(root / "my-vocab"), manager) == root / "my-vocab" / "vocabulary.json"
    )
    with pytest.raises(ModelNotFound, match="not an SBG vocabulary"):
        loading.resolve_vocabulary("tiny-clip", manager)


# ------------------------------------------------------------------------------------------ CLIP
def test_registry_clip_loads_from_its_file_with_quick_gelu(tmp_path):
    manager = _manager(tmp_path)
    with pytest.raises(ModelNotFound) as info:
        loading.resolve_clip(None, manager)
    assert "python -m icg download clip-vit-l-14-openai" in str(info.value)
    weights = tmp_path / "clip-vit-l-14-openai" / "open_clip_pytorch_model.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"placeholder")
    expected = ClipSpec(arch="ViT-L-14", pretrained="openai", quick_gelu=True, weights_path=str(weights))
    assert loading.resolve_clip(None, manager) == expected
    assert (
        loading.resolve_clip({"arch": "ViT-L-14", "pretrained": "openai", "quick_gelu": False}, manager)
        == expected
    )
    assert loading.resolve_clip("clip-vit-l-14-openai", manager) == expected
    assert loading.resolve_clip("ViT-L-14/openai", manager) == expected
    # not in the registry: open_clip's business
    other = loading.resolve_clip("ViT-B-16/laion2b_s34b_b88k", manager)
    assert other == ClipSpec(arch="ViT-B-16", pretrained="laion2b_s34b_b88k", quick_gelu=False)


def test_clip_override_and_parse(fx, tmp_path):
    manager = _manager(tmp_path, clip=fx["clip_dir"])
    spec = loading.resolve_clip({"arch": "ViT-L-14", "pretrained": "openai"}, manager)
    assert spec.arch == "icg-tiny-clip" and spec.weights_path.endswith("icg-tiny-clip.safetensors")
    assert loading.parse_clip("ViT-B-32/openai") == {
        "arch": "ViT-B-32",
        "pretrained": "openai",
        "quick_gelu": True,
    }
    with pytest.raises(ConfigError, match="ARCH/PRETRAINED"):
        loading.parse_clip("ViT-B-32")
    with pytest.raises(ModelNotFound, match="not found"):
        loading.resolve_clip({"arch": "x", "weights_path": str(tmp_path / "gone.bin")}, _manager(tmp_path))


def test_describe_folder(fx, tmp_path):
    importer.import_model([fx["clip_prefix_pt"]], "p", tmp_path, clip=fx["clip_dir"])
    kind, text = loading.describe_folder(tmp_path / "p")
    assert kind == "clip-prefix" and "mlp mapper" in text and "GPT-2 2 layers" in text
    (tmp_path / "p" / "model.safetensors").unlink()
    with pytest.raises(Exception, match="without model.safetensors"):
        loading.describe_folder(tmp_path / "p")


def test_model_modules_import_cheaply():
    import subprocess
    import sys

    code = (
        "import sys, icg.models.importer, icg.models.loading, icg.models.manager, icg.commands.models;"
        "bad = [m for m in ('torch', 'transformers', 'open_clip', 'huggingface_hub', 'safetensors')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_relative_paths_in_icg_json_are_relative_to_the_model_folder(tmp_path):
    import json

    from icg.sbg.kind import read_sbg_meta

    (tmp_path / "icg.json").write_text(
        json.dumps({"format": "icg-sbg", "version": 1, "vocabulary": "./vocab/vocabulary.json"})
    )
    meta = read_sbg_meta(tmp_path)
    assert meta["vocabulary"] == str((tmp_path / "vocab" / "vocabulary.json").resolve())


def test_a_tokenizer_saved_by_a_newer_transformers_still_loads(tmp_path):
    """transformers 5 saves ``tokenizer_class: TokenizersBackend``, unknown to the WebUI's 4.30: the folder
    is read as the byte-level BPE it is, and encodes exactly as the tokenizer that was saved."""
    from icg.tiny import tiny_tokenizer

    saved = tiny_tokenizer(tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "TokenizerFromTheFuture"
    config_file.write_text(json.dumps(config), encoding="utf-8")

    loaded = loading.open_tokenizer(tmp_path / "tok")
    text = "a black jacket on two men"
    assert loaded(text)["input_ids"] == saved(text)["input_ids"]
    assert loaded.eos_token == "<|endoftext|>"


def test_a_folder_without_a_tokenizer_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a loadable tokenizer folder"):
        loading.open_tokenizer(tmp_path / "empty")
