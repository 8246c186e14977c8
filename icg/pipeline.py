"""The one entry point for captioning: images -> CLIP features -> captioner -> ``CaptionResult``.

The CLI, the standalone app, the WebUI tab, the img2img button and the API call ``caption_images``.
Folder batches use ``icg.batch.engine.run_batch``, which loads and decodes images in background threads
and calls ``captioner.caption_features`` directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icg.captioners.result import CaptionResult
from icg.config import DecodingConfig
from icg.models.manager import ModelManager


def caption_images(
    manager: ModelManager,
    model: str,
    images: Sequence[Any],
    *,
    decoding: DecodingConfig | None = None,
    batch_size: int = 8,
) -> list[CaptionResult]:
    """Caption ``images`` (paths, bytes or PIL images) with ``model`` (registry id or path).

    Raises ``ImageError`` for an unreadable image: callers that must go on past bad files (folder
    batches) load images themselves and pass PIL images.
    """
    from icg.imaging import load_image

    sources = [str(im) if isinstance(im, (str, Path)) else None for im in images]
    start = time.perf_counter()
    pil = [load_image(im) for im in images]
    load_time = (time.perf_counter() - start) / max(len(pil), 1)
    results: list[CaptionResult] = []
    with manager.session():
        captioner = manager.captioner(model)
        clip = manager.clip(captioner.clip_spec)
        for first in range(0, len(pil), batch_size):
            chunk = pil[first : first + batch_size]
            start = time.perf_counter()
            feats = clip.encode_images(chunk, normalize=captioner.normalize)
            encode_time = (time.perf_counter() - start) / len(chunk)
            for result in captioner.caption_features(feats, decoding):
                result.timings = {"load": load_time, "encode": encode_time, **result.timings}
                results.append(result)
    for result, source in zip(results, sources):
        result.source = source
    return results
