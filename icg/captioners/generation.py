"""Batched autoregressive decoding with a KV cache, shared by both captioners.

One loop serves greedy decoding (the reference), seeded sampling (top-k / top-p / temperature) and
beam search. The language model is any causal LM with the Hugging Face forward signature (GPT-2).
Two library generations are bridged here and nowhere else: transformers 4.x takes and returns
``past_key_values`` (tuples of tensors), 5.x takes ``cache=`` and returns a ``Cache`` object; both are
treated as opaque apart from reordering rows for beam search.

Logit processing (repetition penalty, n-gram ban, temperature, top-k, top-p, the draw) is whole-batch
tensor work and the tokens stay on the device: greedy and sampling sync with the host at most once a
step (the all-rows-stopped check); beam search brings each step's best candidates to the host for its
bookkeeping.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from icg.config import DecodingConfig


@dataclass
class Generated:
    """One decoded continuation: its new token ids (the stop token included when it was produced)."""

    tokens: list[int]
    logprob: float = 0.0  # sum of the chosen tokens' log-probabilities after logit processing
    stopped: bool = False  # ended on a stop/EOS token rather than on max_new_tokens
    score: float = field(default=0.0)  # the ranking score (beam: length-normalised logprob)


class _LM:
    """Adapter over the two cache conventions of transformers' causal LMs."""

    def __init__(self, lm) -> None:
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def __call__(self, *, cache=None, **kwargs):
        kwargs[self.cache_kw] = cache
        out = self.lm(use_cache=True, return_dict=True, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :].float(), new_cache

    @staticmethod
    def reorder(cache, rows: torch.Tensor):
        if hasattr(cache, "reorder_cache"):
            cache.reorder_cache(rows)
            return cache
        return tuple(tuple(t.index_select(0, rows.to(t.device)) for t in layer) for layer in cache)


def generate(
    lm,
    *,
    cfg: DecodingConfig,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    share_prompts: bool = True,
) -> list[list[Generated]]:
    """Continue each row of ``inputs_embeds`` (B, T, E) or ``input_ids`` (B, T); return, per row, its
    continuations: 1 for greedy, ``num_samples`` for sampling, ``num_beams`` (best first) for beam search.

    ``attention_mask`` (B, T) marks real tokens when rows are left-padded. Decoding of a row ends at the
    first token in ``stop_ids`` or after ``cfg.max_new_tokens`` tokens.

    ``generator`` seeds sampling: one generator for the whole call, or one per input row, in which case
    a row's samples depend only on its own generator and prompt, not on the rows decoded beside it.

    Greedy and sampling run each distinct prompt row once and share its KV cache with every row that
    continues it (its ``num_samples`` copies, and rows with the same prompt): the same tokens as running
    every copy's prompt, at a fraction of the cost. ``share_prompts=False`` runs the prompt once per
    copy, as the loop first did; only the bench uses it, for its side-by-side.
    """
    if (inputs_embeds is None) == (input_ids is None):
        raise ValueError("pass exactly one of inputs_embeds and input_ids")
    prompt = inputs_embeds if inputs_embeds is not None else input_ids
    batch = prompt.shape[0]
    with torch.inference_mode():
        if cfg.strategy == "beam":
            return _beam_search(
                _LM(lm), prompt, inputs_embeds is not None, attention_mask, cfg, stop_ids, batch
            )
        copies = cfg.num_samples if cfg.strategy == "sample" else 1
        if generator is not None and not isinstance(generator, torch.Generator):
            if len(generator) != batch:
                raise ValueError(f"{len(generator)} generators for {batch} rows")
            generator = [g for g in generator for _ in range(copies)]  # a row's copies share its generator
        flat = _sample_or_greedy(
            _LM(lm),
            prompt,
            inputs_embeds is not None,
            attention_mask,
            copies,
            cfg,
            stop_ids,
            generator,
            share_prompts,
        )
    return [flat[i * copies : (i + 1) * copies] for i in range(batch)]


# ----------------------------------------------------------------------------------------- helpers
def _first_inputs(prompt: torch.Tensor, is_embeds: bool, attention_mask: torch.Tensor | None):
    kwargs = {"inputs_embeds" if is_embeds else "input_ids": prompt}
    if attention_mask is None:
        return kwargs, None, None
    mask = attention_mask.to(prompt.device, torch.long)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    kwargs.update(attention_mask=mask, position_ids=positions)
    return kwargs, mask, positions[:, -1]


def _step_inputs(tokens: torch.Tensor, mask: torch.Tensor | None, last_pos: torch.Tensor | None):
    kwargs = {"input_ids": tokens[:, None]}
    if mask is None:
        return kwargs, None, None
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    last_pos = last_pos + 1
    kwargs.update(attention_mask=mask, position_ids=last_pos[:, None])
    return kwargs, mask, last_pos


def _penalise(logits: torch.Tensor, history: torch.Tensor, cfg: DecodingConfig) -> torch.Tensor:
    """Repetition guards over ``history`` (rows, steps), each row's tokens so far, in place: the
    CTRL-style repetition penalty on every token the row has produced, and a ban (-inf) on each token
    that would repeat one of the row's n-grams. Whole-batch tensor operations, no host sync."""
    steps = history.shape[1]
    if steps == 0:
        return logits
    penalty = cfg.repetition_penalty
    if penalty != 1.0:  # a repeated token is gathered and scattered more than once, with one value
        seen = logits.gather(1, history)
        logits.scatter_(1, history, torch.where(seen > 0, seen / penalty, seen * penalty))
    n = cfg.no_repeat_ngram_size
    if 0 < n <= steps:
        following = history[:, n - 1 :]  # the token after each (n-1)-gram of the row
        if n == 1:
            repeat = torch.ones_like(following, dtype=torch.bool)
        else:
            grams = history.unfold(1, n - 1, 1)[:, : steps - n + 1]  # (rows, steps - n + 1, n - 1)
            repeat = (grams == history[:, None, steps - n + 1 :]).all(-1)  # the gram equals the row's tail
        # min with -inf bans, min with +inf keeps: a token that follows several grams gets one answer
        bans = torch.full(following.shape, math.inf, device=logits.device).masked_fill_(repeat, -math.inf)
        logits.scatter_reduce_(1, following, bans, reduce="amin")
    return logits


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[:, 1:] = remove[:, :-1].clone()  # keep the token that crosses the threshold
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), -math.inf)
    return logits


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One token per row from ``probs``: with one generator for all rows, or one per row.

    This is what ``torch.multinomial(probs, 1, generator=...)`` (per row, with per-row generators) does
    inside: an ``Exp(1)`` draw shaped like its input on the generator, then the argmax of
    ``probs / draw``. Doing it here gives the same tokens for the same seeds without multinomial's
    validity checks, which cost a host sync per call on torch 2.1; the per-row reference test in
    ``tests/test_generation_reference.py`` holds the two together on every torch the project supports.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = _exponential(probs, generator)
    else:
        noise = torch.stack([_exponential(p, g) for p, g in zip(probs, generator)])
    return (probs / noise).argmax(-1)


def _exponential(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``Exp(1)`` noise shaped like ``like``, drawn on the generator's device and moved to ``like``'s."""
    device = like.device if generator is None else generator.device
    noise = torch.empty(like.shape, dtype=like.dtype, device=device).exponential_(1, generator=generator)
    return noise.to(like.device)


#: Prompt batches of fewer token rows run unshared. CPU matrix products of very few rows take other
#: kernels that round differently (measured: a GEMM of at most 3 rows on torch 2.14, GPT-2 prompts of at
#: most 11 tokens on torch 2.1 + transformers 4.30), so a shared prefill that small would not reproduce
#: the unshared bits; such a prompt costs next to nothing anyway.
MIN_SHARED_PREFILL = 16


def _shared_prefill(lm: _LM, prompt, is_embeds, attention_mask, copies: int, share: bool):
    """The first logits and KV cache of every decoded row (``copies`` per prompt row, copies adjacent).

    With ``share``, each distinct prompt row (its tokens or embeddings and its mask) goes through the
    model once and its logits and cache rows are repeated for every decoded row that continues it (the
    cache bridge's ``reorder`` with repeated indices): the same bits as running every copy, since each
    row of a batched forward is computed alone (see ``MIN_SHARED_PREFILL`` for the exception)."""
    if share:
        key = prompt.reshape(prompt.shape[0], -1)
        if attention_mask is not None:
            key = torch.cat([key, attention_mask.to(key.device, key.dtype)], dim=1)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)  # prompt row -> its key (sorted)
        distinct = int(inverse.max()) + 1
        share = distinct < prompt.shape[0] * copies and distinct * prompt.shape[1] >= MIN_SHARED_PREFILL
    if not share:
        mask = None if attention_mask is None else attention_mask.repeat_interleave(copies, 0)
        kwargs, mask, last_pos = _first_inputs(prompt.repeat_interleave(copies, 0), is_embeds, mask)
        logits, cache = lm(**kwargs)
        return logits, cache, mask, last_pos
    arange = torch.arange(prompt.shape[0], device=prompt.device)
    first = torch.full_like(arange[:distinct], prompt.shape[0])
    first.scatter_reduce_(0, inverse, arange, reduce="amin")  # each key's first row
    order = first.argsort()
    source, rank = first[order], order.argsort()  # prefill rows in the order the prompts first occur
    kwargs, mask, last_pos = _first_inputs(
        prompt.index_select(0, source),
        is_embeds,
        None if attention_mask is None else attention_mask.index_select(0, source),
    )
    logits, cache = lm(**kwargs)
    rows = rank[inverse].repeat_interleave(copies)  # decoded row -> its prompt's prefill row
    logits = logits.index_select(0, rows)
    cache = lm.reorder(cache, rows)
    if mask is not None:
        mask, last_pos = mask.index_select(0, rows), last_pos.index_select(0, rows)
    return logits, cache, mask, last_pos


def _sample_or_greedy(
    lm: _LM, prompt, is_embeds, attention_mask, copies, cfg, stop_ids, generator, share_prompts
) -> list[Generated]:
    rows, device, limit = prompt.shape[0] * copies, prompt.device, cfg.max_new_tokens
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    logits, cache, mask, last_pos = _shared_prefill(
        lm, prompt, is_embeds, attention_mask, copies, share_prompts
    )
    # Every row takes a token at every step; a row's caption is the prefix up to its first stop token.
    tokens = torch.zeros(rows, limit, dtype=torch.long, device=device)
    logps = torch.zeros(rows, limit, dtype=torch.float32, device=device)
    lengths = torch.full((rows,), limit, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    guard = cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0
    steps = 0
    while True:
        if guard:  # a finished row's later tokens only steer its own (discarded) logits
            logits = _penalise(logits, tokens[:, :steps], cfg)
        if cfg.strategy == "sample":
            logits = _filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
            token = _draw(logits.softmax(-1), generator)
        else:
            token = logits.argmax(-1)
        tokens[:, steps] = token
        logps[:, steps] = logits.log_softmax(-1).gather(1, token[:, None]).squeeze(1)
        steps += 1
        if stop.numel():
            newly = torch.isin(token, stop) & ~done
            lengths = torch.where(newly, steps, lengths)
            done |= newly
            if steps < limit and bool(done.all()):  # the one host sync of a step
                break
        if steps == limit:
            break
        kwargs, mask, last_pos = _step_inputs(token, mask, last_pos)
        logits, cache = lm(cache=cache, **kwargs)
    out = []
    for row_tokens, row_logps, length, stopped in zip(
        tokens[:, :steps].tolist(), logps[:, :steps].tolist(), lengths.tolist(), done.tolist()
    ):
        logprob = 0.0
        for lp in row_logps[:length]:  # summed in order, as float64 (not sum(): 3.12 compensates)
            logprob += lp
        out.append(Generated(row_tokens[:length], logprob, stopped, logprob / max(length, 1)))
    return out


def _beam_search(lm: _LM, prompt, is_embeds, attention_mask, cfg, stop_ids, batch) -> list[list[Generated]]:
    k = cfg.num_beams
    device = prompt.device
    stop = set(stop_ids)
    prompt = prompt.repeat_interleave(k, dim=0)
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(k, dim=0)
    kwargs, mask, last_pos = _first_inputs(prompt, is_embeds, attention_mask)
    logits, cache = lm(**kwargs)
    scores = torch.full((batch, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    beams: list[list[int]] = [[] for _ in range(batch * k)]
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)  # ``beams`` on the device
    finished: list[list[Generated]] = [[] for _ in range(batch)]
    closed = [False] * batch

    def norm(logprob: float, length: int) -> float:
        return logprob / (max(length, 1) ** cfg.length_penalty)

    for step in range(cfg.max_new_tokens):
        if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size:
            logits = _penalise(logits, history, cfg)
        logp = logits.log_softmax(-1)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_scores, top_idx = torch.topk(total, 2 * k, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()  # the step's host transfer
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen = 0
            for rank in range(2 * k):
                score = top_scores[b][rank]
                src = b * k + top_idx[b][rank] // vocab
                tok = top_idx[b][rank] % vocab
                if closed[b] or score == -math.inf:
                    src, tok, score = b * k, 0, -math.inf  # keep shapes; a closed input's beams are dead
                elif tok in stop:
                    if rank < k:
                        seq = beams[src] + [tok]
                        finished[b].append(Generated(seq, score, True, norm(score, len(seq))))
                    continue
                next_rows.append(src)
                next_tokens.append(tok)
                next_scores.append(score)
                chosen += 1
                if chosen == k:
                    break
            while chosen < k:  # every candidate was a stop token or -inf: pad with dead beams
                next_rows.append(b * k)
                next_tokens.append(0)
                next_scores.append(-math.inf)
                chosen += 1
            if not closed[b] and len(finished[b]) >= k:
                best_alive = max(next_scores[-k:])
                worst_done = sorted(g.score for g in finished[b])[-k]
                closed[b] = best_alive == -math.inf or norm(best_alive, step + 1) <= worst_done
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.tensor(next_tokens, device=device)
        beams = [beams[r] + [t] for r, t in zip(next_rows, next_tokens)]
        history = torch.cat([history.index_select(0, rows), tokens[:, None]], dim=1)
        scores = torch.tensor(next_scores, device=device).view(batch, k)
        if all(closed) or step == cfg.max_new_tokens - 1:
            break
        cache = lm.reorder(cache, rows)
        if mask is not None:
            mask, last_pos = mask.index_select(0, rows), last_pos.index_select(0, rows)
        kwargs, mask, last_pos = _step_inputs(tokens, mask, last_pos)
        logits, cache = lm(cache=cache, **kwargs)
    results = []
    for b in range(batch):
        pool = list(finished[b])
        if not closed[b]:
            for j in range(k):
                s = float(scores[b, j])
                if s > -math.inf:
                    seq = beams[b * k + j]
                    pool.append(Generated(seq, s, False, norm(s, len(seq))))
        pool.sort(key=lambda g: g.score, reverse=True)
        results.append(pool[:k])
    return results
