"""The batched decoding loop against a slow per-row reference that spells out its semantics.

The reference below is the decoding loop as first written: one Python pass per row and step for the
repetition penalty, the n-gram ban, top-k / top-p and the draw. ``generate`` must give exactly its
tokens, log-probabilities and stop flags, sampling included: a seeded caption must not change when the
loop is rewritten. Only the model plumbing (cache conventions, positions) is shared with the module.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from icg.captioners.generation import _LM, Generated, _first_inputs, _penalise, _step_inputs, generate
from icg.config import DecodingConfig
from tests import fixtures

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


# ------------------------------------------------------------------------------------- the reference
def ref_penalise(logits: torch.Tensor, history: list[list[int]], cfg: DecodingConfig) -> torch.Tensor:
    """CTRL's repetition penalty on every token a row has produced (divide a positive logit, multiply
    a negative one), then the ban: a token that would repeat an n-gram of the row gets -inf."""
    for row, seen in enumerate(history):
        if cfg.repetition_penalty != 1.0 and seen:
            ids = torch.tensor(sorted(set(seen)))
            vals = logits[row, ids]
            penalty = cfg.repetition_penalty
            logits[row, ids] = torch.where(vals > 0, vals / penalty, vals * penalty)
        n = cfg.no_repeat_ngram_size
        if n > 0 and len(seen) >= n:
            tail = seen[len(seen) - n + 1 :] if n > 1 else []
            for i in range(len(seen) - n + 1):
                if seen[i : i + n - 1] == tail:
                    logits[row, seen[i + n - 1]] = -math.inf
    return logits


def ref_filter(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` best logits, then the smallest best-first set whose probability reaches ``top_p``
    (the token that crosses the threshold stays)."""
    row = row.clone()
    if 0 < top_k < row.numel():
        row[row < row.topk(top_k).values[-1]] = -math.inf
    if top_p < 1.0:
        sorted_logits, order = row.sort(descending=True)
        within = int((sorted_logits.softmax(-1).cumsum(-1) <= top_p).sum())  # a prefix: the sum grows
        row[order[within + 1 :]] = -math.inf
    return row


def ref_draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """``torch.multinomial``: on the rows together with one generator, on each row with its own."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator)])


def ref_generate(lm, cfg, prompt, is_embeds, attention_mask, stop_ids, generator) -> list[list[Generated]]:
    """Greedy or sampling, ``cfg.num_samples`` copies of each row; a row's copies share its generator."""
    batch, copies = prompt.shape[0], cfg.num_samples if cfg.strategy == "sample" else 1
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = [g for g in generator for _ in range(copies)]
    prompt = prompt.repeat_interleave(copies, 0)
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(copies, 0)
    lm = _LM(lm)
    with torch.inference_mode():
        kwargs, mask, last_pos = _first_inputs(prompt, is_embeds, attention_mask)
        logits, cache = lm(**kwargs)
        out = [Generated(tokens=[]) for _ in range(prompt.shape[0])]
        for step in range(cfg.max_new_tokens):
            logits = ref_penalise(logits, [g.tokens for g in out], cfg)
            if cfg.strategy == "sample":
                logits = torch.stack([ref_filter(r / cfg.temperature, cfg.top_k, cfg.top_p) for r in logits])
                token = ref_draw(logits.softmax(-1), generator)
            else:
                token = logits.argmax(-1)
            logp = logits.log_softmax(-1)
            for row, g in enumerate(out):
                if not g.stopped:
                    g.tokens.append(int(token[row]))
                    g.logprob += float(logp[row, token[row]])
                    g.stopped = int(token[row]) in stop_ids
            if all(g.stopped for g in out) or step == cfg.max_new_tokens - 1:
                break
            kwargs, mask, last_pos = _step_inputs(token, mask, last_pos)
            logits, cache = lm(cache=cache, **kwargs)
    for g in out:
        g.score = g.logprob / max(len(g.tokens), 1)
    return [out[i * copies : (i + 1) * copies] for i in range(batch)]


# --------------------------------------------------------------------------------------------- cases
@pytest.fixture(scope="module")
def setting():
    tok = fixtures.tiny_tokenizer()
    lm = fixtures.tiny_lm(tok)
    torch.manual_seed(0)
    prefix = torch.randn(4, 6, fixtures.LM_WIDTH)
    cfg = DecodingConfig(max_new_tokens=10, stop=None)
    free = [s[0].tokens for s in generate(lm, cfg=cfg, inputs_embeds=prefix)]
    eos = tok.eos_token_id
    # Stop tokens that the rows do produce, so that rows end at different steps and the others go on.
    stops = [[], [eos], [free[0][2], free[1][4]], [free[2][1], eos, free[3][6]]]
    ids = [tok.encode(p) for p in ["dog, grass ###", "a man, bike, street, water ###", "beach ###"]]
    width = max(map(len, ids))
    input_ids = torch.tensor([[eos] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    return lm, prefix, stops, input_ids, mask


def _cases(n: int = 40) -> list[dict]:
    """Greedy and seeded sampling across penalties, bans, top-k, top-p, temperatures, stops and seeds."""
    rng = random.Random(2024)
    cases = []
    for i in range(n):
        cfg = {
            "strategy": "greedy" if i % 3 == 0 else "sample",
            "max_new_tokens": rng.choice([4, 12, 24]),
            "stop": None,
            "repetition_penalty": rng.choice([1.0, 1.3, 2.5, 0.7]),
            "no_repeat_ngram_size": rng.choice([0, 1, 2, 3]),
        }
        if cfg["strategy"] == "sample":
            cfg.update(
                num_samples=rng.choice([1, 3]),
                top_k=rng.choice([0, 1, 5, 50]),
                top_p=rng.choice([1.0, 0.9, 0.5]),
                temperature=rng.choice([1.0, 0.7, 1.5]),
            )
        generators = rng.choice(["global", "one", "per row"]) if cfg["strategy"] == "sample" else "global"
        cases.append(
            {"cfg": cfg, "stops": i % 4, "generators": generators, "input_ids": i % 5 == 4, "seed": i}
        )
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c['cfg']['strategy']}-{c['seed']}")
def test_generate_equals_the_per_row_reference(setting, case):
    lm, prefix, stops, input_ids, mask = setting
    cfg = DecodingConfig(**case["cfg"])
    prompt, is_embeds, attention = (input_ids, False, mask) if case["input_ids"] else (prefix, True, None)

    def generators():
        if case["generators"] == "one":
            return torch.Generator().manual_seed(case["seed"])
        if case["generators"] == "per row":  # two rows share a seed: the same candidates for both
            return [torch.Generator().manual_seed(case["seed"] + row % 2) for row in range(len(prompt))]
        torch.manual_seed(case["seed"])
        return None

    stop_ids = stops[case["stops"]]
    expected = ref_generate(lm, cfg, prompt, is_embeds, attention, stop_ids, generators())
    prompt_kw = {"inputs_embeds" if is_embeds else "input_ids": prompt}
    got = generate(
        lm, cfg=cfg, attention_mask=attention, stop_ids=stop_ids, generator=generators(), **prompt_kw
    )

    def plain(rows):
        return [[(g.tokens, g.logprob, g.stopped, g.score) for g in row] for row in rows]

    assert plain(got) == plain(expected)


def test_the_cases_cover_stops_bans_and_seeded_sampling(setting):
    """The comparison above means something only if rows do stop early and guards do change tokens."""
    lm, prefix, stops, _, _ = setting
    cfg = DecodingConfig(max_new_tokens=24, stop=None)
    stopped = generate(lm, cfg=cfg, inputs_embeds=prefix, stop_ids=stops[2])
    assert {len(row[0].tokens) for row in stopped} != {24}
    plain = generate(lm, cfg=cfg, inputs_embeds=prefix)
    for guard in ({"no_repeat_ngram_size": 2}, {"repetition_penalty": 1.3}):
        assert generate(lm, cfg=cfg.replace(**guard), inputs_embeds=prefix) != plain


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("penalty", [1.0, 1.3, 0.7])
def test_the_batched_repetition_guards_equal_the_per_row_reference(n, penalty):
    """The guards alone, as beam search uses them: histories over four tokens repeat a lot."""
    gen = torch.Generator().manual_seed(n * 100 + int(penalty * 10))
    cfg = DecodingConfig(repetition_penalty=penalty, no_repeat_ngram_size=n)
    for steps in range(12):
        history = torch.randint(0, 4, (6, steps), generator=gen)
        logits = torch.randn(6, 9, generator=gen) * 3
        expected = ref_penalise(logits.clone(), history.tolist(), cfg)
        assert torch.equal(_penalise(logits.clone(), history, cfg), expected)
