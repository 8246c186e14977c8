"""The folder engine on real files: every sidecar policy, bad files, manifests, stop, dry run, mirroring."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import io
import os
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icg.batch import (
    BatchOptions,
    auto_batch_size,
    plan_batch,
    run_batch,
)
from icg.captioners.result import CaptionResult, Keyword
from icg.clip_encoder import spec_from_folder
from icg.config import DecodingConfig
from icg.errors import ConfigError, IcgError
from icg.models.manager import Factories, ModelManager, RuntimeConfig
from icg.options import BATCH_TEMPLATE, KEYWORDS_TEMPLATE
from icg.pipeline import caption_images
from icg.prompt import PromptTemplate
from icg.sinks import MANIFEST_FIELDS, read_manifest
from tests import fixtures

DECODING = {"max_new_tokens": 6}


# ---------------------------------------------------------------------------------------------- shared
# Plain cached functions (not fixtures) so the other batch test modules share one set of tiny models.


@functools.cache
def tiny_models() -> dict[str, str]:
    """The fixture models in their real formats, written once per test session."""
    folder = Path(tempfile.mkdtemp(prefix="icg-batch-tests-"))
    atexit.register(shutil.rmtree, folder, True)
    return fixtures.write_all(folder)


@functools.cache
def tiny_manager() -> ModelManager:
    models = tiny_models()
    return ModelManager(
        RuntimeConfig(device="cpu", clip=models["clip_dir"], tokenizer=models["tokenizer_dir"])
    )


def make_images(folder: Path, names, size=(40, 32)) -> list[Path]:
    """Random-noise images (one seed per name, so each gets its own caption) in the format of the name."""
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def options(root, **changes) -> BatchOptions:
    settings = {"model": tiny_models()["clip_prefix_pt"], "batch_size": 4, "decoding": DECODING, **changes}
    return BatchOptions(root, **settings)


def reference_texts(paths, template: PromptTemplate | None = None) -> dict[str, str]:
    """What the sidecar of each image should say, from the one captioning entry point (``caption_images``)."""
    template = template or PromptTemplate(BATCH_TEMPLATE)
    manager, model = tiny_manager(), tiny_models()["clip_prefix_pt"]
    with manager.session():
        cfg = manager.captioner(model).decoding.replace(**DECODING)
    results = caption_images(manager, model, [str(p) for p in paths], decoding=cfg, batch_size=4)
    return {p.name: template.compose(r.caption) for p, r in zip(paths, results)}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (hidden ones too) with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_size if name in filenames else -1, st.st_mtime_ns)
    return out


def temp_files(folder: Path) -> list[str]:
    return [name for _, _, files in os.walk(folder) for name in files if name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- policies


@pytest.mark.parametrize("policy", ["skip", "overwrite", "append", "prepend"])
def test_every_policy_on_real_files_and_rerun_changes_nothing(tmp_path, policy):
    paths = make_images(tmp_path, ["a.png", "b.jpg", "sub/c.png"])
    expected = reference_texts(paths)
    assert len(set(expected.values())) == 3 and all(expected.values())
    (tmp_path / "a.txt").write_bytes(b"old tags\r\n")
    summary = run_batch(tiny_manager(), options(tmp_path, policy=policy))

    old, new_a = "old tags\r\n", expected["a.png"] + "\r\n"  # the file's CRLF convention is kept
    want_a = {"skip": old, "overwrite": new_a, "append": old + new_a, "prepend": new_a + old}[policy]
    assert (tmp_path / "a.txt").read_bytes().decode() == want_a
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == expected["b.jpg"] + "\n"
    assert (tmp_path / "sub" / "c.txt").read_text(encoding="utf-8") == expected["c.png"] + "\n"
    counted = {"skip": "skipped", "overwrite": "overwritten", "append": "appended", "prepend": "prepended"}
    assert summary.counts["new"] == 2 and summary.counts[counted[policy]] == 1
    assert summary.captioned == (2 if policy == "skip" else 3)
    assert summary.exit_code == 0 and not summary.failures and not summary.stopped
    assert temp_files(tmp_path) == []

    before = {p: p.read_bytes() for p in tmp_path.rglob("*.txt")}
    again = run_batch(tiny_manager(), options(tmp_path, policy=policy))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.txt")} == before  # no caption doubled or lost
    if policy == "skip":
        assert again.counts["skipped"] == 3 and again.processed == 0
    elif policy == "overwrite":
        assert again.counts["overwritten"] == 3
    else:
        assert again.counts["unchanged"] == 3  # the caption is already the last (first) part


def test_append_with_a_custom_separator(tmp_path):
    (path,) = make_images(tmp_path, ["a.png"])
    (tmp_path / "a.txt").write_text("tag1, tag2\n", encoding="utf-8")
    run_batch(tiny_manager(), options(tmp_path, policy="append", separator=", "))
    assert (tmp_path / "a.txt").read_text(
        encoding="utf-8"
    ) == f"tag1, tag2, {reference_texts([path])['a.png']}\n"


def test_sidecar_extension_is_configurable(tmp_path):
    make_images(tmp_path, ["a.png"])
    run_batch(tiny_manager(), options(tmp_path, sidecar_extension="caption"))
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".png"] == ["a.caption"]


# ---------------------------------------------------------------------------------------------- bad files


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_bad_corpus(folder: Path) -> tuple[set[str], set[str]]:
    """Broken files and awkward-but-valid ones, mixed with plain images; returns (bad, good) names."""
    make_images(folder, ["good1.jpg", "good2.png", "sub/good3.png"])
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_bytes(b"this is not an image\n" * 10)
    Image.new("RGB", (100, 100), (9, 9, 9)).save(folder / "bomb.png")  # over the test's max_pixels=5000
    data = _png_bytes(Image.new("L", (1, 1)))  # a 1x1 PNG whose header claims 100000 x 100000
    ihdr = struct.pack(">II", 10**5, 10**5) + data[24:29]
    (folder / "claims_huge.png").write_bytes(
        data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + data[33:]
    )
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(folder / "deep16.png")
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (10, 0, 30, 20))
    palette.save(folder / "palette_trns.png", transparency=0)
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    bad = {"truncated.jpg", "empty.png", "notes.jpg", "bomb.png", "claims_huge.png"}
    good = {"good1.jpg", "good2.png", "sub/good3.png", "cmyk.jpg", "deep16.png", "palette_trns.png"}
    return bad, good | {"animated.gif", "rotated.jpg"}


def test_bad_files_never_stop_the_run(tmp_path):
    bad, good = make_bad_corpus(tmp_path)
    results = []
    summary = run_batch(
        tiny_manager(),
        options(tmp_path, max_pixels=5000, manifest=tmp_path / "out.jsonl"),
        on_result=results.append,
    )
    assert summary.total == len(bad) + len(good) == summary.processed
    assert {f.key for f in summary.failures} == bad
    reasons = {f.key: f.reason for f in summary.failures}
    assert "empty file" in reasons["empty.png"]
    assert "not an image" in reasons["notes.jpg"]
    assert "too large" in reasons["bomb.png"] and "10000 pixels" in reasons["bomb.png"]
    assert "decompression bomb" in reasons["claims_huge.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert all(str(tmp_path) not in r for r in reasons.values())  # the path is in its own field
    assert all(f.path == str(tmp_path / f.key) for f in summary.failures)
    assert summary.counts["failed"] == len(bad) and summary.counts["new"] == len(good)
    assert summary.exit_code == 1
    for key in good:
        sidecar = (tmp_path / key).with_suffix(".txt")
        assert sidecar.read_text(encoding="utf-8").strip(), key
    for key in bad:
        assert not (tmp_path / key).with_suffix(".txt").exists()
    rows = {row["path"]: row for row in read_manifest(tmp_path / "out.jsonl")}
    assert set(rows) == bad | good
    assert {k for k, r in rows.items() if r["status"] == "failed"} == bad
    assert all(rows[k]["error"] == reasons[k] for k in bad)
    assert sorted(r.key for r in results) == sorted(bad | good)
    assert {r.key for r in results if not r.ok} == bad


def test_failed_images_are_retried_by_the_next_run(tmp_path):
    make_images(tmp_path, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    first = run_batch(tiny_manager(), options(tmp_path, manifest=manifest))
    assert first.exit_code == 1
    make_images(tmp_path, ["b.png"])  # the user fixes the file
    second = run_batch(tiny_manager(), options(tmp_path, manifest=manifest))
    assert second.exit_code == 0 and second.counts["new"] == 1 and second.plan_counts["done"] == 1
    statuses = [(r["path"], r["status"]) for r in read_manifest(manifest)]
    assert statuses == [("a.png", "done"), ("b.png", "failed"), ("b.png", "done")]


# ---------------------------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("name", ["captions.jsonl", "captions.csv"])
def test_manifest_content(tmp_path, name):
    paths = make_images(tmp_path, ["a.png", "b.png", "sub/c.jpg"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "b.txt").write_text("kept\n", encoding="utf-8")
    manifest = tmp_path / name
    summary = run_batch(tiny_manager(), options(tmp_path, manifest=manifest))
    expected = reference_texts(paths)
    rows = read_manifest(manifest)
    assert [r["path"] for r in rows] == ["a.png", "b.png", "broken.png", "sub/c.jpg"]  # relative, "/"
    by_path = {r["path"]: r for r in rows}
    for path in paths:
        row = by_path[path.relative_to(tmp_path).as_posix()]
        assert set(row) == set(MANIFEST_FIELDS)
        assert row["status"] == "done" and row["error"] is None and row["seed"] is None
        assert row["model"] == tiny_models()["clip_prefix_pt"] and row["keywords"] == []
        assert row["caption"].endswith(".")  # the model's caption, as it came
        assert row["settings"]["prompt"] == expected[path.name]
        assert row["settings"]["decoding"]["max_new_tokens"] == 6
        assert row["settings"]["sidecar"] == str(path.with_suffix(".txt"))
    # skip policy and an existing sidecar: the manifest still gets the caption, the sidecar is left alone
    assert by_path["b.png"]["settings"]["action"] == "manifest"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "kept\n"
    assert by_path["a.png"]["settings"]["action"] == "new"
    assert by_path["broken.png"]["status"] == "failed" and by_path["broken.png"]["error"]
    assert summary.counts["manifest_only"] == 1 and summary.counts["new"] == 2
    raw = manifest.read_text(encoding="utf-8")
    assert raw.splitlines()[0] == ",".join(MANIFEST_FIELDS) if name.endswith(".csv") else raw.startswith("{")


def test_manifest_only_writes_no_sidecars(tmp_path):
    make_images(tmp_path, ["a.png", "b.png"])
    manifest = tmp_path / "m.jsonl"
    summary = run_batch(tiny_manager(), options(tmp_path, write_sidecars=False, manifest=manifest))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "m.jsonl"]
    assert summary.counts["manifest_only"] == 2
    assert [r["settings"]["sidecar"] for r in read_manifest(manifest)] == [None, None]


def test_no_resume_replaces_the_manifest(tmp_path):
    make_images(tmp_path, ["a.png"])
    manifest = tmp_path / "m.jsonl"
    run_batch(tiny_manager(), options(tmp_path, manifest=manifest, write_sidecars=False))
    assert plan_batch(options(tmp_path, manifest=manifest, write_sidecars=False)).counts()["done"] == 1
    summary = run_batch(
        tiny_manager(), options(tmp_path, manifest=manifest, write_sidecars=False, resume=False)
    )
    assert summary.captioned == 1 and len(read_manifest(manifest)) == 1


# ---------------------------------------------------------------------------------------------- stop / resume


def test_stop_finishes_the_current_batch_and_a_rerun_does_the_rest(tmp_path):
    names = [f"img{i:02d}.png" for i in range(10)]
    paths = make_images(tmp_path, names)
    for path in paths:
        path.with_suffix(".txt").write_text("old\n", encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    progress = []

    def on_progress(done, total, info):
        progress.append((done, total))

    stop = lambda: len(progress) > 1  # noqa: E731 - after the first batch
    first = run_batch(
        tiny_manager(),
        options(tmp_path, policy="append", manifest=manifest),
        on_progress=on_progress,
        should_stop=stop,
    )
    assert first.stopped and first.exit_code == 130
    assert first.processed == 4 and first.counts["appended"] == 4
    assert progress == [(0, 10), (4, 10)]
    appended = [p for p in paths if p.with_suffix(".txt").read_text(encoding="utf-8") != "old\n"]
    assert appended == paths[:4]
    assert len(read_manifest(manifest)) == 4

    second = run_batch(tiny_manager(), options(tmp_path, policy="append", manifest=manifest))
    assert second.plan_counts["done"] == 4 and second.processed == 6 and second.counts["appended"] == 6
    expected = reference_texts(paths)
    for path in paths:
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == f"old\n{expected[path.name]}\n"
    assert Counter(r["path"] for r in read_manifest(manifest)) == Counter(names)


def test_stop_before_the_first_batch_writes_nothing(tmp_path):
    make_images(tmp_path, ["a.png", "b.png"])
    summary = run_batch(tiny_manager(), options(tmp_path), should_stop=lambda: True)
    assert summary.stopped and summary.processed == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_progress_and_result_callbacks(tmp_path):
    make_images(tmp_path, [f"i{i}.png" for i in range(6)])
    (tmp_path / "i0.txt").write_text("done before\n", encoding="utf-8")
    calls, results = [], []
    summary = run_batch(
        tiny_manager(),
        options(tmp_path, batch_size=2),
        on_progress=lambda done, total, info: calls.append((done, total, info)),
        on_result=results.append,
    )
    assert [(d, t) for d, t, _ in calls] == [(0, 5), (2, 5), (4, 5), (5, 5)]
    last = calls[-1][2]
    assert last["skipped"] == 1 and last["found"] == 6 and last["current"] == "i5.png" and last["eta"] == 0
    assert [r.key for r in results] == [f"i{i}.png" for i in range(1, 6)]
    assert all(r.ok and r.action == "new" and r.text for r in results)
    assert summary.images_per_second > 0 and summary.batch_size == 2


def test_leftover_temp_files_of_a_killed_run_are_removed(tmp_path):
    make_images(tmp_path, ["a.png"])
    ours = tmp_path / ".a.txt.0123456789ab.tmp"
    ours.write_text("half a capt", encoding="utf-8")
    foreign = tmp_path / ".notes.txt.0123456789ab.tmp"
    foreign.write_text("not ours to delete", encoding="utf-8")
    summary = run_batch(tiny_manager(), options(tmp_path))
    assert summary.stale_temps_removed == 1
    assert not ours.exists() and foreign.exists()


def test_two_images_with_one_sidecar_name_conflict(tmp_path):
    make_images(tmp_path, ["a.jpg", "a.png", "b.png"])
    summary = run_batch(tiny_manager(), options(tmp_path))
    assert [(f.key, "also the caption file of a.jpg" in f.reason) for f in summary.failures] == [
        ("a.png", True)
    ]
    assert summary.counts["new"] == 2 and summary.exit_code == 1
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == reference_texts([tmp_path / "a.jpg"])[
        "a.jpg"
    ] + "\n"


# ---------------------------------------------------------------------------------------------- dry run


def test_dry_run_writes_nothing_and_previews_what_a_run_writes(tmp_path):
    root = tmp_path / "images"
    make_images(root, ["a.png", "b.png", "c.png", "d/e.png"])
    (root / "b.txt").write_text("old\n", encoding="utf-8")
    before = snapshot(tmp_path)
    opts = options(root, policy="append", manifest=tmp_path / "m.csv", dry_run=True, preview=3)
    summary = run_batch(tiny_manager(), opts)
    assert snapshot(tmp_path) == before
    assert summary.dry_run and summary.processed == 0 and summary.exit_code == 0
    assert summary.plan_counts == {
        "new": 3,
        "overwrite": 0,
        "append": 1,
        "prepend": 0,
        "manifest": 0,
        "skip": 0,
        "done": 0,
        "conflict": 0,
    }
    assert [(p.key, p.action) for p in summary.preview] == [
        ("a.png", "new"),
        ("b.png", "append"),
        ("c.png", "new"),
    ]

    out_dir = options(root, output_dir=root / "captions", dry_run=True)
    run_batch(tiny_manager(), out_dir)
    assert snapshot(tmp_path) == before  # the output folder is not even created

    run_batch(tiny_manager(), dataclasses.replace(opts, dry_run=False))
    for item in summary.preview:
        assert Path(item.sidecar).read_text(encoding="utf-8").splitlines()[-1] == item.text


def test_plan_batch_counts_without_loading_a_model(tmp_path):
    make_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "a.txt").write_text("x\n", encoding="utf-8")
    calls = []
    manager = ModelManager(RuntimeConfig(device="cpu"), Factories(clip=calls.append, captioner=calls.append))
    plan = plan_batch(options(tmp_path, policy="overwrite"))
    assert [(i.key, i.action) for i in plan.items] == [
        ("a.png", "overwrite"),
        ("b.png", "new"),
        ("c.png", "new"),
    ]
    assert [i.key for i in plan.todo] == ["a.png", "b.png", "c.png"]
    summary = run_batch(manager, options(tmp_path, dry_run=True, preview=0))
    assert summary.plan_counts["skip"] == 1 and summary.plan_counts["new"] == 2 and calls == []


# ---------------------------------------------------------------------------------------------- output folder


@pytest.mark.parametrize("inside", [True, False], ids=["inside-root", "elsewhere"])
def test_output_dir_mirrors_the_tree(tmp_path, inside):
    root = tmp_path / "images"
    make_images(root, ["a.png", "x/y/b.png"])
    out = root / "captions" if inside else tmp_path / "captions"
    make_images(out, ["stray.png"])  # an image in the output folder is never captioned
    summary = run_batch(tiny_manager(), options(root, output_dir=out))
    assert summary.total == 2 and summary.counts["new"] == 2
    assert (out / "a.txt").is_file() and (out / "x" / "y" / "b.txt").is_file()
    assert not list(root.glob("*.txt")) and not list((root / "x" / "y").glob("*.txt"))
    assert not (out / "stray.txt").exists()
    assert run_batch(tiny_manager(), options(root, output_dir=out)).counts["skipped"] == 2


def test_output_dir_equal_to_root_means_beside_the_images(tmp_path):
    make_images(tmp_path, ["a.png"])
    summary = run_batch(tiny_manager(), options(tmp_path, output_dir=tmp_path))
    assert summary.counts["new"] == 1 and (tmp_path / "a.txt").is_file()


def test_manifest_that_would_be_a_sidecar_is_refused(tmp_path):
    make_images(tmp_path, ["captions.png"])
    with pytest.raises(ConfigError, match="would also be the caption file"):
        plan_batch(options(tmp_path, sidecar_extension=".csv", manifest=tmp_path / "captions.csv"))


def test_not_recursive_and_extension_filter(tmp_path):
    make_images(tmp_path, ["a.png", "b.jpg", "sub/c.png"])
    plan = plan_batch(options(tmp_path, recursive=False, extensions=("PNG",)))
    assert [i.key for i in plan.items] == ["a.png"]


# ---------------------------------------------------------------------------------------------- composing


class FakeCaptioner:
    """Records the batches it gets; captions images in the order it sees them."""

    kind = "fake"
    model_id = "fake-model"
    normalize = True
    decoding = DecodingConfig(num_beams=2)

    def __init__(self, clip_spec) -> None:
        self.clip_spec = clip_spec
        self.batches: list[int] = []
        self.decodings: list[DecodingConfig | None] = []

    def caption_features(self, features, decoding=None, options=None):
        self.batches.append(len(features))
        self.decodings.append(decoding)
        first = sum(self.batches[:-1])
        keywords = [Keyword("Dog", 0.9, "flat"), Keyword("grass", 0.5, "flat"), Keyword("dog", 0.1, "flat")]
        return [
            CaptionResult(f"A Photo Number {first + i}.", "fake-model", keywords=list(keywords), seed=7)
            for i in range(len(features))
        ]


def fake_manager():
    fake = FakeCaptioner(spec_from_folder(tiny_models()["clip_dir"]))
    return ModelManager(RuntimeConfig(device="cpu"), Factories(captioner=lambda name, manager: fake)), fake


def test_batches_keywords_template_and_decoding_overrides(tmp_path):
    make_images(tmp_path, [f"i{i:02d}.png" for i in range(10)])
    (tmp_path / "i03.png").write_bytes(b"")  # dropped from its batch, the others still run together
    manager, fake = fake_manager()
    template = PromptTemplate(
        KEYWORDS_TEMPLATE, prefix="sks style", suffix="masterpiece", lowercase=True, max_keywords=1
    )
    summary = run_batch(
        manager,
        BatchOptions(
            tmp_path,
            model="fake",
            batch_size=4,
            template=template,
            decoding={"seed": 3},
            manifest=tmp_path / "m.jsonl",
        ),
    )
    assert fake.batches == [3, 4, 2]
    assert fake.decodings == [DecodingConfig(num_beams=2, seed=3)] * 3  # the model's defaults + overrides
    assert (tmp_path / "i00.txt").read_text(
        encoding="utf-8"
    ) == "sks style, a photo number 0, dog, masterpiece\n"
    assert (tmp_path / "i04.txt").read_text(
        encoding="utf-8"
    ) == "sks style, a photo number 3, dog, masterpiece\n"
    row = read_manifest(tmp_path / "m.jsonl")[0]
    assert (row["caption"], row["keywords"], row["model"], row["seed"]) == (
        "A Photo Number 0.",
        ["Dog", "grass", "dog"],
        "fake-model",
        7,
    )
    assert summary.failed == 1 and summary.captioned == 9

    run_batch(manager, BatchOptions(tmp_path, model="fake", batch_size=4, policy="overwrite"))
    assert fake.decodings[-1] is None  # no overrides: the captioner's own defaults
    assert (tmp_path / "i00.txt").read_text(
        encoding="utf-8"
    ) == "A Photo Number 9\n"  # caption only by default


def test_auto_batch_size():
    assert auto_batch_size("cpu") == 8
    assert auto_batch_size("cuda:1") == 32
    assert BatchOptions("x").batch_size is None


@pytest.mark.parametrize(
    "changes",
    [
        {"policy": "merge"},
        {"batch_size": 0},
        {"workers": 0},
        {"sidecar_extension": ".png"},
        {"manifest": "captions.txt"},
        {"write_sidecars": False},
        {"decoding": {"beams": 3}},
        {"decoding": {"top_p": 2.0}},
        {"extensions": ("", " . ")},
        {"template": "{caption}"},
        {"model": ""},
    ],
)
def test_invalid_options_are_config_errors(tmp_path, changes):
    with pytest.raises(ConfigError):
        BatchOptions(tmp_path, **changes)


def test_missing_folder_is_an_error_and_creates_no_manifest(tmp_path):
    with pytest.raises(IcgError, match="not found"):
        run_batch(tiny_manager(), options(tmp_path / "nope", manifest=tmp_path / "m.jsonl"))
    assert not (tmp_path / "m.jsonl").exists()


def test_options_to_dict_is_json_ready(tmp_path):
    import json

    data = options(tmp_path, manifest=tmp_path / "m.csv", extensions=("png",)).to_dict()
    assert json.loads(json.dumps(data))["manifest"] == str(tmp_path / "m.csv")
    assert data["extensions"] == [".png"] and data["template"]["template"] == BATCH_TEMPLATE
