"""The one captioning path: pixels -> CLIP features -> captioner -> ``CaptionResult``.

Every front end captions through here: the CLI (``icg caption``), the folder engine (each batch, and
the dry run's preview), the standalone app and the WebUI tab, the img2img button, the API and the
doctor's smoke test. ``caption_batch`` is the step they share (one batch of decoded or preprocessed
images, inside ``manager.session()``); ``caption_images`` loads image files first; ``caption_keywords``
is SBG's keywords-in path. Decoding arrives as a ``DecodingConfig`` or as a mapping of overrides of the
model's own defaults (``resolve_decoding``); everything else as ``CaptionOptions``. Nothing is passed
through globals or by changing a cached model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icg.captioners.result import CaptionResult
from icg.config import DecodingConfig
from icg.errors import ConfigError
from icg.options import DECODING, CaptionOptions
from icg.phases import mark

Decoding = DecodingConfig | Mapping[str, Any] | None


def resolve_decoding(captioner: Any, decoding: Decoding) -> DecodingConfig | None:
    """A ``DecodingConfig`` as it is; a mapping of overrides (checked against ``icg.options.DECODING``)
    applied to the captioner's defaults; ``None`` or no overrides: ``None`` (the captioner's own)."""
    if decoding is None or isinstance(decoding, DecodingConfig):
        return decoding
    overrides = DECODING.check(decoding, "decoding")
    if not overrides:
        return None
    base = getattr(captioner, "decoding", None) or DecodingConfig()
    return base.replace(**overrides)


def caption_batch(
    manager: Any,
    model: str,
    images: Any,
    *,
    decoding: Decoding = None,
    options: CaptionOptions | None = None,
) -> list[CaptionResult]:
    """One batch: upright RGB PIL images or a preprocessed ``(B, 3, H, W)`` pixel tensor -> one result
    each, with the encode time per image in ``timings``. Runs inside ``manager.session()``."""
    if len(images) == 0:
        return []
    with manager.session():
        captioner = manager.captioner(model)
        clip = manager.clip(captioner.clip_spec)
        mark("models", modules=True)
        start = time.perf_counter()
        feats = clip.encode_images(images, batch_size=len(images), normalize=captioner.normalize)
        encode_time = (time.perf_counter() - start) / len(images)
        results = captioner.caption_features(feats, resolve_decoding(captioner, decoding), options)
    for result in results:
        result.timings = {"encode": encode_time, **result.timings}
    return results


def caption_images(
    manager: Any,
    model: str,
    images: Sequence[Any],
    *,
    decoding: Decoding = None,
    options: CaptionOptions | None = None,
    batch_size: int = 8,
) -> list[CaptionResult]:
    """Caption ``images`` (paths, bytes or PIL images) with ``model`` (registry id or path).

    Raises ``ImageError`` for an unreadable image: callers that must go on past bad files (folder
    batches) load images themselves and call ``caption_batch``.
    """
    from icg.imaging import load_image

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    sources = [str(im) if isinstance(im, (str, Path)) else None for im in images]
    start = time.perf_counter()
    pil = [load_image(im) for im in images]
    load_time = (time.perf_counter() - start) / max(len(pil), 1)
    results: list[CaptionResult] = []
    for first in range(0, len(pil), batch_size):
        chunk = pil[first : first + batch_size]
        results += caption_batch(manager, model, chunk, decoding=decoding, options=options)
    for result, source in zip(results, sources):
        result.timings = {"load": load_time, **result.timings}
        result.source = source
    return results


def caption_keywords(
    manager: Any,
    model: str,
    keywords: Sequence[str] | str,
    *,
    decoding: Decoding = None,
    options: CaptionOptions | None = None,
    image: Any = None,
) -> CaptionResult:
    """A caption written from ``keywords`` by a model that takes them (SBG); with ``image`` (a path,
    bytes or PIL image) the candidates are re-ranked against it as in a normal SBG caption."""
    from icg.imaging import load_image

    words = keywords.split(",") if isinstance(keywords, str) else list(keywords)
    if not any(str(w).strip() for w in words):
        raise ConfigError("no keywords: type some (comma-separated) or caption an image first")
    pil = None if image is None else load_image(image)
    with manager.session():
        captioner = manager.captioner(model)
        if not hasattr(captioner, "caption_keywords"):
            kind = getattr(captioner, "kind", "this kind of model")
            raise ConfigError(
                f"model {model!r} ({kind}) does not write captions from keywords; choose an SBG model"
            )
        features = None
        if pil is not None:
            clip = manager.clip(captioner.clip_spec)
            features = clip.encode_images([pil], normalize=captioner.normalize)
        return captioner.caption_keywords(words, resolve_decoding(captioner, decoding), features, options)
