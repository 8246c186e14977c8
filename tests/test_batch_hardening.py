"""The folder engine against the user's data at its worst: file names that are not UTF-8, append reruns
with sampled captions and kills, a full disk, dangling links, very long names, reruns that fail again,
and read-only caption files (issue 11, "Files and folders")."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icg.batch import run_batch
from icg.batch.engine import plan_batch
from icg.batch.report import format_summary
from icg.cli import main
from icg.sinks import APPEND_STATE_NAME, read_manifest
from tests.test_batch_cli import model_args
from tests.test_batch_engine import make_images, options, tiny_manager

LATIN1_NAME = b"caf\xe9.png"  # a name from an old Latin-1 archive: not valid UTF-8


def _bytes_named_image(root: Path, raw: bytes) -> Path:
    """An image whose file name is the bytes ``raw`` (skips where the file system refuses such names)."""
    if sys.platform in ("win32", "darwin"):
        pytest.skip("this file system stores names as Unicode only")
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), raw)))
    try:
        Image.fromarray(np.full((32, 40, 3), 120, dtype=np.uint8)).save(path, format="PNG")
    except OSError as exc:
        pytest.skip(f"this file system refuses the name: {exc}")
    return path


# ------------------------------------------------------------------------------- 1. names not UTF-8


@pytest.mark.parametrize("manifest_name", ["m.jsonl", "m.csv"])
def test_a_name_that_is_not_utf8_is_captioned_recorded_and_resumed(tmp_path, manifest_name):
    root = tmp_path / "images"
    make_images(root, ["a.png"])
    odd = _bytes_named_image(root, LATIN1_NAME)
    manifest = tmp_path / manifest_name
    first = run_batch(tiny_manager(), options(root, manifest=manifest))
    assert first.exit_code == 0 and first.counts["new"] == 2, first.failures
    assert os.path.exists(os.fsencode(root) + b"/caf\xe9.txt")
    rows = read_manifest(manifest)
    assert sorted(r["path"] for r in rows) == ["a.png", "caf\\xe9.png"]  # the byte as \xNN
    manifest.read_bytes().decode("utf-8")  # the manifest is UTF-8 text
    assert all(r["status"] == "done" for r in rows)
    # the summary and its JSON can be printed on a UTF-8 terminal
    format_summary(first, options(root, manifest=manifest)).encode("utf-8")
    json.dumps(first.to_dict(), ensure_ascii=False, default=str).encode("utf-8")

    second = run_batch(tiny_manager(), options(root, manifest=manifest))
    assert second.plan_counts["done"] == 2 and second.processed == 0
    assert len(read_manifest(manifest)) == 2
    assert odd.exists()


def test_a_failure_with_a_name_that_is_not_utf8_prints(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    bad = os.fsencode(root) + b"/bad\xff.png"
    with open(bad, "wb") as f:
        f.write(b"not an image")
    if sys.platform in ("win32", "darwin"):
        pytest.skip("this file system stores names as Unicode only")
    manifest = tmp_path / "m.jsonl"
    summary = run_batch(tiny_manager(), options(root, manifest=manifest))
    assert summary.exit_code == 1 and summary.failures[0].key == os.fsdecode(b"bad\xff.png")
    text = format_summary(summary, options(root, manifest=manifest))
    assert "bad\\xff.png" in text
    text.encode("utf-8")
    assert json.dumps(summary.to_dict(), ensure_ascii=False)
    assert read_manifest(manifest)[0]["path"] == "bad\\xff.png"


# ------------------------------------------------------------------------------- 2. append reruns


def _sampled(root, seed, **changes):
    decoding = {"max_new_tokens": 6, "strategy": "sample", "seed": seed}
    return options(root, policy="append", decoding=decoding, **changes)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_a_plain_append_rerun_with_sampled_captions_adds_nothing(tmp_path):
    paths = make_images(tmp_path, ["a.png", "b.png"])
    paths[0].with_suffix(".txt").write_text("old tags\n", encoding="utf-8")
    first = run_batch(tiny_manager(), _sampled(tmp_path, seed=1))
    assert first.counts["appended"] == 1 and first.counts["new"] == 1
    after_first = {p.name: _lines(p.with_suffix(".txt")) for p in paths}
    assert len(after_first["a.png"]) == 2 and len(after_first["b.png"]) == 1
    second = run_batch(tiny_manager(), _sampled(tmp_path, seed=2))  # another sample each time
    assert second.processed == 0 and second.plan_counts["done"] == 2
    assert {p.name: _lines(p.with_suffix(".txt")) for p in paths} == after_first
    assert (tmp_path / APPEND_STATE_NAME).is_file()
    text = format_summary(second, _sampled(tmp_path, seed=2))
    assert text.startswith("nothing to do: 2 of 2 images already captioned")
    # --no-resume starts a new append round
    third = run_batch(tiny_manager(), _sampled(tmp_path, seed=3, resume=False))
    assert third.counts["appended"] == 2
    assert [len(_lines(p.with_suffix(".txt"))) for p in paths] == [3, 2]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def test_a_kill_between_the_caption_file_and_the_manifest_does_not_append_twice(tmp_path, monkeypatch):
    paths = make_images(tmp_path, ["a.png", "b.png", "c.png"])
    for path in paths:
        path.with_suffix(".txt").write_text("old\n", encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    from icg.sinks import ManifestWriter

    real_write = ManifestWriter.write
    calls = []

    def write_then_die(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise _Killed  # b.txt has been appended to; its row never gets written
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(ManifestWriter, "write", write_then_die)
    with pytest.raises(_Killed):
        run_batch(tiny_manager(), _sampled(tmp_path, seed=1, manifest=manifest))
    monkeypatch.setattr(ManifestWriter, "write", real_write)
    assert [len(_lines(p.with_suffix(".txt"))) for p in paths] == [2, 2, 1]
    again = run_batch(tiny_manager(), _sampled(tmp_path, seed=2, manifest=manifest))
    assert again.exit_code == 0
    assert [len(_lines(p.with_suffix(".txt"))) for p in paths] == [2, 2, 2]
    assert sorted(r["path"] for r in read_manifest(manifest)) == ["a.png", "b.png", "c.png"]


def test_a_kill_after_recording_but_before_the_caption_file_appends_once_on_rerun(tmp_path, monkeypatch):
    paths = make_images(tmp_path, ["a.png", "b.png"])
    for path in paths:
        path.with_suffix(".txt").write_text("old\n", encoding="utf-8")
    import icg.sinks

    real_atomic_write = icg.sinks.atomic_write
    writes = []

    def die_on_second(path, data):
        writes.append(path)
        if len(writes) == 2:
            raise _Killed  # the state file says b.txt is about to get a caption; it never did
        return real_atomic_write(path, data)

    monkeypatch.setattr(icg.sinks, "atomic_write", die_on_second)
    with pytest.raises(_Killed):
        run_batch(tiny_manager(), _sampled(tmp_path, seed=1))
    monkeypatch.setattr(icg.sinks, "atomic_write", real_atomic_write)
    assert [len(_lines(p.with_suffix(".txt"))) for p in paths] == [2, 1]
    again = run_batch(tiny_manager(), _sampled(tmp_path, seed=2))
    assert again.counts["appended"] == 1 and again.plan_counts["done"] == 1
    assert [len(_lines(p.with_suffix(".txt"))) for p in paths] == [2, 2]


# ------------------------------------------------------------------------------- 3. disk full


def _disk_full_after(monkeypatch, rows_that_fit: int) -> None:
    """The manifest's disk fills up: the row after ``rows_that_fit`` rows is written half, then ENOSPC."""
    import icg.sinks

    real = icg.sinks._write_all
    count = []

    def write_all(file, data):
        count.append(data)
        if len(count) > rows_that_fit:
            file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(file, data)

    monkeypatch.setattr(icg.sinks, "_write_all", write_all)


@pytest.mark.parametrize("manifest_name", ["m.jsonl", "m.csv"])
def test_disk_full_on_the_manifest_ends_the_run_with_exit_code_3(
    tmp_path, monkeypatch, capsys, manifest_name
):
    make_images(tmp_path, ["a.png", "b.png", "c.png"])
    manifest = tmp_path / manifest_name
    _disk_full_after(monkeypatch, 2 if manifest_name.endswith(".csv") else 1)  # CSV: the header first
    code = main(["batch", str(tmp_path), *model_args("--no-progress", "--manifest", str(manifest))])
    err = capsys.readouterr().err
    assert code == 3
    assert err.strip().splitlines() == [
        f"icg: error: cannot write manifest {manifest}: {os.strerror(errno.ENOSPC)}"
    ]
    raw = manifest.read_bytes()
    assert raw.endswith(b"\n")  # no torn row
    rows = read_manifest(manifest)
    assert [r["path"] for r in rows] == ["a.png"]
    monkeypatch.undo()
    assert main(["batch", str(tmp_path), *model_args("--no-progress", "--manifest", str(manifest))]) == 0
    assert sorted(r["path"] for r in read_manifest(manifest)) == ["a.png", "b.png", "c.png"]


# ------------------------------------------------------------------------------- 4. dangling links


def test_a_dangling_symlink_is_reported_as_a_failure(tmp_path):
    make_images(tmp_path, ["a.png"])
    try:
        (tmp_path / "gone.png").symlink_to(tmp_path / "elsewhere" / "gone.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")
    manifest = tmp_path / "m.jsonl"
    summary = run_batch(tiny_manager(), options(tmp_path, manifest=manifest))
    assert summary.exit_code == 1 and summary.counts["new"] == 1
    [failure] = summary.failures
    assert failure.key == "gone.png"
    assert failure.reason == f"broken symbolic link to {tmp_path / 'elsewhere' / 'gone.png'}"
    statuses = {r["path"]: r["status"] for r in read_manifest(manifest)}
    assert statuses == {"a.png": "done", "gone.png": "failed"}
    assert plan_batch(options(tmp_path)).counts()["unreadable"] == 1


# ------------------------------------------------------------------------------- 5. long names


@pytest.mark.parametrize("length", [235, 245, 251])
def test_a_long_image_name_gets_its_caption_file(tmp_path, length):
    name = "x" * (length - 4) + ".png"
    [image] = make_images(tmp_path, [name])
    sidecar = image.with_suffix(".txt")
    sidecar.write_text("old\n", encoding="utf-8")
    summary = run_batch(tiny_manager(), options(tmp_path, policy="overwrite"))
    assert summary.exit_code == 0 and summary.counts["overwritten"] == 1, summary.failures
    assert sidecar.read_text(encoding="utf-8") != "old\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------- 6. one row per image


@pytest.mark.parametrize("manifest_name", ["m.jsonl", "m.csv"])
def test_one_manifest_row_per_image_and_the_last_outcome_wins(tmp_path, manifest_name):
    make_images(tmp_path, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"")
    manifest = tmp_path / manifest_name
    for _ in range(3):
        assert run_batch(tiny_manager(), options(tmp_path, manifest=manifest)).exit_code == 1
    rows = [(r["path"], r["status"]) for r in read_manifest(manifest)]
    assert rows == [("a.png", "done"), ("b.png", "failed")]
    make_images(tmp_path, ["b.png"])
    assert run_batch(tiny_manager(), options(tmp_path, manifest=manifest)).exit_code == 0
    rows = [(r["path"], r["status"]) for r in read_manifest(manifest)]
    assert rows == [("a.png", "done"), ("b.png", "done")]


def test_a_rerun_with_nothing_to_do_says_so_without_a_rate(tmp_path, capsys):
    make_images(tmp_path, ["a.png", "b.png", "c.png"])
    args = ["batch", str(tmp_path), *model_args("--no-progress")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "nothing to do: 3 of 3 images already captioned"
    assert "images/s" not in out


# ------------------------------------------------------------------------------- 7. read-only files


@pytest.mark.parametrize("policy", ["overwrite", "append", "prepend"])
def test_a_read_only_caption_file_is_left_and_reported(tmp_path, policy):
    paths = make_images(tmp_path, ["a.png", "b.png"])
    locked = paths[0].with_suffix(".txt")
    locked.write_text("mine\n", encoding="utf-8")
    locked.chmod(0o444)
    summary = run_batch(tiny_manager(), options(tmp_path, policy=policy))
    assert locked.read_text(encoding="utf-8") == "mine\n"
    assert stat.S_IMODE(locked.stat().st_mode) == 0o444
    [failure] = summary.failures
    assert failure.key == "a.png" and "read-only" in failure.reason and summary.exit_code == 1
    assert summary.counts["new"] == 1



def test_the_leftover_temp_of_a_long_name_is_removed_and_no_other(tmp_path):
    from icg.sinks import temp_stem

    name = "x" * 241 + ".png"
    [image] = make_images(tmp_path, [name])
    image.with_suffix(".txt").write_text("old\n", encoding="utf-8")
    ours = tmp_path / f".{temp_stem(image.with_suffix('.txt').name)}.0123456789ab.tmp"
    theirs = tmp_path / f".{temp_stem('x' * 241 + '.caption')}.0123456789ab.tmp"  # same start, other file
    for leftover in (ours, theirs):
        leftover.write_bytes(b"half a capt")
    assert len(ours.name.encode()) <= 255
    summary = run_batch(tiny_manager(), options(tmp_path, policy="overwrite"))
    assert summary.stale_temps_removed == 1 and summary.counts["overwritten"] == 1
    assert not ours.exists() and theirs.exists()


def test_two_names_that_read_the_same_in_the_manifest_are_a_conflict(tmp_path):
    root = tmp_path / "images"
    make_images(root, ["caf\\xe9.png"])  # a real name with a backslash in it
    _bytes_named_image(root, LATIN1_NAME)  # reads "caf\xe9.png" in the manifest too
    manifest = tmp_path / "m.jsonl"
    summary = run_batch(tiny_manager(), options(root, manifest=manifest))
    [failure] = summary.failures
    assert "rename one of them" in failure.reason and summary.counts["new"] == 1
    rows = [(r["path"], r["status"]) for r in read_manifest(manifest)]
    assert rows == [("caf\\xe9.png", "done")]  # the row of the image that owns the key, only
    again = run_batch(tiny_manager(), options(root, manifest=manifest))
    assert again.plan_counts["done"] == 1 and again.processed == 0 and len(again.failures) == 1
    assert [(r["path"], r["status"]) for r in read_manifest(manifest)] == rows
