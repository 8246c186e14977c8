"""Batched autoregressive decoding with a KV cache, shared by both captioners.

One loop serves greedy decoding (the reference), seeded sampling (top-k / top-p / temperature) and
beam search. The language model is any causal LM with the Hugging Face forward signature (GPT-2).
Two library generations are bridged here and nowhere else: transformers 4.x takes and returns
``past_key_values`` (tuples of tensors), 5.x takes ``cache=`` and returns a ``Cache`` object; both are
treated as opaque apart from reordering rows for beam search.
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
) -> list[list[Generated]]:
    """Continue each row of ``inputs_embeds`` (B, T, E) or ``input_ids`` (B, T); return, per row, its
    continuations: 1 for greedy, ``num_samples`` for sampling, ``num_beams`` (best first) for beam search.

    ``attention_mask`` (B, T) marks real tokens when rows are left-padded. Decoding of a row ends at the
    first token in ``stop_ids`` or after ``cfg.max_new_tokens`` tokens.

    ``generator`` seeds sampling: one generator for the whole call, or one per input row, in which case
    a row's samples depend only on its own generator and prompt, not on the rows decoded beside it.
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
            prompt.repeat_interleave(copies, dim=0),
            inputs_embeds is not None,
            None if attention_mask is None else attention_mask.repeat_interleave(copies, 0),
            cfg,
            stop_ids,
            generator,
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


def _penalise(logits: torch.Tensor, history: list[list[int]], cfg: DecodingConfig) -> torch.Tensor:
    """Repetition guards: the CTRL-style repetition penalty and a ban on repeated n-grams."""
    if cfg.repetition_penalty != 1.0:
        for row, seen in enumerate(history):
            if seen:
                ids = torch.tensor(sorted(set(seen)), device=logits.device)
                vals = logits[row, ids]
                logits[row, ids] = torch.where(
                    vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty
                )
    n = cfg.no_repeat_ngram_size
    if n > 0:
        for row, seen in enumerate(history):
            if len(seen) + 1 < n:
                continue
            tail = tuple(seen[len(seen) - n + 1 :]) if n > 1 else ()
            banned = {seen[i + n - 1] for i in range(len(seen) - n + 1) if tuple(seen[i : i + n - 1]) == tail}
            if banned:
                logits[row, list(banned)] = -math.inf
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
    """One token per row from ``probs``: with one generator for all rows, or one per row."""
    if generator is None or isinstance(generator, torch.Generator):
        if generator is None or generator.device == probs.device:
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    rows = [
        torch.multinomial(p if g.device == p.device else p.cpu(), 1, generator=g).to(probs.device)
        for p, g in zip(probs, generator)
    ]
    return torch.cat(rows)


def _sample_or_greedy(
    lm: _LM, prompt, is_embeds, attention_mask, cfg, stop_ids, generator
) -> list[Generated]:
    rows = prompt.shape[0]
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=prompt.device)
    kwargs, mask, last_pos = _first_inputs(prompt, is_embeds, attention_mask)
    logits, cache = lm(**kwargs)
    out = [Generated(tokens=[]) for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool, device=prompt.device)
    guard = cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0
    for step in range(cfg.max_new_tokens):
        if guard:
            logits = _penalise(logits, [g.tokens for g in out], cfg)
        if cfg.strategy == "sample":
            logits = _filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
            token = _draw(logits.softmax(-1), generator)
        else:
            token = logits.argmax(-1)
        logp = logits.log_softmax(-1).gather(1, token[:, None]).squeeze(1)
        for row in (~done).nonzero().flatten().tolist():
            g = out[row]
            g.tokens.append(int(token[row]))
            g.logprob += float(logp[row])
        newly = torch.isin(token, stop) if stop.numel() else torch.zeros_like(done)
        for row in (newly & ~done).nonzero().flatten().tolist():
            out[row].stopped = True
        done |= newly
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        kwargs, mask, last_pos = _step_inputs(token, mask, last_pos)
        logits, cache = lm(cache=cache, **kwargs)
    for g in out:
        g.score = g.logprob / max(len(g.tokens), 1)
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
    finished: list[list[Generated]] = [[] for _ in range(batch)]
    closed = [False] * batch

    def norm(logprob: float, length: int) -> float:
        return logprob / (max(length, 1) ** cfg.length_penalty)

    for step in range(cfg.max_new_tokens):
        logits = (
            _penalise(logits, beams, cfg)
            if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size
            else logits
        )
        logp = logits.log_softmax(-1)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_scores, top_idx = torch.topk(total, 2 * k, dim=1)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen = 0
            for rank in range(2 * k):
                score = float(top_scores[b, rank])
                src = b * k + int(top_idx[b, rank]) // vocab
                tok = int(top_idx[b, rank]) % vocab
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
        beams = [beams[r] + [t] for r, t in zip(next_rows, next_tokens)]
        scores = torch.tensor(next_scores, device=device).view(batch, k)
        if all(closed) or step == cfg.max_new_tokens - 1:
            break
        cache = lm.reorder(cache, rows)
        if mask is not None:
            mask, last_pos = mask.index_select(0, rows), last_pos.index_select(0, rows)
        tokens = torch.tensor(next_tokens, device=device)
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
