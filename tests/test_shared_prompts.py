"""Shared prompt caches: each distinct prompt runs through the model once and its KV cache serves every
candidate that continues it, with exactly the candidates of running the prompt once per candidate.

``generate(..., share_prompts=False)`` is the loop as it was before the sharing (every copy's prompt in
the prefill batch); ``tests/test_generation_reference.py`` holds the shared loop to a per-row reference
too. Equality is exact (tokens, log-probabilities, stop flags): a seeded candidate must not change.
These tests run on both dependency sets, so the cache bridge is exercised with transformers 4.30's tuple
caches and with 5.x's ``Cache`` objects.
"""

from __future__ import annotations

import pytest
import torch

from icg.captioners.generation import MIN_SHARED_PREFILL, generate
from icg.config import DecodingConfig
from icg.options import CaptionOptions
from icg.sbg.captioner import SBG_DECODING
from tests import fixtures
from tests.test_sbg_captioner import make_manager, write_sbg_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

PROMPTS = ["dog, grass ###", "a man, bike, street, water ###", "beach ###"]
OPTIONS = [
    {},
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 2},
    {"top_k": 0, "top_p": 0.9},
    {"top_k": 5, "top_p": 0.8, "temperature": 0.7},
    {"repetition_penalty": 0.7, "no_repeat_ngram_size": 1, "top_k": 50, "top_p": 0.5},
]


@pytest.fixture(scope="module")
def model():
    tok = fixtures.tiny_tokenizer()
    return tok, fixtures.tiny_lm(tok)


def _batch(tok, rows: list[int]):
    """Left-padded ids and mask of ``PROMPTS[r]`` for each row (a mask only when lengths differ)."""
    ids = [tok.encode(PROMPTS[r]) for r in rows]
    width = max(map(len, ids))
    eos = tok.eos_token_id
    input_ids = torch.tensor([[eos] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    return input_ids, None if bool(mask.all()) else mask


def _plain(rows):
    return [[(g.tokens, g.logprob, g.stopped, g.score) for g in row] for row in rows]


def _both(lm, **kwargs):
    """The shared and the unshared path's results, each with fresh generators of the same seeds."""
    seeds = kwargs.pop("seeds")
    out = []
    for share in (True, False):
        gens = None if seeds is None else [torch.Generator().manual_seed(s) for s in seeds]
        out.append(_plain(generate(lm, generator=gens, share_prompts=share, **kwargs)))
    return out


@pytest.mark.parametrize("rows", [[0], [0, 0], [0, 1, 2], [1, 0, 1, 2, 0], [2, 2, 2]])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_shared_prompt_caches_give_todays_candidates(model, rows, options):
    """Several images in one batch, duplicate and distinct prompts, guards and filters, several seeds."""
    tok, lm = model
    input_ids, mask = _batch(tok, rows)
    stop = tok.encode(".")
    for seed in (0, 1, 7):
        base = {"strategy": "sample", "num_samples": 5, "top_k": 50, "max_new_tokens": 10, "stop": None}
        cfg = DecodingConfig(**{**base, **options})
        seeds = [seed + i for i in range(len(rows))]
        shared, unshared = _both(
            lm, cfg=cfg, input_ids=input_ids, attention_mask=mask, stop_ids=stop, seeds=seeds
        )
        assert shared == unshared
        assert len(shared) == len(rows) and all(len(r) == 5 for r in shared)


def test_rows_with_the_same_prompt_and_seed_get_the_same_candidates(model):
    tok, lm = model
    input_ids, mask = _batch(tok, [0, 1, 0])
    cfg = SBG_DECODING.replace(max_new_tokens=8, stop=None)
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    out = _plain(generate(lm, cfg=cfg, input_ids=input_ids, attention_mask=mask, generator=gens))
    assert out[0] == out[2] and out[0] != out[1]


def test_greedy_and_prefix_embeddings_with_duplicate_rows(model):
    """Greedy decoding and ``inputs_embeds`` prompts share too (one global generator for sampling)."""
    _, lm = model
    torch.manual_seed(0)
    prefix = torch.randn(3, 6, fixtures.LM_WIDTH)[[0, 1, 0, 2, 1]]
    for cfg in (
        DecodingConfig(max_new_tokens=8, stop=None),
        DecodingConfig(max_new_tokens=8, stop=None, repetition_penalty=1.3, no_repeat_ngram_size=2),
    ):
        shared, unshared = _both(lm, cfg=cfg, inputs_embeds=prefix, seeds=None)
        assert shared == unshared
    cfg = DecodingConfig(strategy="sample", num_samples=3, top_k=20, max_new_tokens=8, stop=None)
    results = []
    for share in (True, False):
        gen = torch.Generator().manual_seed(5)
        got = generate(lm, cfg=cfg, inputs_embeds=prefix, generator=gen, share_prompts=share)
        results.append(_plain(got))
    assert results[0] == results[1]


def test_each_distinct_prompt_runs_through_the_model_once(model):
    """The prefill batch holds the distinct prompts only; every later step decodes all candidates."""
    tok, lm = model
    input_ids, mask = _batch(tok, [1, 0, 1, 2, 0])
    batches = []

    def record(module, args, kwargs):  # transformers 4.30 passes input_ids by position, 5.x by name
        batches.append(tuple((args[0] if args else kwargs["input_ids"]).shape))

    hook = lm.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        cfg = SBG_DECODING.replace(max_new_tokens=3, stop=None, seed=0)
        gens = [torch.Generator().manual_seed(0) for _ in range(5)]
        generate(lm, cfg=cfg, input_ids=input_ids, attention_mask=mask, generator=gens)
        prefill, *steps = batches
        batches.clear()
        generate(lm, cfg=cfg, input_ids=input_ids, attention_mask=mask, generator=gens, share_prompts=False)
        unshared_prefill = batches[0]
        batches.clear()  # a prompt batch under MIN_SHARED_PREFILL token rows runs unshared (exact bits)
        tiny_ids, _ = _batch(tok, [2, 2])
        generate(lm, cfg=cfg, input_ids=tiny_ids, generator=gens[:2])
        tiny_prefill = batches[0]
    finally:
        hook.remove()
    assert prefill == (3, input_ids.shape[1])  # three distinct prompts, once each
    assert steps == [(25, 1), (25, 1)]  # 5 images x 5 candidates per step
    assert unshared_prefill == (25, input_ids.shape[1])  # the old path: once per candidate
    assert tiny_prefill == (10, 3) and MIN_SHARED_PREFILL > 3


@pytest.fixture(scope="module")
def sbg(tmp_path_factory):
    from PIL import Image

    files = write_sbg_models(tmp_path_factory.mktemp("sbg-shared"))
    manager = make_manager(files)
    captioner = manager.captioner(str(files["sbg_generator_dir"]))
    clip = manager.clip(captioner.clip_spec)
    images = [Image.open(p) for p in files["images"]]
    return captioner, clip.encode_images([*images, images[0]])  # the last image repeats the first


def test_the_sbg_captioner_gives_the_same_candidates_with_and_without_sharing(sbg):
    captioner, features = sbg
    assert captioner.share_prompts is True
    for seed in (0, 11, 12345):
        for options in (CaptionOptions(), CaptionOptions(style="published")):
            cfg = SBG_DECODING.replace(seed=seed)
            shared = captioner.caption_features(features, cfg, options)
            captioner.share_prompts = False
            try:
                unshared = captioner.caption_features(features, cfg, options)
            finally:
                captioner.share_prompts = True
            assert [r.to_dict()["candidates"] for r in shared] == [
                r.to_dict()["candidates"] for r in unshared
            ]
        typed = captioner.caption_keywords("dog, grass", SBG_DECODING.replace(seed=seed))
        captioner.share_prompts = False
        try:
            again = captioner.caption_keywords("dog, grass", SBG_DECODING.replace(seed=seed))
        finally:
            captioner.share_prompts = True
        assert typed.to_dict()["candidates"] == again.to_dict()["candidates"]  # logprob scores: exact
