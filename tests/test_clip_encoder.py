"""The CLIP encoder on the tiny open_clip model loaded from a local config + weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.clip_encoder import ClipEncoder, image_transform, preprocess_config, spec_from_folder
from icg.config import ClipSpec
from icg.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def encoder(fixture_files):
    return ClipEncoder.load(spec_from_folder(fixture_files["clip_dir"]), device="cpu")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(n)]


def test_image_features_are_unit_float32_and_batch_independent(encoder):
    pics = images(5)
    together = encoder.encode_images(pics, batch_size=5)
    assert together.shape == (5, encoder.feature_dim) and together.dtype == torch.float32
    assert torch.allclose(together.norm(dim=-1), torch.ones(5), atol=1e-5)
    one_by_one = torch.cat([encoder.encode_images([p]) for p in pics])
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_raw_features_on_request(encoder):
    raw = encoder.encode_images(images(2), normalize=False)
    unit = encoder.encode_images(images(2))
    assert torch.allclose(raw / raw.norm(dim=-1, keepdim=True), unit, atol=1e-5)


def test_transform_from_the_config_alone_is_open_clips_own(fixture_files, encoder):
    """``icg dataset`` preprocesses in CPU tasks from ``preprocess_config`` (no weights loaded): the
    pixels equal those of the transform open_clip builds with the model, and the config is plain data."""
    import open_clip

    spec = spec_from_folder(fixture_files["clip_dir"])
    config = preprocess_config(spec)
    assert json.loads(json.dumps(config)) == config  # plain values: they travel to Ray tasks as they are
    _, _, theirs = open_clip.create_model_and_transforms(spec.arch)
    ours = image_transform(config)
    for pic in images(3):
        assert torch.equal(ours(pic), theirs(pic))
        assert torch.equal(encoder.preprocess(pic), theirs(pic))


def test_transform_of_the_default_clip_needs_no_weights():
    config = preprocess_config(ClipSpec(arch="ViT-L-14", pretrained="openai", quick_gelu=True))
    assert config["size"] == 224
    assert image_transform(config)(images(1)[0]).shape == (3, 224, 224)


def test_preprocessed_tensors_are_accepted(encoder):
    pics = images(3)
    assert torch.allclose(encoder.encode_images(encoder.preprocess_images(pics)), encoder.encode_images(pics))


def test_text_features(encoder):
    feats = encoder.encode_texts(["a dog", "a photo of a cat on a sofa", "x"])
    assert feats.shape == (3, encoder.feature_dim)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, encoder.feature_dim)


def test_loaded_weights_are_the_files_weights(fixture_files, encoder):
    from safetensors.torch import load_file

    saved = load_file(fixture_files["clip_weights"])
    for name, tensor in encoder.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_folder_needs_one_config_and_one_weights_file(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ConfigError, match="exactly one open_clip config"):
        spec_from_folder(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ClipEncoder.load(
            ClipSpec(arch="x", config_path=str(tmp_path / "x.json"), weights_path="w"), device="cpu"
        )


def test_config_without_model_keys(tmp_path):
    cfg = tmp_path / "broken-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ConfigError, match="needs embed_dim, vision_cfg, text_cfg"):
        ClipEncoder.load(ClipSpec(arch="broken-clip", config_path=str(cfg), weights_path="w"), device="cpu")


def test_weights_of_another_model_are_refused(fixture_files, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, str(bad))
    spec = spec_from_folder(fixture_files["clip_dir"])
    spec = ClipSpec(
        arch=spec.arch, pretrained=None, quick_gelu=False, config_path=spec.config_path, weights_path=str(bad)
    )
    with pytest.raises(CheckpointError, match="does not fit CLIP"):
        ClipEncoder.load(spec, device="cpu")


def test_unreadable_weights_file(fixture_files, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not tensors")
    spec = spec_from_folder(fixture_files["clip_dir"])
    spec = ClipSpec(arch=spec.arch, pretrained=None, config_path=spec.config_path, weights_path=str(junk))
    with pytest.raises(CheckpointError, match=str(Path(junk).name)):
        ClipEncoder.load(spec, device="cpu")
