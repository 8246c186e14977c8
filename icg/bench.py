"""``python -m icg bench``: the library's paths against the predecessor's, side by side in one run.

Random weights at the real sizes (CLIP ViT-L/14, GPT-2 124M, the 768 -> 3840 -> 7680 MLP) or tiny
ones; a fixed number of forced new tokens so every path does the same work. Reported per image, with
ratios; absolute times mean something only on the machine they were taken on.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from icg.captioners.generation import generate
from icg.config import DecodingConfig


def _timed(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``repeats`` runs (after a warm-up run unless ``warmup`` is False),
    and its last result."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def predecessor_decode(model, prefix: torch.Tensor, tokens: int) -> list[int]:
    """The predecessor's loop for one image: the whole sequence re-run through GPT-2 at every step
    (no cache), its top-p (0.8) filter over the sorted vocabulary, then the arg-max."""
    generated, out = prefix, []
    with torch.no_grad():
        for _ in range(tokens):
            logits = model.gpt(inputs_embeds=generated).logits[:, -1, :].float()
            sorted_logits, order = torch.sort(logits, descending=True)
            remove = torch.cumsum(sorted_logits.softmax(-1), dim=-1) > 0.8
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            logits[:, order[remove]] = -float("inf")
            nxt = logits.argmax(-1)
            out.append(int(nxt))
            generated = torch.cat((generated, model.gpt.transformer.wte(nxt[:, None])), dim=1)
    return out


@dataclass
class BenchContext:
    """What every suite shares: settings, and models built once on first use."""

    device: torch.device
    dtype: torch.dtype
    size: str
    batch: int
    tokens: int
    quick: bool
    _clip: Any = None
    _prefix_model: Any = None

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Quick runs time each path once without a warm-up run; full runs take the median of 3."""
        return _timed(fn, 1 if self.quick else 3, warmup=not self.quick)

    @property
    def clip(self):
        """A ``ClipEncoder`` with random weights: ViT-L/14 at the real size, the tiny test CLIP otherwise."""
        if self._clip is None:
            import open_clip

            from icg.clip_encoder import ClipEncoder, without_weights_warning

            arch = "ViT-L-14"
            if self.size != "real":
                import tempfile
                from pathlib import Path

                from icg.tiny import CLIP_NAME, tiny_clip_spec

                tiny_clip_spec(Path(tempfile.mkdtemp(prefix="icg-bench-")))
                arch = CLIP_NAME
            torch.manual_seed(0)
            with without_weights_warning():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=None, force_quick_gelu=True
                )
            self._clip = ClipEncoder(
                model.to(self.device, self.dtype),
                preprocess,
                open_clip.get_tokenizer(arch),
                device=self.device,
                dtype=self.dtype,
                model_id=f"{arch} (random)",
            )
        return self._clip

    def lm_config(self) -> dict[str, Any]:
        """GPT-2 124M at the real size, a 2-layer GPT-2 otherwise."""
        if self.size == "real":
            return {"vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
        from icg.tiny import LM_WIDTH

        return {
            "vocab_size": 320,
            "n_embd": LM_WIDTH,
            "n_layer": 2,
            "n_head": LM_WIDTH // 64,
            "n_positions": 128,
        }

    @property
    def prefix_model(self):
        """A CLIP-prefix model (the 768 -> 3840 -> 7680 MLP at the real size) with random weights."""
        if self._prefix_model is None:
            from icg.captioners.mappers import MapperConfig, build_mapper
            from icg.captioners.prefix import PrefixCaptionModel, build_lm

            lm_cfg = self.lm_config()
            width = lm_cfg["n_embd"]
            mapper = build_mapper(MapperConfig("mlp", self.clip.feature_dim, width, 10, hidden_dim=width * 5))
            model = PrefixCaptionModel(mapper, build_lm(lm_cfg), 10).eval().to(self.device)
            model.gpt.to(self.dtype)
            self._prefix_model = model
        return self._prefix_model

    def images(self, n: int):
        """``n`` random 640x480 RGB images."""
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


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
        predecessor_decode(model, prefix, 2)
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
        lambda: [predecessor_decode(model, prefix[i : i + 1], tokens) for i in range(n_old)]
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


# name -> "module:function"; a suite takes a BenchContext and returns
# {"seconds_per_image": {...}, "ratios": {...}, "checks": {name: bool}, "notes": {name: text}}
SUITES = {
    "prefix": "icg.bench:bench_prefix",
    "sbg": "icg.sbg.bench:bench_sbg",
    "folder": "icg.batch.bench:bench_folder",
}


def run_bench(
    *,
    device: str = "cpu",
    size: str = "tiny",
    batch: int = 8,
    tokens: int = 20,
    quick: bool = False,
    suites: list[str] | None = None,
) -> dict[str, Any]:
    import importlib

    from icg.devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    ctx = BenchContext(dev, resolve_dtype(dev), size, batch, tokens, quick)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    report: dict[str, Any] = {
        "device": str(dev),
        "device_name": name,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "size": size,
        "batch": batch,
        "tokens": tokens,
        "quick": quick,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds_per_image": {},
        "ratios": {},
        "checks": {},
        "notes": {},
    }
    for suite in suites or list(SUITES):
        module, func = SUITES[suite].split(":")
        part = getattr(importlib.import_module(module), func)(ctx)
        for key in ("seconds_per_image", "ratios", "checks", "notes"):
            report[key].update(part.get(key, {}))
    return report


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


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"icg bench: size={report['size']} device={report['device']} ({report['device_name']}) "
        f"dtype={report['dtype']} batch={report['batch']} tokens={report['tokens']} "
        f"threads={report['threads']} torch={report['torch']}{' quick' if report['quick'] else ''}",
        "",
        f"{'path':<36}{'ms per image':>14}",
    ]
    lines += [f"{name:<36}{sec * 1000:>14.1f}" for name, sec in report["seconds_per_image"].items()]
    lines += ["", f"{'ratio':<44}{'x':>8}"]
    lines += [f"{name:<44}{value:>8.2f}" for name, value in report["ratios"].items()]
    lines += [""] + [f"{name}: {'yes' if ok else 'NO'}" for name, ok in report["checks"].items()]
    lines += [f"{name}: {note}" for name, note in report.get("notes", {}).items()]
    return "\n".join(lines)
