"""Decoding: greedy, sampling and beam search over the KV cache, on a tiny random GPT-2."""

from __future__ import annotations

import pytest
import torch

from icg.captioners.generation import generate
from icg.config import DecodingConfig
from tests import fixtures


@pytest.fixture(scope="module")
def lm_tok():
    tok = fixtures.tiny_tokenizer()
    return fixtures.tiny_lm(tok), tok


@pytest.fixture(scope="module")
def prefix():
    torch.manual_seed(0)
    return torch.randn(4, 6, fixtures.LM_WIDTH)


def full_logprob(lm, prefix_row: torch.Tensor, tokens: list[int]) -> float:
    """The log-probability of ``tokens`` after ``prefix_row``, computed without any cache."""
    with torch.no_grad():
        embeds = torch.cat([prefix_row, lm.transformer.wte(torch.tensor(tokens))], dim=0)[None]
        logp = lm(inputs_embeds=embeds).logits[0].log_softmax(-1)
    start = prefix_row.shape[0] - 1
    return float(sum(logp[start + i, t] for i, t in enumerate(tokens)))


def greedy(lm, prefix, **cfg):
    return generate(lm, cfg=DecodingConfig(**cfg), inputs_embeds=prefix)


def test_greedy_is_deterministic_and_batch_independent(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = {"max_new_tokens": 12, "stop": None}
    batched = [s[0].tokens for s in greedy(lm, prefix, **cfg)]
    assert batched == [s[0].tokens for s in greedy(lm, prefix, **cfg)]
    alone = [greedy(lm, prefix[i : i + 1], **cfg)[0][0].tokens for i in range(len(prefix))]
    assert batched == alone
    assert all(len(t) == 12 for t in batched)


def test_stop_token_ends_each_row_at_its_first_occurrence(lm_tok, prefix):
    lm, _ = lm_tok
    free = [s[0].tokens for s in greedy(lm, prefix, max_new_tokens=10, stop=None)]
    stop = free[0][3]  # a token row 0 produces at step 4
    out = generate(lm, cfg=DecodingConfig(max_new_tokens=10), inputs_embeds=prefix, stop_ids=[stop])
    for row, seqs in zip(free, out):
        g = seqs[0]
        if stop in row:
            assert g.tokens == row[: row.index(stop) + 1] and g.stopped
        else:
            assert g.tokens == row and not g.stopped


def test_logprob_matches_an_uncached_forward(lm_tok, prefix):
    lm, _ = lm_tok
    g = greedy(lm, prefix[:1], max_new_tokens=8, stop=None)[0][0]
    assert g.logprob == pytest.approx(full_logprob(lm, prefix[0], g.tokens), abs=1e-3)


def test_sampling_is_reproducible_with_a_seed(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = DecodingConfig(strategy="sample", num_samples=3, max_new_tokens=8, top_k=50, temperature=1.5)

    def run(seed):
        out = generate(lm, cfg=cfg, inputs_embeds=prefix, generator=torch.Generator().manual_seed(seed))
        return [[g.tokens for g in seqs] for seqs in out]

    first = run(7)
    assert [len(seqs) for seqs in first] == [3] * len(prefix)
    assert first == run(7)
    assert first != run(8)


def test_top_k_one_sampling_equals_greedy(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = DecodingConfig(strategy="sample", top_k=1, max_new_tokens=8, stop=None)
    sampled = generate(lm, cfg=cfg, inputs_embeds=prefix, generator=torch.Generator().manual_seed(0))
    assert [s[0].tokens for s in sampled] == [
        s[0].tokens for s in greedy(lm, prefix, max_new_tokens=8, stop=None)
    ]


def test_tiny_top_p_keeps_only_the_argmax(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = DecodingConfig(strategy="sample", top_p=1e-6, max_new_tokens=8, stop=None)
    sampled = generate(lm, cfg=cfg, inputs_embeds=prefix, generator=torch.Generator().manual_seed(3))
    assert [s[0].tokens for s in sampled] == [
        s[0].tokens for s in greedy(lm, prefix, max_new_tokens=8, stop=None)
    ]


def test_left_padded_input_ids_decode_like_unpadded_rows(lm_tok):
    lm, tok = lm_tok
    prompts = ["dog, grass ###", "a man, bike, street, water ###", "beach ###"]
    ids = [tok.encode(p) for p in prompts]
    width = max(map(len, ids))
    pad = tok.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    cfg = DecodingConfig(max_new_tokens=10, stop=None)
    together = generate(lm, cfg=cfg, input_ids=input_ids, attention_mask=mask)
    alone = [generate(lm, cfg=cfg, input_ids=torch.tensor([i]))[0][0].tokens for i in ids]
    assert [s[0].tokens for s in together] == alone


def test_no_repeat_ngram_guard(lm_tok, prefix):
    lm, _ = lm_tok
    plain = [s[0].tokens for s in greedy(lm, prefix, max_new_tokens=30, stop=None)]

    def bigrams(t):
        return [tuple(t[i : i + 2]) for i in range(len(t) - 1)]

    assert any(len(set(bigrams(t))) < len(bigrams(t)) for t in plain), "fixture should repeat itself"
    guarded = [s[0].tokens for s in greedy(lm, prefix, max_new_tokens=30, stop=None, no_repeat_ngram_size=2)]
    for t in guarded:
        assert len(set(bigrams(t))) == len(bigrams(t))


def test_repetition_penalty_reduces_repeats(lm_tok, prefix):
    lm, _ = lm_tok

    def repeats(rows):
        return sum(len(t) - len(set(t)) for t in rows)

    plain = [s[0].tokens for s in greedy(lm, prefix, max_new_tokens=30, stop=None)]
    guarded = [s[0].tokens for s in greedy(lm, prefix, max_new_tokens=30, stop=None, repetition_penalty=3.0)]
    assert repeats(guarded) < repeats(plain)


def test_beam_search_returns_sorted_beams_with_true_scores(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=6, stop=None)
    out = generate(lm, cfg=cfg, inputs_embeds=prefix)
    for row, beams in enumerate(out):
        assert len(beams) == 3
        assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
        assert len({tuple(b.tokens) for b in beams}) == 3
        for b in beams:  # the cache was reordered correctly iff the scores match an uncached forward
            assert b.logprob == pytest.approx(full_logprob(lm, prefix[row], b.tokens), abs=1e-3)


def test_full_width_beam_search_is_exact_for_two_tokens(lm_tok, prefix):
    lm, _ = lm_tok
    vocab = lm.config.vocab_size
    cfg = DecodingConfig(strategy="beam", num_beams=vocab, max_new_tokens=2, stop=None, length_penalty=0.0)
    best = generate(lm, cfg=cfg, inputs_embeds=prefix[:1])[0][0]
    with torch.no_grad():  # exhaustive: every first token, then the best second token
        first = lm(inputs_embeds=prefix[:1]).logits[0, -1].log_softmax(-1)
        rows = torch.cat(
            [prefix[0].expand(vocab, -1, -1), lm.transformer.wte(torch.arange(vocab))[:, None]], 1
        )
        second = lm(inputs_embeds=rows).logits[:, -1].log_softmax(-1)
    total = first[:, None] + second
    flat = int(total.argmax())
    assert best.tokens == [flat // vocab, flat % vocab]


def test_beam_stop_tokens_finish_hypotheses(lm_tok, prefix):
    lm, _ = lm_tok
    stop = greedy(lm, prefix[:1], max_new_tokens=1, stop=None)[0][0].tokens[0]  # the most likely first token
    # Unnormalised scores: the one-token hypothesis ending on the stop token beats every longer one.
    cfg = DecodingConfig(strategy="beam", num_beams=2, max_new_tokens=12, length_penalty=0.0)
    beams = generate(lm, cfg=cfg, inputs_embeds=prefix[:1], stop_ids=[stop])[0]
    assert beams[0].tokens == [stop] and beams[0].stopped
    assert all(stop not in b.tokens[:-1] for b in beams)


@pytest.mark.parametrize(
    "bad",
    [{"strategy": "nucleus"}, {"max_new_tokens": 0}, {"top_p": 0.0}, {"temperature": 0}, {"num_beams": 0}],
)
def test_invalid_decoding_settings_are_refused(bad):
    from icg.errors import ConfigError

    with pytest.raises(ConfigError):
        DecodingConfig(**bad)


def test_per_row_generators_make_a_rows_samples_independent_of_its_batch(lm_tok, prefix):
    lm, _ = lm_tok
    cfg = DecodingConfig(strategy="sample", num_samples=3, max_new_tokens=8, top_k=50, temperature=1.5)

    def gens(n):
        return [torch.Generator().manual_seed(11) for _ in range(n)]

    together = generate(lm, cfg=cfg, inputs_embeds=prefix, generator=gens(len(prefix)))
    for row in range(len(prefix)):
        alone = generate(lm, cfg=cfg, inputs_embeds=prefix[row : row + 1], generator=gens(1))
        assert [g.tokens for g in alone[0]] == [g.tokens for g in together[row]]
    with pytest.raises(ValueError, match="2 generators for 4 rows"):
        generate(lm, cfg=cfg, inputs_embeds=prefix, generator=gens(2))
