"""Caption a test split with a model's reference decoding and score it (the seed's evaluation).

``evaluate`` takes a model (registry id or checkpoint folder) and either a dataset (captions file,
Kaggle folder, folder with sidecars) or a feature folder written by ``python -m icg features`` with the
same CLIP (then no image is decoded or encoded again). Captions are written in the ``published`` style
(the predecessor's ``"text ."``), which the seed scored:

- CLIP-prefix: one row, the model's reference decoding (greedy, stop at ".", 67 tokens);
- SBG: one row per number of candidates (default top-1, top-2 and top-5, the seed's table): N samples
  drawn with a fixed seed, re-ranked by CLIP, the best kept; top-1 is the first sample as drawn.

The report (JSON) records the protocol, the scores of each row, what could not be computed and why,
and the captions go to a JSONL beside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icg.errors import ConfigError
from icg.eval.metrics import METRICS, TOKENIZATIONS, CaptionScorer, JavaStatus, format_table
from icg.options import CaptionOptions
from icg.sinks import atomic_write

log = logging.getLogger(__name__)

#: Captions as the predecessor wrote them (``"text ."``), the form the seed's numbers were scored on.
PUBLISHED = CaptionOptions(style="published")

REPORT_FORMAT = "icg-eval-report"
REPORT_VERSION = 1
SPLITS = ("test", "train", "all")
DEFAULT_SBG_TOP = (1, 2, 5)


@dataclass(frozen=True)
class EvalOptions:
    split: str = "test"
    test_images: int | None = None  # None: the feature folder's split, else the seed's 1000
    limit: int | None = None  # only the first N images of the split (quick checks)
    batch_size: int = 32
    tokenization: str = "seed"  # "seed": the seed's protocol; "ptb": the COCO protocol
    lowercase: bool = True
    sbg_top: tuple[int, ...] = DEFAULT_SBG_TOP
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    workers: int = 2

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.tokenization not in TOKENIZATIONS:
            raise ConfigError(f"--tokenizer must be one of {', '.join(TOKENIZATIONS)}")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("--batch-size and --limit must be at least 1")
        if not self.sbg_top or min(self.sbg_top) < 1:
            raise ConfigError("--top takes candidate counts of at least 1")


@dataclass(frozen=True)
class _Item:
    name: str
    references: tuple[str, ...]
    path: str | None = None  # image file (dataset input)
    row: int | None = None  # feature row (feature-folder input)


def evaluate(
    manager,
    model: str,
    data: str | Path,
    *,
    options: EvalOptions | None = None,
    images_dir: str | Path | None = None,
    java: JavaStatus | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Caption the chosen split of ``data`` with ``model`` and score it; returns the report (a dict with
    ``rows`` of scores and ``captions`` per image)."""
    import torch

    options = options or EvalOptions()
    start = time.perf_counter()
    with manager.session():
        captioner = manager.captioner(model)
        items, features, source = _load_items(manager, captioner, Path(data), options, images_dir)
        if not items:
            raise ConfigError(f"{data}: the {options.split} split is empty")
        if features is None:
            features = _encode(manager, captioner, items, options, on_progress)
        elif captioner.normalize:
            features = torch.nn.functional.normalize(features, dim=-1)
        prepared = time.perf_counter()
        rows = _rows(captioner, model, options)
        hypotheses: dict[str, list[str]] = {}
        for label, decoding in rows:
            texts = []
            for first in range(0, len(items), options.batch_size):
                batch = features[first : first + options.batch_size]
                texts += [r.caption for r in captioner.caption_features(batch, decoding, PUBLISHED)]
                if on_progress is not None:
                    on_progress(label, min(first + options.batch_size, len(items)), len(items))
            hypotheses[label] = texts
    captioned = time.perf_counter()
    references = {item.name: list(item.references) for item in items}
    results = []
    with CaptionScorer(java) as scorer:
        for label, decoding in rows:
            metrics = scorer.score(
                references,
                {item.name: text for item, text in zip(items, hypotheses[label])},
                tokenization=options.tokenization,
                lowercase=options.lowercase,
                metrics=options.metrics,
            )
            row = {"name": label, "decoding": asdict(decoding), **metrics.to_dict()}
            row.pop("java", None)  # reported once, below
            results.append(row)
        java_status = scorer.java
    end = time.perf_counter()
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "model": model,
        "kind": captioner.kind,
        "data": source,
        "split": options.split,
        "images": len(items),
        "references_per_image": sum(len(i.references) for i in items) / len(items),
        "protocol": {
            "style": "published",
            "tokenization": options.tokenization,
            "lowercase": options.lowercase,
            "seed": options.seed,
            "batch_size": options.batch_size,
            "test_images": options.test_images,
            "metrics": list(options.metrics),
        },
        "rows": results,
        "java": asdict(java_status),
        "seconds": {
            "prepare": prepared - start,
            "caption": captioned - prepared,
            "score": end - captioned,
            "captions_per_s": len(items) * len(rows) / max(captioned - prepared, 1e-9),
        },
        "captions": [
            {
                "image": item.name,
                "references": list(item.references),
                **{k: v[i] for k, v in hypotheses.items()},
            }
            for i, item in enumerate(items)
        ],
    }


def _rows(captioner, model: str, options: EvalOptions) -> list[tuple[str, Any]]:
    """(label, decoding) per table row: the reference decoding; for SBG one row per candidate count."""
    decoding = captioner.decoding
    name = model_label(model)
    if captioner.kind == "sbg":
        return [
            (f"{name} top-{k}", decoding.replace(num_samples=k, seed=options.seed)) for k in options.sbg_top
        ]
    if decoding.strategy == "sample" and decoding.seed is None:
        decoding = decoding.replace(seed=options.seed)
    return [(name, decoding)]


def model_label(model: str) -> str:
    """A short row name: a registry id as it is, a checkpoint path as ``run/epoch-010``."""
    path = Path(model)
    if len(path.parts) <= 1:
        return model
    return "/".join(path.parts[-2:])


def _load_items(manager, captioner, data: Path, options: EvalOptions, images_dir):
    from icg.train.datasets import load_dataset, split_images
    from icg.train.features import FeatureStore

    if FeatureStore.is_feature_folder(data):
        store = FeatureStore.open(data)
        spec = captioner.clip_spec
        if spec is not None and spec.id != store.clip_id:
            raise ConfigError(
                f"{data}: features of CLIP {store.clip_id}, but {captioner.model_id} uses {spec.id}; "
                "evaluate on the dataset itself (or extract features with that CLIP)"
            )
        records = store.select(options.split, options.test_images)[: options.limit]
        items = [_Item(r.image, r.captions, row=r.row) for r in records]
        features = store.features()[[r.row for r in records]] if records else None
        return items, features, str(data)
    dataset = load_dataset(data, images_dir=images_dir)
    if options.split == "all":
        chosen = dataset
    else:
        test_images = 1000 if options.test_images is None else options.test_images
        train, test = split_images(dataset, test_images)
        chosen = test if options.split == "test" else train
    images = chosen.images[: options.limit]
    return [_Item(im.name, im.captions, path=str(im.path)) for im in images], None, dataset.source


def _encode(manager, captioner, items: Sequence[_Item], options: EvalOptions, on_progress):
    """CLIP features of the items' images (read on worker threads, encoded in batches)."""
    import torch

    from icg.imaging import load_image

    clip = manager.clip(captioner.clip_spec)
    parts = []
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for first in range(0, len(items), options.batch_size):
            chunk = items[first : first + options.batch_size]
            images = list(pool.map(lambda item: load_image(item.path), chunk))
            parts.append(clip.encode_images(images, len(images), normalize=captioner.normalize))
            if on_progress is not None:
                on_progress("encode", first + len(chunk), len(items))
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------- output
def write_report(report: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """The report (without the captions) as JSON at ``path``, the captions as JSONL beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    captions_path = path.with_name(path.stem + ".captions.jsonl")
    body = {k: v for k, v in report.items() if k != "captions"}
    body["captions_file"] = captions_path.name
    lines = [json.dumps(c, ensure_ascii=False) for c in report["captions"]]
    _atomic_text(captions_path, "\n".join(lines) + "\n")
    _atomic_text(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    return path, captions_path


def format_report(report: dict[str, Any]) -> str:
    """The seed-style table plus the protocol line and any notes."""
    table = format_table([(row["name"], row["scores"]) for row in report["rows"]])
    proto = report["protocol"]
    lines = [
        f"{report['model']} on {report['data']} ({report['split']}: {report['images']} images, "
        f"{report['references_per_image']:.1f} references each; tokenization {proto['tokenization']}, "
        f"captions in the published style)",
        table,
    ]
    notes = list(dict.fromkeys(note for row in report["rows"] for note in row["notes"]))
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))
