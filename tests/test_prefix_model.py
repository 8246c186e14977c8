"""CLIP-prefix checkpoints: shape inference, both formats, round trips, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from icg.captioners.mappers import MapperConfig, build_mapper, infer_mapper_config
from icg.captioners.prefix import (
    config_from_state,
    load_prefix_model,
    model_from_state,
    save_prefix_model,
)
from icg.errors import CheckpointError
from tests import fixtures


@pytest.fixture(scope="module")
def tok():
    return fixtures.tiny_tokenizer()


@pytest.fixture(scope="module")
def state(tok):
    return fixtures.tiny_prefix_state(tok)


def logits_for(model, feats: torch.Tensor) -> torch.Tensor:
    tokens = torch.tensor([[5, 9, 11]]).expand(len(feats), -1)
    with torch.no_grad():
        return model(feats, tokens).logits


def test_shapes_are_inferred_from_a_predecessor_state(state):
    cfg = config_from_state(state)
    assert cfg.mapper.kind == "mlp"
    assert (cfg.mapper.clip_dim, cfg.mapper.embed_dim, cfg.prefix_length) == (fixtures.CLIP_DIM, 128, 10)
    assert cfg.mapper.hidden_dim == 640
    assert cfg.lm["n_layer"] == 2 and cfg.lm["n_head"] == 2 and cfg.lm["tie_word_embeddings"]


@pytest.mark.parametrize(
    "mapper",
    [
        MapperConfig("mlp", 24, 64, 4, hidden_dim=100),
        MapperConfig("linear", 24, 64, 4),
        MapperConfig("transformer", 24, 64, 4, clip_length=3, num_layers=2, num_heads=8),
    ],
)
def test_every_mapper_kind_is_recognised(mapper):
    inferred = infer_mapper_config(build_mapper(mapper).state_dict(), 64, num_heads=mapper.num_heads)
    assert inferred == mapper
    out = build_mapper(mapper)(torch.randn(2, 24))
    assert out.shape == (2, 4 * 64)


def test_unknown_mapper_layout_is_refused():
    with pytest.raises(CheckpointError, match="no known mapper layout"):
        infer_mapper_config({"foo.weight": torch.zeros(3, 3)}, 64)


def test_mapper_output_must_fit_the_gpt2_width():
    bad = build_mapper(MapperConfig("linear", 24, 64, 4)).state_dict()
    with pytest.raises(CheckpointError, match="not a multiple of"):
        infer_mapper_config(bad, 100)


def test_not_a_prefix_state_dict_is_refused(state):
    with pytest.raises(CheckpointError, match="not a CLIP-prefix state_dict"):
        config_from_state({k.replace("gpt.", "lm."): v for k, v in state.items()}, source="x.pt")


def test_heads_of_an_unusual_width_must_be_given(state):
    odd = dict(state)
    odd["gpt.transformer.wte.weight"] = torch.zeros(320, 100)
    with pytest.raises(CheckpointError, match="give n_head"):
        config_from_state(odd, source="odd.pt")


def test_predecessor_file_loads_with_weights_only(tmp_path, state, tok):
    path = tmp_path / "old.pt"
    torch.save(state, path)
    model, cfg = load_prefix_model(path)
    reference = model_from_state(state, config_from_state(state), source="memory")
    feats = torch.nn.functional.normalize(torch.randn(2, fixtures.CLIP_DIM), dim=-1)
    assert torch.allclose(logits_for(model, feats), logits_for(reference, feats))


def test_a_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"gpt.x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_prefix_model(path)


def test_project_format_round_trip_keeps_logits(tmp_path, state):
    model, cfg = load_prefix_model_from_state(state)
    folder = save_prefix_model(model, cfg, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["format"] == "icg-clip-prefix"
    again, cfg2 = load_prefix_model(folder)
    assert cfg2 == cfg
    feats = torch.nn.functional.normalize(torch.randn(3, fixtures.CLIP_DIM), dim=-1)
    assert torch.equal(logits_for(model, feats), logits_for(again, feats))
    assert again.gpt.lm_head.weight.data_ptr() == again.gpt.transformer.wte.weight.data_ptr()


def load_prefix_model_from_state(state):
    cfg = config_from_state(state)
    return model_from_state(state, cfg, source="memory"), cfg


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_prefix_model(tmp_path)


def test_config_of_another_format_is_refused(tmp_path, state):
    model, cfg = load_prefix_model_from_state(state)
    folder = save_prefix_model(model, cfg, tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    data["format"] = "something-else"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not an ICG CLIP-prefix config"):
        load_prefix_model(folder)


def test_training_loss_ignores_prefix_and_padding(state):
    model, _ = load_prefix_model_from_state(state)
    feats = torch.nn.functional.normalize(torch.randn(2, fixtures.CLIP_DIM), dim=-1)
    tokens = torch.tensor([[5, 9, 11, 0], [7, 8, 0, 0]])
    labels = tokens.masked_fill(torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.bool), -100)
    out = model(feats, tokens, labels=labels)
    # the same loss computed by hand over the caption positions only
    logits = out.logits[:, model.prefix_length - 1 : -1]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_freeze_lm_leaves_only_the_mapper_trainable(state):
    model, _ = load_prefix_model_from_state(state)
    model.freeze_lm()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"clip_project"}
