"""CLIP feature extraction: shards + captions.jsonl, resumable, no pickles, unreadable images skipped."""

from __future__ import annotations

import json

import pytest
import torch

from icg.clip_encoder import ClipEncoder
from icg.errors import IcgError
from icg.imaging import load_image
from icg.train.datasets import load_dataset
from icg.train.features import FeatureStore, extract_features, portable_clip
from tests import fixtures
from tests.data import synthetic


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    spec = fixtures.tiny_clip_spec(tmp_path_factory.mktemp("clip"))
    return spec, ClipEncoder.load(spec, device="cpu", dtype="fp32")


@pytest.fixture()
def dataset(tmp_path):
    return load_dataset(synthetic.write_flickr8k(tmp_path / "flickr", n_images=8, captions_per_image=2))


class CountingEncoder:
    """Delegates to a real encoder, counts encoded images, and can fail after a number of batches."""

    def __init__(self, encoder, fail_after: int | None = None) -> None:
        self.encoder = encoder
        self.model_id = encoder.model_id
        self.feature_dim = encoder.feature_dim
        self.encoded = 0
        self.fail_after = fail_after

    def preprocess_images(self, images):
        return self.encoder.preprocess_images(images)

    def encode_images(self, images, batch_size=32, *, normalize=True):
        if self.fail_after is not None and self.encoded >= self.fail_after:
            raise KeyboardInterrupt  # an interrupted run
        self.encoded += len(images)
        return self.encoder.encode_images(images, batch_size, normalize=normalize)


def test_features_are_raw_clip_outputs_in_shards_with_captions(tmp_path, clip, dataset):
    spec, encoder = clip
    store = extract_features(
        dataset,
        encoder,
        tmp_path / "feats",
        clip=portable_clip(spec),
        test_images=2,
        batch_size=3,
        shard_size=3,
    )
    assert [s["rows"] for s in store.manifest["shards"]] == [3, 3, 2]
    expected = encoder.encode_images([load_image(im.path) for im in dataset.images], normalize=False)
    torch.testing.assert_close(store.features(), expected)
    assert store.clip == portable_clip(spec) and store.dim == encoder.feature_dim
    lines = [json.loads(x) for x in (tmp_path / "feats" / "captions.jsonl").read_text().splitlines()]
    assert [(x["row"], x["image"], x["captions"]) for x in lines] == [
        (i, im.name, list(im.captions)) for i, im in enumerate(dataset.images)
    ]
    train, test = store.split()
    assert len(train) == 6 and [r.image for r in test] == [im.name for im in dataset.images[6:]]
    # nothing pickled: only JSON, JSONL and safetensors files
    assert {p.suffix for p in (tmp_path / "feats").iterdir()} == {".json", ".jsonl", ".safetensors"}


def test_an_interrupted_run_resumes_at_the_first_missing_shard(tmp_path, clip, dataset):
    spec, encoder = clip
    out = tmp_path / "feats"
    first = CountingEncoder(encoder, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            dataset, first, out, clip=portable_clip(spec), test_images=0, batch_size=3, shard_size=3
        )
    with pytest.raises(IcgError, match="unfinished"):
        FeatureStore.open(out)
    second = CountingEncoder(encoder)
    store = extract_features(
        dataset, second, out, clip=portable_clip(spec), test_images=0, batch_size=3, shard_size=3
    )
    assert second.encoded == 5  # the first shard (3 images) was kept
    whole = extract_features(dataset, encoder, tmp_path / "whole", clip=portable_clip(spec), test_images=0)
    torch.testing.assert_close(store.features(), whole.features())


def test_other_images_are_refused_unless_overwrite(tmp_path, clip, dataset):
    spec, encoder = clip
    out = tmp_path / "feats"
    extract_features(dataset, encoder, out, clip=portable_clip(spec), test_images=0)
    smaller = dataset.subset(dataset.images[:4], "part")
    with pytest.raises(IcgError, match="--overwrite"):
        extract_features(smaller, encoder, out, clip=portable_clip(spec), test_images=0)
    store = extract_features(smaller, encoder, out, clip=portable_clip(spec), test_images=0, overwrite=True)
    assert len(store.records) == 4 and store.features().shape == (4, encoder.feature_dim)


def test_unreadable_images_get_no_feature_and_are_skipped(tmp_path, clip, dataset, caplog):
    spec, encoder = clip
    dataset.images[1].path.write_bytes(b"not an image")
    store = extract_features(dataset, encoder, tmp_path / "feats", clip=portable_clip(spec), test_images=2)
    assert not store.records[1].ok and store.manifest["failed"] == [dataset.images[1].name]
    assert torch.count_nonzero(store.features()[1]) == 0
    train, _ = store.split()
    assert dataset.images[1].name not in [r.image for r in train] and len(train) == 5
    assert "not an image" in caplog.text or "cannot" in caplog.text
