"""The CLIP-prefix suite of ``python -m icg bench`` (see ``bench_prefix``)."""

from __future__ import annotations

from typing import Any

import torch

from icg.bench.core import BenchContext
from icg.bench.predecessor import prefix_decode
from icg.captioners.generation import generate
from icg.config import DecodingConfig


def bench_prefix(ctx: BenchContext) -> dict[str, Any]:
    """CLIP encoding at batch 1 and B; CLIP-prefix decoding: the predecessor's loop, the library's loop
    at batch 1 and B, and transformers' ``generate`` at B, all forced to the same number of tokens."""
    clip, model, batch, tokens = ctx.clip, ctx.prefix_model, ctx.batch, ctx.tokens
    images = ctx.images(batch)
    cfg = DecodingConfig(max_new_tokens=tokens, stop=None, stop_at_eos=False)
    if ctx.quick:  # one cheap pass through every path instead of a full warm-up run of each
        with torch.inference_mode():
            prefix = model.prefix(clip.encode_images(images[:1]).to(ctx.device))
        generate(model.gpt, cfg=cfg.replace(max_new_tokens=2), inputs_embeds=prefix)
        prefix_decode(model, prefix, 2)
    rows: dict[str, float] = {}
    rows["clip_encode_b1"], _ = ctx.timed(lambda: clip.encode_images(images[:1]))
    n_clip = min(batch, 2) if ctx.quick else batch  # CLIP is compute-bound on a CPU: 2 images show the trend
    t, feats = ctx.timed(lambda: clip.encode_images(images[:n_clip], batch_size=n_clip))
    rows[f"clip_encode_b{n_clip}"] = t / n_clip
    if len(feats) < batch:  # random weights give random features anyway; fill the batch with more of them
        torch.manual_seed(1)
        extra = torch.nn.functional.normalize(torch.randn(batch - len(feats), feats.shape[1]), dim=-1)
        feats = torch.cat([feats, extra])
    with torch.inference_mode():
        prefix = model.prefix(feats.to(ctx.device))

    n_old = min(batch, 2 if ctx.quick else batch)
    t, old_tokens = ctx.timed(
        lambda: [prefix_decode(model, prefix[i : i + 1], tokens) for i in range(n_old)]
    )
    rows["decode_predecessor_b1"] = t / n_old
    rows["decode_library_b1"], _ = ctx.timed(lambda: generate(model.gpt, cfg=cfg, inputs_embeds=prefix[:1]))
    t, new = ctx.timed(lambda: generate(model.gpt, cfg=cfg, inputs_embeds=prefix))
    rows[f"decode_library_b{batch}"] = t / batch
    t, _ = ctx.timed(lambda: _hf_generate(model.gpt, prefix, tokens))
    rows[f"decode_hf_generate_b{batch}"] = t / batch
    old, lib = rows["decode_predecessor_b1"], rows[f"decode_library_b{batch}"]
    ratios = {
        "decode: predecessor / library b1": old / rows["decode_library_b1"],
        f"decode: predecessor / library b{batch}": old / lib,
        f"decode: hf generate / library b{batch}": rows[f"decode_hf_generate_b{batch}"] / lib,
        f"clip: b1 / b{n_clip}": rows["clip_encode_b1"] / rows[f"clip_encode_b{n_clip}"],
    }
    identical = [seqs[0].tokens for seqs in new[:n_old]] == old_tokens
    checks = {f"greedy tokens identical to the predecessor loop ({n_old} images)": identical}
    return {"seconds_per_image": rows, "ratios": ratios, "checks": checks}


def _hf_generate(lm, prefix: torch.Tensor, tokens: int):
    """transformers' own ``generate`` on the same prefix, greedy, exactly ``tokens`` new tokens."""
    mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
    with torch.inference_mode():
        return lm.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
            bos_token_id=0,  # transformers 4.30 wants one even when it starts from inputs_embeds
        )
