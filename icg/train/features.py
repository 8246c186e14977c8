"""CLIP image features of a caption dataset, computed once per image, stored without pickles.

``extract_features`` writes into one folder::

    features.json               manifest: format, CLIP, feature size, shards, image-list fingerprint
    features-00000.safetensors  "features" (rows, D) float32 raw CLIP outputs (not normalised), "ok" (rows,)
    features-00001.safetensors  ...
    captions.jsonl              one line per image: row, image, path, captions, ok

Images are read on worker threads and encoded in batches; every shard is written atomically and the
manifest is updated after each one, so an interrupted run resumes at the first missing shard. An image
that can't be read gets a zero row with ``ok: false`` and is skipped by training and evaluation.

Features are stored raw; whoever reads them L2-normalises them when the model wants that (the
published models do, the original ClipCap checkpoints don't).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.sinks import atomic_write_json, atomic_write_with
from icg.train.datasets import DEFAULT_TEST_IMAGES, CaptionDataset, DatasetError, check_test_images

log = logging.getLogger(__name__)

FORMAT = "icg-features"
VERSION = 1
MANIFEST_NAME = "features.json"
CAPTIONS_NAME = "captions.jsonl"
DEFAULT_SHARD_SIZE = 2048


@dataclass(frozen=True)
class FeatureRecord:
    """One image of a feature folder: its feature row and captions."""

    row: int
    image: str
    path: str
    captions: tuple[str, ...]
    ok: bool = True


class FeatureStore:
    """A feature folder written by ``extract_features``: the manifest, the records and the features."""

    def __init__(self, folder: Path, manifest: dict[str, Any], records: list[FeatureRecord]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.records = records
        self._features = None

    @classmethod
    def open(cls, folder: str | Path) -> FeatureStore:
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise DatasetError(
                f"{folder}: not a feature folder (no {MANIFEST_NAME}); run `python -m icg features`"
            )
        if not manifest.get("complete"):
            raise DatasetError(
                f"{folder}: feature extraction is unfinished; run `python -m icg features` again"
            )
        captions = folder / CAPTIONS_NAME
        try:
            lines = captions.read_text(encoding="utf-8").splitlines()
            records = [_record(json.loads(line)) for line in lines if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{captions}: unreadable ({err})") from err
        if len(records) != manifest["count"]:
            raise DatasetError(f"{captions}: {len(records)} images, the manifest says {manifest['count']}")
        return cls(folder, manifest, records)

    @staticmethod
    def is_feature_folder(path: str | Path) -> bool:
        return (Path(path) / MANIFEST_NAME).is_file()

    @property
    def clip(self) -> dict[str, Any]:
        return dict(self.manifest["clip"])

    @property
    def clip_id(self) -> str:
        return str(self.manifest["clip_id"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def test_images(self) -> int:
        return int(self.manifest.get("test_images", DEFAULT_TEST_IMAGES))

    def features(self):
        """All rows as one ``(N, D)`` float32 tensor (raw CLIP outputs), loaded once."""
        if self._features is None:
            import torch
            from safetensors.torch import load_file

            parts = []
            for shard in self.manifest["shards"]:
                path = self.folder / shard["file"]
                try:
                    parts.append(load_file(str(path))["features"].float())
                except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
                    raise DatasetError(f"{path}: unreadable feature shard ({err})") from err
            self._features = torch.cat(parts) if parts else torch.empty(0, self.dim)
            if self._features.shape[0] != len(self.records):
                raise DatasetError(
                    f"{self.folder}: the shards hold {self._features.shape[0]} rows, not {len(self.records)}"
                )
        return self._features

    def split(self, test_images: int | None = None) -> tuple[list[FeatureRecord], list[FeatureRecord]]:
        """(train, test) records (unreadable images left out): the last ``test_images`` are the test set."""
        n = self.test_images if test_images is None else test_images
        check_test_images(len(self.records), n, str(self.folder))
        cut = len(self.records) - n
        return [r for r in self.records[:cut] if r.ok], [r for r in self.records[cut:] if r.ok]

    def training_split(
        self, test_images: int | None = None, val_images: int | None = 0
    ) -> tuple[list[FeatureRecord], list[FeatureRecord]]:
        """(train, validation) records: the last ``val_images`` images before the test split are held out
        for a validation loss, as the seed's SBG notebook held out the 1000 images before its test set.
        ``val_images=None``: as many as the test split holds."""
        train, test = self.split(test_images)
        n = len(test) if val_images is None else val_images
        if n < 0:
            raise DatasetError(f"--val-images must be 0 or more, not {n}")
        if n >= len(train) and n > 0:
            raise DatasetError(
                f"{self.folder}: --val-images {n} leaves no training images (the training split has "
                f"{len(train)}); hold out fewer"
            )
        cut = len(train) - n
        return train[:cut], train[cut:]

    def select(self, split: str, test_images: int | None = None) -> list[FeatureRecord]:
        if split == "all":
            return [r for r in self.records if r.ok]
        train, test = self.split(test_images)
        if split == "train":
            return train
        if split == "test":
            return test
        raise DatasetError(f"unknown split {split!r}; expected train, test or all")


def _record(data: dict[str, Any]) -> FeatureRecord:
    return FeatureRecord(
        int(data["row"]), str(data["image"]), str(data["path"]), tuple(data["captions"]), bool(data["ok"])
    )


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable feature manifest ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an ICG feature manifest")
    if data.get("version", 0) > VERSION:
        raise DatasetError(f"{path}: feature format version {data['version']} is newer than this ICG reads")
    return data


def portable_clip(spec) -> dict[str, Any]:
    """The CLIP to record beside features and checkpoints: arch + pretrained tag when it has one (resolved
    against the models folder at load time), else its local config and weights paths."""
    if spec.pretrained:
        return {"arch": spec.arch, "pretrained": spec.pretrained, "quick_gelu": spec.quick_gelu}
    return {
        "arch": spec.arch,
        "pretrained": None,
        "quick_gelu": spec.quick_gelu,
        "config_path": spec.config_path,
        "weights_path": spec.weights_path,
    }


def fingerprint(dataset: CaptionDataset, clip_id: str) -> str:
    """Identifies the image list and CLIP that a feature folder was computed for."""
    payload = json.dumps(
        {"clip": clip_id, "images": [im.name for im in dataset.images]}, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------- extraction
def extract_features(
    dataset: CaptionDataset,
    encoder,
    out_dir: str | Path,
    *,
    clip: dict[str, Any],
    test_images: int = DEFAULT_TEST_IMAGES,
    batch_size: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 2,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> FeatureStore:
    """Encode every image of ``dataset`` with ``encoder`` (a ``ClipEncoder``) into ``out_dir``.

    Resumes a previous run for the same images and CLIP; refuses a folder made for other images or
    another CLIP unless ``overwrite``. ``on_progress(done, total)`` is called after every batch.
    """
    check_test_images(len(dataset), test_images, dataset.source)
    if batch_size < 1 or shard_size < 1:
        raise DatasetError("--batch-size and --shard-size must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = fingerprint(dataset, encoder.model_id)
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("fingerprint") != key:
        if not overwrite:
            raise DatasetError(
                f"{out}: holds features of other images or another CLIP ({manifest.get('clip_id')}); "
                "pass --overwrite to replace them, or choose another --out"
            )
        manifest = None
    if manifest is None or manifest.get("shard_size") != shard_size:
        for old in out.glob("features-*.safetensors"):
            old.unlink()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": key,
            "clip": clip,
            "clip_id": encoder.model_id,
            "dim": int(encoder.feature_dim),
            "normalized": False,
            "dtype": "float32",
            "count": len(dataset),
            "test_images": test_images,
            "source": dataset.source,
            "dataset_format": dataset.format,
            "shard_size": shard_size,
            "shards": [],
            "failed": [],
            "complete": False,
        }
    manifest["test_images"] = test_images
    manifest["source"] = dataset.source
    done_shards = _valid_shards(out, manifest)
    manifest["shards"] = done_shards
    failed = set(manifest.get("failed", []))
    total = len(dataset)
    done = sum(s["rows"] for s in done_shards)
    if done:
        log.info("%s: resuming after %d of %d images", out, done, total)
    start = time.perf_counter()
    fresh = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for index in range(len(done_shards), (total + shard_size - 1) // shard_size):
            first = index * shard_size
            chunk = dataset.images[first : first + shard_size]
            feats, ok = _encode_chunk(encoder, chunk, pool, batch_size, done, total, on_progress)
            failed |= {im.name for im, good in zip(chunk, ok) if not good}
            name = f"features-{index:05d}.safetensors"
            _save_shard(out / name, feats, ok, first)
            manifest["shards"].append({"file": name, "first": first, "rows": len(chunk)})
            manifest["failed"] = sorted(failed)
            atomic_write_json(out / MANIFEST_NAME, manifest)
            done += len(chunk)
            fresh += len(chunk)
            elapsed = time.perf_counter() - start
            log.info("features: %d/%d images, %.1f images/s", done, total, fresh / max(elapsed, 1e-9))
    if failed:
        log.warning(
            "%s: %d image(s) could not be read and are left out (first: %s)",
            out,
            len(failed),
            sorted(failed)[0],
        )
    _write_captions(out / CAPTIONS_NAME, dataset, failed)
    manifest["complete"] = True
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return FeatureStore.open(out)


def _valid_shards(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The leading shards of the manifest whose files are complete (resume point)."""
    from safetensors import safe_open

    valid = []
    for expected_first, shard in zip(range(0, 1 << 62, manifest["shard_size"]), manifest.get("shards", [])):
        path = out / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as handle:
                rows = handle.get_slice("features").get_shape()[0]
        except Exception:  # noqa: BLE001 - an unreadable shard is recomputed
            break
        if shard["first"] != expected_first or rows != shard["rows"]:
            break
        valid.append(shard)
    return valid


def _encode_chunk(encoder, chunk, pool, batch_size, done, total, on_progress):
    import torch

    rows = [None] * len(chunk)
    for begin in range(0, len(chunk), batch_size):
        part = chunk[begin : begin + batch_size]
        pixels = list(pool.map(lambda im: _load_pixels(encoder, im.path), part))
        good = [i for i, p in enumerate(pixels) if p is not None]
        if good:
            feats = encoder.encode_images(torch.stack([pixels[i] for i in good]), len(good), normalize=False)
            for i, row in zip(good, feats):
                rows[begin + i] = row
        if on_progress is not None:
            on_progress(done + begin + len(part), total)
    dim = int(encoder.feature_dim)
    ok = [r is not None for r in rows]
    feats = torch.stack([r if r is not None else torch.zeros(dim) for r in rows]).float()
    return feats, ok


def _load_pixels(encoder, path: Path):
    from icg.errors import ImageError
    from icg.imaging import load_image

    try:
        return encoder.preprocess_images([load_image(path)])[0]
    except ImageError as err:
        log.warning("%s", err)
        return None


def _save_shard(path: Path, feats, ok: Sequence[bool], first: int) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"features": feats.contiguous(), "ok": torch.tensor(ok, dtype=torch.uint8)}
    atomic_write_with(
        path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "first": str(first)})
    )


def _write_captions(path: Path, dataset: CaptionDataset, failed: set[str]) -> None:
    lines = [
        json.dumps(
            {
                "row": row,
                "image": im.name,
                "path": str(im.path),
                "captions": list(im.captions),
                "ok": im.name not in failed,
            },
            ensure_ascii=False,
        )
        for row, im in enumerate(dataset.images)
    ]
    atomic_write_with(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))


