"""``python -m icg bench --suite folder``: folder throughput of the batch engine at batch 1 and batch B.

The whole engine runs (``run_batch``: discovery, background decoding and preprocessing, batched CLIP
encoding and caption decoding, atomic sidecar writes) over a temporary folder of generated 640x480 JPEGs
(smooth gradients with mild noise, so they compress and decode like photos rather than like pure noise).

The models are the benchmark's random-weight ones (``ctx.clip`` and ``ctx.prefix_model``, real or tiny
sizes) served by a ``ModelManager`` whose factories return them, wrapped in the real ``PrefixCaptioner``.
Decoding is forced to ``ctx.tokens`` new tokens (no stop token) so both batch sizes do the same work, as in
the other suites. There is no real GPT-2 tokenizer offline and random weights emit meaningless ids, so
ids are rendered as placeholders (``<id>``) instead of text: turning 20 ids into text costs microseconds
next to the model, so this leaves out nothing the suite is meant to measure, and no id can fall outside
a tokenizer's vocabulary.

The folder holds 4 batches' worth of images (at least 8), so decoding the next batches can overlap the
model (the first batch always waits for its images); ``--quick`` uses one batch's worth, which shows the
throughput but not that overlap. Each batch size is timed after an untimed warm-up pass over the same
folder (``BenchContext.timed``), in both modes: a first pass at a batch size pays one-off costs that a
folder of hundreds of images does not. Reported per image: wall time at batch 1
and B, the single-thread cost of decoding and preprocessing one image, and, at batch B, the model's time
and the time the engine sat waiting for decoded images. When that wait is a large share of the run, the
folder is decode-bound (more ``--workers`` or a faster disk help); otherwise it is model-bound (a bigger
batch or a GPU helps). The hint is in the ratio's name and in ``notes``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WIDTH, HEIGHT = 640, 480
DECODE_BOUND_SHARE = 0.25  # waiting on images for more than this share of the run: decode-bound


class PlaceholderTokenizer:
    """Renders token ids as ``<id>`` (random weights emit meaningless ids; see the module docstring)."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [0]

    def decode(self, tokens, skip_special_tokens: bool = True, clean_up_tokenization_spaces=None) -> str:
        return " ".join(f"<{int(t)}>" for t in tokens)


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 640x480 JPEGs (quality 90) that look like smooth photos with some grain."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    paths = []
    for i in range(n):
        fx, fy, phase = rng.uniform(0.004, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
        channels = [
            127 + 100 * np.sin(fx * x * (c + 1) + fy * y + phase + c) + rng.normal(0, 12, (HEIGHT, WIDTH))
            for c in range(3)
        ]
        pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
        path = folder / f"photo{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def _bench_manager(ctx):
    """A manager whose factories hand out the benchmark's models."""
    from icg.captioners.prefix import PrefixCaptioner
    from icg.config import ClipSpec, DecodingConfig
    from icg.models.manager import Factories, ModelManager, RuntimeConfig

    clip = ctx.clip
    captioner = PrefixCaptioner(
        ctx.prefix_model,
        PlaceholderTokenizer(),
        model_id="bench-prefix (random)",
        normalize=True,
        decoding=DecodingConfig(max_new_tokens=ctx.tokens, stop=None, stop_at_eos=False),
        clip_spec=ClipSpec(arch=clip.model_id, pretrained=None),
    )
    runtime = RuntimeConfig(device=str(ctx.device), dtype=str(ctx.dtype).replace("torch.", ""))
    factories = Factories(clip=lambda spec, manager: clip, captioner=lambda name, manager: captioner)
    return ModelManager(runtime, factories), captioner


def bench_folder(ctx) -> dict[str, Any]:
    """Folder images/s at batch 1 and ``ctx.batch`` through ``run_batch``; see the module docstring."""
    from icg.batch.engine import BatchOptions, run_batch
    from icg.imaging import load_image

    batch = ctx.batch
    n = batch if ctx.quick else max(8, 4 * batch)
    manager, captioner = _bench_manager(ctx)
    folder = Path(tempfile.mkdtemp(prefix="icg-bench-folder-"))
    try:
        paths = write_jpegs(folder, n)
        clip = ctx.clip
        # One image through both models first, so neither batch size pays the first-call costs.
        captioner.caption_features(clip.encode_images([load_image(paths[0])]))

        def decode_all() -> None:
            for path in paths:
                clip.preprocess_images([load_image(path)])

        t_decode, _ = ctx.timed(decode_all)
        summaries = {}
        rows: dict[str, float] = {}
        for size in (1, batch):
            options = BatchOptions(folder, model="bench", batch_size=size, policy="overwrite")
            seconds, summaries[size] = ctx.timed(lambda options=options: run_batch(manager, options))
            rows[f"folder_b{size}"] = seconds / n
        last = summaries[batch]
        run = max(last.seconds["run"], 1e-9)
        rows["folder_image_decode_1_thread"] = t_decode / n
        rows[f"folder_b{batch}_model"] = last.seconds["model"] / n
        rows[f"folder_b{batch}_waiting_on_images"] = last.seconds["wait_decode"] / n
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    share = last.seconds["wait_decode"] / run
    verdict = "decode-bound" if share > DECODE_BOUND_SHARE else "model-bound"
    hint = (
        f"at batch {batch} the engine waited on image decoding for {share:.0%} of the run: {verdict}; "
        f"one image takes {rows['folder_image_decode_1_thread'] * 1000:.1f} ms to decode and preprocess "
        f"on one thread and {rows[f'folder_b{batch}_model'] * 1000:.1f} ms in the models"
    )
    logger.info("folder bench: %s", hint)
    ratios = {
        "folder b1: images per second": 1.0 / rows["folder_b1"],
        f"folder b{batch}: images per second": 1.0 / rows[f"folder_b{batch}"],
        f"folder: b1 / b{batch}": rows["folder_b1"] / rows[f"folder_b{batch}"],
        f"folder b{batch}: waiting on images / run ({verdict})": share,
        f"folder b{batch}: model / image decode (1 thread)": (
            rows[f"folder_b{batch}_model"] / max(rows["folder_image_decode_1_thread"], 1e-9)
        ),
    }
    complete = all(s.captioned == n and not s.failures for s in summaries.values())
    checks = {f"folder: all {n} images captioned at b1 and b{batch}, no failures": complete}
    return {"seconds_per_image": rows, "ratios": ratios, "checks": checks, "notes": {"folder": hint}}
