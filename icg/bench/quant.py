"""The precision suite of ``python -m icg bench`` (see ``bench_quant``): int8 (and bf16) against fp32 on
the CPU, speed side by side in one run and accuracy over many random-weight cases."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from icg import quant
from icg.bench.core import BenchContext, sync
from icg.captioners.generation import generate
from icg.config import DecodingConfig

#: Accuracy cases (images through both CLIPs, greedy captions from both LMs): full and quick runs.
CASES = {"real": 32, "tiny": 256}
QUICK_CASES = 8


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: dict[str, Callable[[], Any]]):
    """Median seconds of each function, run in turns (a, b, a, b, ...) so that a machine whose load
    changes during the run slows every path alike; ``warmup`` runs first, untimed."""
    for fn in warmup.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def int8_lm(lm):
    """A quantised copy of a GPT-2 (``Conv1D`` -> ``nn.Linear`` -> dynamic int8)."""
    lm8 = copy.deepcopy(lm)
    quant.conv1d_to_linear(lm8)
    return quant.quantize_linears(lm8)


def bench_quant(ctx: BenchContext) -> dict[str, Any]:
    """CLIP image encoding in fp32, int8 (and bf16, on a CPU: native or emulated as ``describe`` says)
    and GPT-2 greedy decoding in fp32 and int8, timed in turns; then over many random images: the
    cosine of int8 image features against fp32, and how often the greedy tokens change with the int8
    CLIP, the int8 LM, or both."""
    if ctx.device.type != "cpu":
        return {"notes": {"int8": "skipped: int8 runs on the CPU only (run with --device cpu)"}}
    clip32, model, batch, tokens = ctx.clip, ctx.prefix_model, ctx.batch, ctx.tokens
    clip8 = copy.deepcopy(clip32)
    quant.quantize_clip(clip8)
    clip_bf16 = copy.deepcopy(clip32)
    clip_bf16.model.to(torch.bfloat16)
    clip_bf16.dtype = torch.bfloat16
    lm8 = int8_lm(model.gpt)

    n = 1 if ctx.quick else batch
    repeats = 1 if ctx.quick else 3
    pixels = clip32.preprocess_images(ctx.images(n))
    encoders = {"fp32": clip32, "int8": clip8, "bf16": clip_bf16}
    clip_t = interleaved(
        {name: (lambda c=c: c.encode_images(pixels, batch_size=n)) for name, c in encoders.items()},
        repeats,
        {name: (lambda c=c: c.encode_images(pixels[:1])) for name, c in encoders.items()},
    )
    rows = {f"clip_encode_{name}_b{n}": t / n for name, t in clip_t.items()}

    torch.manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(batch, clip32.feature_dim), dim=-1)
    with torch.inference_mode():
        prefix = model.prefix(feats)
    cfg = DecodingConfig(max_new_tokens=tokens, stop=None, stop_at_eos=False)
    lms = {"fp32": model.gpt, "int8": lm8}
    decode_t = interleaved(
        {name: (lambda lm=lm: generate(lm, cfg=cfg, inputs_embeds=prefix)) for name, lm in lms.items()},
        repeats,
        {name: (lambda lm=lm: generate(lm, cfg=cfg.replace(max_new_tokens=2), inputs_embeds=prefix[:1]))
         for name, lm in lms.items()},
    )
    rows.update({f"decode_{name}_b{batch}": t / batch for name, t in decode_t.items()})

    ratios = {
        f"int8: clip encode fp32 / int8 b{n}": clip_t["fp32"] / clip_t["int8"],
        f"bf16: clip encode fp32 / bf16 b{n}": clip_t["fp32"] / clip_t["bf16"],
        f"int8: decode fp32 / int8 b{batch}": decode_t["fp32"] / decode_t["int8"],
    }
    accuracy, notes = _accuracy(ctx, clip32, clip8, model, lm8)
    ratios.update(accuracy)
    checks = {}
    if ctx.size == "real":
        checks["int8 CLIP encode at least 1.7x faster than fp32"] = ratios[
            f"int8: clip encode fp32 / int8 b{n}"
        ] >= 1.7
        checks["int8 image-feature cosine at least 0.99 (min over the cases)"] = (
            accuracy["int8: image-feature cosine min"] >= 0.99
        )
    notes["precision"] = (
        f"{quant.describe()}; bf16 {'runs natively' if quant.native_bf16() else 'is emulated here'}"
    )
    return {"seconds_per_image": rows, "ratios": ratios, "checks": checks, "notes": notes}


def _accuracy(ctx: BenchContext, clip32, clip8, model, lm8) -> tuple[dict[str, float], dict[str, str]]:
    """Cosine of image features and greedy-token change rates over the cases (in chunks of the batch)."""
    cases = QUICK_CASES if ctx.quick else CASES.get(ctx.size, CASES["tiny"])
    cfg = DecodingConfig(max_new_tokens=ctx.tokens, stop=None, stop_at_eos=False)
    cosines, changed = [], {"int8-clip": 0, "int8 lm": 0, "int8": 0}
    images = _random_images(cases)
    for start in range(0, cases, ctx.batch):
        pixels = clip32.preprocess_images(images[start : start + ctx.batch])
        f32 = clip32.encode_images(pixels, batch_size=len(pixels))
        f8 = clip8.encode_images(pixels, batch_size=len(pixels))
        cosines.append(torch.nn.functional.cosine_similarity(f32, f8))
        with torch.inference_mode():
            p32, p8 = model.prefix(f32), model.prefix(f8)
        want = _tokens(model.gpt, cfg, p32)
        for name, lm, prefix in (("int8-clip", model.gpt, p8), ("int8 lm", lm8, p32), ("int8", lm8, p8)):
            changed[name] += sum(a != b for a, b in zip(want, _tokens(lm, cfg, prefix)))
    cosine = torch.cat(cosines)
    ratios = {
        "int8: image-feature cosine min": float(cosine.min()),
        "int8: image-feature cosine mean": float(cosine.mean()),
    }
    ratios.update({f"{name}: greedy captions changed (share)": n / cases for name, n in changed.items()})
    size = "ViT-L/14 + GPT-2 124M" if ctx.size == "real" else "the tiny CLIP + 2-layer GPT-2"
    notes = {
        "int8 accuracy": f"{cases} random images, random weights at {size}; a caption 'changed' when any "
        f"of its {ctx.tokens} greedy tokens differs from fp32's (trained weights may differ)"
    }
    return ratios, notes


def _tokens(lm, cfg: DecodingConfig, prefix) -> list[list[int]]:
    return [seqs[0].tokens for seqs in generate(lm, cfg=cfg, inputs_embeds=prefix)]


def _random_images(n: int):
    """``n`` different random 640x480 images (the context's ``images`` repeats one seed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]
