"""``ClipEncoder.encode_texts`` runs each batch only as wide as its longest prompt: the features must equal
the model's own full-width ``encode_text`` (tokens padded to 77), and the model must be left intact."""

from __future__ import annotations

import pytest
import torch

from icg.clip_encoder import ClipEncoder, _trimmed_text_context
from tests import fixtures

TEXTS = [
    "",
    "a",
    "picture of a dog.",
    "a crowd of people watch a concert at night while two old men sell hot drinks from a small red cart "
    "near the entrance of the park, and a child waves at a passing bus full of tourists who take "
    "pictures of the lights, the stage, the musicians and the tall trees that line the old stone "
    # more than 77 tokens: truncated at the context length
    "road down to the river where boats wait for the last ferry of the evening to carry them home.",
    "wearing blue jacket.",
    "activity is playing.",
    "picture of landscape and people and animal.",
    "two boys",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> ClipEncoder:
    spec = fixtures.tiny_clip_spec(tmp_path_factory.mktemp("clip"))
    return ClipEncoder.load(spec, device="cpu", dtype=torch.float32)


def _full_width(clip: ClipEncoder, texts: list[str]) -> torch.Tensor:
    tokens = clip.tokenize(texts)
    assert tokens.shape[1] == 77
    with torch.inference_mode():
        feats = clip.model.encode_text(tokens).float()
    return feats / feats.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("batch_size", [256, 3, 1])
def test_trimmed_features_equal_the_full_width_ones(clip, batch_size):
    trimmed = clip.encode_texts(TEXTS, batch_size=batch_size)
    full = _full_width(clip, TEXTS)
    assert trimmed.shape == (len(TEXTS), clip.feature_dim)
    assert trimmed.dtype == torch.float32
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
    assert torch.allclose(trimmed.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # distinct texts give distinct features: the comparison is not between constants
    assert torch.cdist(full, full).add(torch.eye(len(TEXTS))).min() > 1e-3


def test_batches_run_only_as_wide_as_their_longest_text(clip, monkeypatch):
    widths = []
    real = clip.model.encode_text

    def spy(tokens, *args, **kwargs):
        widths.append((tokens.shape[1], clip.model.positional_embedding.shape[0], clip.model.attn_mask.shape))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_text", spy)
    texts = ["a", "two boys", "picture of a dog.", "wearing blue jacket.", TEXTS[3]]
    clip.encode_texts(texts, batch_size=2)
    lengths = sorted(((clip.tokenize([t]).argmax(-1) + 1).item() for t in texts), reverse=True)
    # longest first, two per batch: each batch is as wide as its first (longest) member
    assert [w for w, _, _ in widths] == [lengths[0], lengths[2], lengths[4]]
    assert lengths[0] == 77 and lengths[2] < 77
    for width, table, mask in widths:
        assert table == width and tuple(mask) == (width, width)


def test_the_model_is_restored_after_an_exception(clip, monkeypatch):
    model = clip.model
    table, mask = model.positional_embedding, model.attn_mask
    seen = []

    def boom(tokens, *args, **kwargs):
        seen.append(model.positional_embedding.shape[0])
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "encode_text", boom)
    with pytest.raises(RuntimeError, match="boom"):
        clip.encode_texts(["a", "picture of a dog."])
    assert seen and seen[0] < 77  # it failed while trimmed
    assert model.positional_embedding is table and model.attn_mask is mask
    assert table.shape[0] == 77 and tuple(mask.shape) == (77, 77)
    monkeypatch.undo()
    torch.testing.assert_close(clip.encode_texts(TEXTS), _full_width(clip, TEXTS), atol=1e-5, rtol=0)


def test_towers_without_a_positional_table_are_not_trimmed():
    with _trimmed_text_context(torch.nn.Linear(2, 2), 5) as trimmed:
        assert trimmed is False


def test_full_width_requests_leave_the_model_untouched(clip):
    table = clip.model.positional_embedding
    with _trimmed_text_context(clip.model, 77) as trimmed:
        assert trimmed is False
        assert clip.model.positional_embedding is table


def test_no_texts_give_an_empty_matrix(clip):
    assert clip.encode_texts([]).shape == (0, clip.feature_dim)
