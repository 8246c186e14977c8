"""The benchmark's shared parts: the context every suite gets, timing, the runner and the report."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from icg.bench import ON_REQUEST, SUITES


def sync() -> None:
    """Wait for queued GPU work, so that a timing covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(
    fn: Callable[[], Any],
    repeats: int = 1,
    warmup: bool = False,
    clock: Callable[[], float] | None = None,
) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``repeats`` runs (after one untimed warm-up run if ``warmup``), and
    its last result; ``clock`` reads the time (default ``time.perf_counter``; tests pass a fake one)."""
    clock = clock or time.perf_counter
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        sync()
        start = clock()
        result = fn()
        sync()
        times.append(clock() - start)
    return statistics.median(times), result


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
        """Steady state: one untimed warm-up run of the same work (first-call costs at that batch size:
        allocations, thread pools, lazy kernels), then quick runs time it once, full runs take the median
        of 3. Timing a first call instead made --quick report batch 8 slower than batch 1 while the full
        run showed it 1.56x faster."""
        return timed(fn, 1 if self.quick else 3, warmup=True)

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

                # Registers the tiny architecture with open_clip; the files themselves are not needed.
                with tempfile.TemporaryDirectory(prefix="icg-bench-") as tmp:
                    tiny_clip_spec(Path(tmp))
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
    for suite in suites or [name for name in SUITES if name not in ON_REQUEST]:
        module, func = SUITES[suite].split(":")
        part = getattr(importlib.import_module(module), func)(ctx)
        for key in ("seconds_per_image", "ratios", "checks", "notes"):
            report[key].update(part.get(key, {}))
    return report


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
