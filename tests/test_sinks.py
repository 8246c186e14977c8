"""Sidecar paths, atomic sidecar writes with every policy, and the JSONL/CSV manifest with resume."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest

from icg.discovery import discover_images
from icg.errors import ConfigError, IcgError
from icg.sinks import (
    MANIFEST_FIELDS,
    SIDECAR_POLICIES,
    ManifestWriter,
    atomic_write,
    manifest_format,
    plan_sidecar,
    read_manifest,
    sidecar_path,
    write_sidecar,
)

BOM = b"\xef\xbb\xbf"


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("extension", [".txt", "txt", "TXT", " .txt "])
def test_sidecar_beside_image(tmp_path, extension):
    assert sidecar_path(tmp_path / "a" / "img.v2.png", tmp_path, extension) == tmp_path / "a" / "img.v2.txt"


def test_sidecar_other_extension_and_no_root():
    assert sidecar_path("x/img.JPG", extension="caption") == Path("x/img.caption")


def test_sidecar_mirrored_under_output_dir(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    assert sidecar_path(root / "s" / "t" / "img.webp", root, ".txt", out) == out / "s" / "t" / "img.txt"
    assert sidecar_path(str(root / "img.png"), str(root), "json", str(out)) == out / "img.json"


def test_sidecar_mirroring_with_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sidecar_path("in/s/img.png", Path("in").absolute(), output_dir="out") == Path("out/s/img.txt")


@pytest.mark.parametrize("extension", ["", ".", "a/b", ".png", "JPG", ".webp"])
def test_bad_sidecar_extensions(tmp_path, extension):
    with pytest.raises(ConfigError):
        sidecar_path(tmp_path / "img.png", tmp_path, extension)


def test_sidecar_mirroring_needs_image_inside_root(tmp_path):
    with pytest.raises(ConfigError, match="not inside"):
        sidecar_path(tmp_path / "elsewhere" / "a.png", tmp_path / "in", output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="root"):
        sidecar_path(tmp_path / "a.png", None, output_dir=tmp_path / "out")


# ---------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("policy", SIDECAR_POLICIES)
def test_plan(tmp_path, policy):
    path = tmp_path / "a.txt"
    assert plan_sidecar(path, policy) == "new"
    path.write_text("x")
    assert plan_sidecar(path, policy) == policy
    assert path.read_text() == "x"


def test_plan_rejects_unknown_policy(tmp_path):
    with pytest.raises(ConfigError, match="unknown caption file policy 'merge'"):
        plan_sidecar(tmp_path / "a.txt", "merge")
    with pytest.raises(ConfigError):
        write_sidecar(tmp_path / "a.txt", "x", "merge")
    assert not (tmp_path / "a.txt").exists()


# ---------------------------------------------------------------------------------------------- write


@pytest.mark.parametrize(
    ("existing", "policy", "caption", "separator", "expected", "action"),
    [
        (None, "skip", "a dog", None, b"a dog\n", "new"),
        (None, "append", "a dog", None, b"a dog\n", "new"),
        (None, "overwrite", "  a dog \n", None, b"a dog\n", "new"),
        (None, "skip", "\u00e9t\u00e9 \u2603", None, "\u00e9t\u00e9 \u2603\n".encode(), "new"),
        (b"a cat\n", "skip", "a dog", None, b"a cat\n", "skip"),
        (b"a cat", "skip", "a dog", None, b"a cat", "skip"),
        (b"a cat\n", "overwrite", "a dog", None, b"a dog\n", "overwrite"),
        (b"a cat\r\n", "overwrite", "a\nb", None, b"a\r\nb\r\n", "overwrite"),
        (BOM + b"a cat\r\n", "overwrite", "a dog", None, BOM + b"a dog\r\n", "overwrite"),
        (b"a cat\n", "append", "a dog", None, b"a cat\na dog\n", "append"),
        (b"a cat", "append", "a dog", None, b"a cat\na dog\n", "append"),
        (b"a cat\n\n\n", "append", "a dog", None, b"a cat\na dog\n", "append"),
        (b"a cat\r\n", "append", "a dog", None, b"a cat\r\na dog\r\n", "append"),
        (b"l1\r\nl2\r\n", "append", "a dog", None, b"l1\r\nl2\r\na dog\r\n", "append"),
        (BOM + b"a cat\n", "append", "a dog", None, BOM + b"a cat\na dog\n", "append"),
        (b"a cat\n", "append", "a dog", ", ", b"a cat, a dog\n", "append"),
        (b"a cat\r\n", "append", "a dog", "\n\n", b"a cat\r\n\r\na dog\r\n", "append"),
        (b"", "append", "a dog", None, b"a dog\n", "append"),
        (b"  \n\n", "append", "a dog", None, b"a dog\n", "append"),
        (b"a cat\n", "append", "   ", None, b"a cat\n", "append"),
        (b"a cat\n", "prepend", "a dog", None, b"a dog\na cat\n", "prepend"),
        (b"\n\na cat\n\n", "prepend", "a dog", None, b"a dog\na cat\n", "prepend"),
        (b"a cat\r\n", "prepend", "a dog", None, b"a dog\r\na cat\r\n", "prepend"),
        (BOM + b"cat, tree", "prepend", "dog", ", ", BOM + b"dog, cat, tree\n", "prepend"),
        ("caf\u00e9\n".encode(), "append", "th\u00e9", None, "caf\u00e9\nth\u00e9\n".encode(), "append"),
    ],
)
def test_write_sidecar(tmp_path, existing, policy, caption, separator, expected, action):
    path = tmp_path / "img.txt"
    if existing is not None:
        path.write_bytes(existing)
    assert write_sidecar(path, caption, policy, separator) == action
    assert path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.txt"]


def test_skip_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "img.txt"
    path.write_bytes(b"\xff\xfe not utf-8")
    os.utime(path, (1_000_000, 1_000_000))
    assert write_sidecar(path, "a dog") == "skip"
    assert path.read_bytes() == b"\xff\xfe not utf-8"
    assert path.stat().st_mtime == 1_000_000


@pytest.mark.parametrize("policy", ["append", "prepend"])
def test_non_utf8_sidecar_is_not_clobbered(tmp_path, policy):
    path = tmp_path / "img.txt"
    path.write_bytes(b"caf\xe9\n")  # Latin-1
    with pytest.raises(IcgError, match=f"{path}.*not UTF-8"):
        write_sidecar(path, "a dog", policy)
    assert path.read_bytes() == b"caf\xe9\n"
    assert _no_temp_files(tmp_path)
    assert write_sidecar(path, "a dog", "overwrite") == "overwrite"
    assert path.read_bytes() == b"a dog\n"


def test_creates_parent_folders(tmp_path):
    path = sidecar_path(tmp_path / "in" / "a" / "b" / "img.png", tmp_path / "in", output_dir=tmp_path / "out")
    assert write_sidecar(path, "a dog") == "new"
    assert (tmp_path / "out" / "a" / "b" / "img.txt").read_text(encoding="utf-8") == "a dog\n"


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, broken):
    path = tmp_path / "img.txt"
    path.write_bytes(b"a cat\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if broken == "write":
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FailingFile(fd))
    else:
        monkeypatch.setattr(os, broken, fail)
    with pytest.raises(IcgError, match=f"cannot write {path}"):
        write_sidecar(path, "a dog", "overwrite")
    monkeypatch.undo()
    assert path.read_bytes() == b"a cat\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.txt"]


class _FailingFile:
    """Stands in for the temp file object: closes the real descriptor, then fails mid-write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        os.write(self.fd, data[:2])
        raise OSError(5, "Input/output error")


def test_interrupt_removes_temp_and_propagates(tmp_path, monkeypatch):
    path = tmp_path / "img.txt"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_sidecar(path, "a dog")
    assert list(tmp_path.iterdir()) == []


def test_temp_file_is_hidden_so_discovery_ignores_it(tmp_path, monkeypatch):
    (tmp_path / "img.png").write_bytes(b"x")
    seen = []

    def spy(src, dst):
        seen.append(Path(src).name)
        assert discover_images(tmp_path, extensions=[".png", ".txt", ".tmp"]) == [tmp_path / "img.png"]
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", spy)
    write_sidecar(tmp_path / "img.txt", "a dog")
    assert len(seen) == 1 and seen[0].startswith(".img.txt.") and seen[0].endswith(".tmp")


def test_sidecar_that_is_a_folder_is_an_error(tmp_path):
    (tmp_path / "img.txt").mkdir()
    with pytest.raises(IcgError, match="img.txt"):
        write_sidecar(tmp_path / "img.txt", "a dog", "append")
    with pytest.raises(IcgError, match="img.txt"):
        write_sidecar(tmp_path / "img.txt", "a dog", "overwrite")
    assert _no_temp_files(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_kept_on_overwrite_and_umask_on_new(tmp_path):
    old = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        write_sidecar(new, "a")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        existing = tmp_path / "old.txt"
        existing.write_text("x")
        existing.chmod(0o640)
        write_sidecar(existing, "a", "overwrite")
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "deep" / "cfg.json"
    atomic_write(path, b'{"a": 1}')
    atomic_write(path, b'{"a": 2}')
    assert path.read_bytes() == b'{"a": 2}'
    assert _no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------------- manifest


def _rows():
    return [
        dict(
            path="a.png",
            caption="a dog \u00e9",
            keywords=["dog", "grass"],
            model="sbg",
            settings={"n": 5, "top_k": 50},
            seed=7,
            status="new",
        ),
        dict(path="b/c.png", error="b/c.png: file not found"),
        dict(
            path="d.png",
            caption='say "hi", ok',
            keywords=[],
            model="clip-prefix",
            settings={},
            seed=None,
            status="skip",
        ),
    ]


@pytest.mark.parametrize(("name", "fmt"), [("m.jsonl", "jsonl"), ("M.JSONL", "jsonl"), ("m.csv", "csv")])
def test_manifest_format(name, fmt):
    assert manifest_format(name) == fmt


@pytest.mark.parametrize("name", ["m.json", "m.txt", "manifest"])
def test_manifest_unknown_format(tmp_path, name):
    with pytest.raises(ConfigError, match="use .jsonl or .csv"):
        ManifestWriter(tmp_path / name)


def test_jsonl_manifest(tmp_path):
    path = tmp_path / "out" / "manifest.jsonl"
    with ManifestWriter(path) as manifest:
        for row in _rows():
            manifest.write(**row)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and "\u00e9" in lines[0]
    first, failed, skipped = (json.loads(line) for line in lines)
    assert tuple(first) == MANIFEST_FIELDS
    assert first == {
        "path": "a.png",
        "caption": "a dog \u00e9",
        "keywords": ["dog", "grass"],
        "model": "sbg",
        "settings": {"n": 5, "top_k": 50},
        "seed": 7,
        "error": None,
        "status": "new",
    }
    assert (failed["status"], failed["error"], failed["caption"]) == ("failed", "b/c.png: file not found", "")
    assert skipped["status"] == "skip"
    assert read_manifest(path) == [first, failed, skipped]


def test_csv_manifest(tmp_path):
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as manifest:
        for row in _rows():
            manifest.write(**row)
    with open(path, encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == MANIFEST_FIELDS
    assert table[0]["keywords"] == "dog, grass"
    assert json.loads(table[0]["settings"]) == {"n": 5, "top_k": 50}
    assert (table[0]["seed"], table[0]["error"]) == ("7", "")
    assert (table[1]["status"], table[1]["seed"]) == ("failed", "")
    assert table[1]["error"] == "b/c.png: file not found"
    assert table[2]["caption"] == 'say "hi", ok'
    rows = read_manifest(path)
    assert rows[0]["keywords"] == ["dog", "grass"] and rows[0]["settings"] == {"n": 5, "top_k": 50}
    assert rows[0]["seed"] == 7 and rows[0]["error"] is None
    assert rows[1]["error"] == "b/c.png: file not found" and rows[2]["seed"] is None
    assert rows[2]["keywords"] == []


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_rows_are_flushed_as_written(tmp_path, name):
    path = tmp_path / name
    with ManifestWriter(path) as manifest:
        manifest.write("a.png", caption="x", status="new")
        assert [row["path"] for row in read_manifest(path)] == ["a.png"]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_resume_keeps_rows_and_knows_done_paths(tmp_path, name):
    path = tmp_path / name
    with ManifestWriter(path) as manifest:
        for row in _rows():
            manifest.write(**row)
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == {"a.png", "d.png"}  # the failed one is retried
        manifest.write("b/c.png", caption="a cat", status="new")
        assert manifest.done_paths() == {"a.png", "d.png", "b/c.png"}
    rows = read_manifest(path)
    assert [row["path"] for row in rows] == ["a.png", "b/c.png", "d.png"]  # one row each, the last wins
    assert rows[1]["status"] == "new" and rows[1]["caption"] == "a cat"
    if name.endswith(".csv"):
        assert path.read_text(encoding="utf-8").count("path,caption") == 1


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_without_resume_an_existing_manifest_is_replaced(tmp_path, name):
    path = tmp_path / name
    with ManifestWriter(path) as manifest:
        manifest.write("a.png", caption="x", status="new")
    with ManifestWriter(path) as manifest:
        assert manifest.done_paths() == set()
        manifest.write("b.png", caption="y", status="new")
    assert [row["path"] for row in read_manifest(path)] == ["b.png"]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_resume_without_a_manifest_starts_one(tmp_path, name):
    path = tmp_path / name
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == set()
        manifest.write("a.png", caption="x", status="new")
    assert [row["path"] for row in read_manifest(path)] == ["a.png"]


@pytest.mark.parametrize(
    ("name", "tail"),
    [
        ("m.jsonl", b'{"path": "z.png", "capt'),
        ("m.csv", b'z.png,"a half-written\ncaption'),
        ("m.csv", b"z.png,a cap"),
    ],
)
def test_resume_cuts_a_partial_last_row(tmp_path, name, tail):
    path = tmp_path / name
    with ManifestWriter(path) as manifest:
        manifest.write("a.png", caption="line one\nline two", status="new")
    with open(path, "ab") as f:
        f.write(tail)  # what a killed process can leave behind
    assert [row["path"] for row in read_manifest(path)] == ["a.png"]
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == {"a.png"}
        manifest.write("b.png", caption="b", status="new")
    rows = read_manifest(path)
    assert [(r["path"], r["caption"]) for r in rows] == [("a.png", "line one\nline two"), ("b.png", "b")]
    assert b"z.png" not in path.read_bytes()


def test_resume_with_only_a_partial_header(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"path,cap")
    with ManifestWriter(path, resume=True) as manifest:
        manifest.write("a.png", caption="x", status="new")
    assert path.read_text(encoding="utf-8").startswith("path,caption,keywords")
    assert [row["path"] for row in read_manifest(path)] == ["a.png"]


def test_jsonl_garbage_line_in_the_middle_is_ignored(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.png", "status": "new"}\nnot json\n[1]\n{"path": "b.png", "status": "new"}\n')
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == {"a.png", "b.png"}
    assert "line 2" in caplog.text and "line 3" in caplog.text


def test_csv_resume_refuses_other_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(IcgError, match="columns file, text"):
        ManifestWriter(path, resume=True).open()
    assert path.read_text(encoding="utf-8") == "file,text\na.png,x\n"


def test_csv_with_bom_resumes(tmp_path):
    path = tmp_path / "m.csv"
    with ManifestWriter(path) as manifest:
        manifest.write("a.png", caption="x", status="new")
    path.write_bytes(BOM + path.read_bytes() + b"z.png,parti")
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == {"a.png"}
        manifest.write("b.png", caption="y", status="new")
    assert path.read_bytes().startswith(BOM)
    assert [row["path"] for row in read_manifest(path)] == ["a.png", "b.png"]


def test_settings_that_are_not_json_are_stringified(tmp_path):
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as manifest:
        manifest.write(Path("a.png"), settings={"model_dir": Path("/models")}, status="new")
    assert read_manifest(path)[0]["settings"] == {"model_dir": str(Path("/models"))}
    assert read_manifest(path)[0]["path"] == "a.png"


def test_write_needs_an_open_manifest(tmp_path):
    manifest = ManifestWriter(tmp_path / "m.jsonl")
    with pytest.raises(RuntimeError):
        manifest.write("a.png", status="new")
    assert not (tmp_path / "m.jsonl").exists()


def test_atomic_write_with_a_failing_writer_keeps_the_old_file(tmp_path):
    from icg.sinks import atomic_write_with

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def half_written(tmp):
        Path(tmp).write_bytes(b"par")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, half_written)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    atomic_write_with(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_atomic_write_json(tmp_path):
    from icg.sinks import atomic_write_json

    target = tmp_path / "sub" / "config.json"
    atomic_write_json(target, {"b": "café", "a": [1, 2]}, sort_keys=True)
    assert target.read_bytes() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": "café"\n}\n'.encode()
    with pytest.raises(TypeError):  # not serialisable: the old file stays, no temp file is left
        atomic_write_json(target, {"x": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2], "b": "café"}
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]
    atomic_write_json(target, {"n": 1.5}, indent=None, default=str)
    assert target.read_text(encoding="utf-8") == '{"n": 1.5}\n'


# ---------------------------------------------------------------------------------------------- hardening


def test_printable_turns_undecodable_name_bytes_into_escapes():
    from icg.sinks import printable

    assert printable("a cat.png") == "a cat.png"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert printable("caf\u00e9.png") == "caf\u00e9.png"


def test_manifest_rows_with_undecodable_names_are_utf8(tmp_path):
    path = tmp_path / "m.csv"
    with ManifestWriter(path) as manifest:
        key = os.fsdecode(b"caf\xe9.png")
        manifest.write(key, settings={"sidecar": os.fsdecode(b"/x/caf\xe9.txt")}, status="done")
        assert manifest.done_paths() == {"caf\\xe9.png"}
    [row] = read_manifest(path)
    assert row["path"] == "caf\\xe9.png" and row["settings"] == {"sidecar": "/x/caf\\xe9.txt"}


class _FullDisk:
    """A file object whose disk fills up after ``room`` bytes: the write that overflows writes what fits."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_a_full_disk_leaves_only_complete_manifest_rows(tmp_path, name):
    from icg.sinks import RecordWriteError

    path = tmp_path / name
    manifest = ManifestWriter(path)
    manifest.open()
    manifest.write("a.png", caption="a cat", status="done")
    manifest._file = _FullDisk(manifest._file, room=10)  # noqa: SLF001 - the disk fills up
    with pytest.raises(RecordWriteError, match=f"cannot write manifest {path}: No space left on device"):
        manifest.write("b.png", caption="a dog", status="done")
    manifest.close()
    assert path.read_bytes().endswith(b"\n")
    assert [r["path"] for r in read_manifest(path)] == ["a.png"]


def test_resume_compacts_the_manifest_to_one_row_per_path_last_wins(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = ["a.png done", "b.png failed", "b.png failed", "b.png done", "c.png failed"]
    lines = [dict(zip(("path", "status"), row.split())) for row in rows]
    lines = [{**row, "error": "e" if row["status"] == "failed" else None} for row in lines]
    path.write_text(
        "".join(json.dumps(row) + "\n" for row in lines) + '{"path": "d.p',  # a torn last row
        encoding="utf-8",
    )
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == {"a.png", "b.png"}
        manifest.write("c.png", error="still broken")
    assert [(r["path"], r["status"]) for r in read_manifest(path)] == [
        ("a.png", "done"),
        ("b.png", "done"),
        ("c.png", "failed"),
    ]
    assert _no_temp_files(tmp_path)


def test_a_failed_row_after_a_done_row_is_not_done(tmp_path):
    path = tmp_path / "m.csv"
    with ManifestWriter(path) as manifest:
        manifest.write("a.png", status="done")
        manifest.write("a.png", error="gone")
    with ManifestWriter(path, resume=True) as manifest:
        assert manifest.done_paths() == frozenset()
    assert [(r["path"], r["status"]) for r in read_manifest(path)] == [("a.png", "failed")]


@pytest.mark.parametrize("policy", ["overwrite", "append", "prepend"])
def test_a_read_only_caption_file_is_never_replaced(tmp_path, policy):
    path = tmp_path / "a.txt"
    path.write_text("mine\n", encoding="utf-8")
    path.chmod(0o444)
    with pytest.raises(IcgError, match=f"caption file {path} is read-only"):
        write_sidecar(path, "a cat", policy)
    assert path.read_text(encoding="utf-8") == "mine\n" and _no_temp_files(tmp_path)


def test_atomic_write_refuses_a_read_only_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(b"{}")
    path.chmod(0o444)
    with pytest.raises(IcgError, match="read-only"):
        atomic_write(path, b'{"a": 1}')
    assert path.read_bytes() == b"{}"


@pytest.mark.parametrize("length", [200, 235, 240, 251, 255])
def test_a_caption_file_with_a_long_name_can_be_written(tmp_path, length):
    path = tmp_path / ("y" * (length - 4) + ".txt")
    path.write_text("old\n", encoding="utf-8")
    assert write_sidecar(path, "a cat", "overwrite") == "overwrite"
    assert path.read_text(encoding="utf-8") == "a cat\n" and _no_temp_files(tmp_path)


def test_temp_names_fit_and_are_recognised_for_their_target_only(tmp_path):
    from icg.sinks import is_temp_of, temp_name

    short, long_a, long_b = "a.txt", "z" * 245 + "a.txt", "z" * 245 + "b.txt"
    for name in (short, long_a, long_b, "\u00e9" * 125 + ".txt"):
        tmp = temp_name(name)
        assert len(os.fsencode(tmp)) <= 255 and tmp.startswith(".") and tmp.endswith(".tmp")
        assert is_temp_of(tmp, name)
    assert not is_temp_of(temp_name(long_a), long_b)  # same truncated prefix, another file
    assert not is_temp_of(temp_name(short), "b.txt")
    assert not is_temp_of(".a.txt.tmp", short) and not is_temp_of("a.txt", short)
    assert not is_temp_of(f".{short}.nothex123456.tmp", short)


@pytest.mark.parametrize("resume", [False, True])
def test_a_read_only_manifest_is_neither_replaced_nor_appended_to(tmp_path, resume):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.png", "status": "done"}\n', encoding="utf-8")
    path.chmod(0o444)
    with pytest.raises(IcgError, match=f"manifest {path} is read-only"):
        ManifestWriter(path, resume=resume).open()
    assert path.read_text(encoding="utf-8") == '{"path": "a.png", "status": "done"}\n'


def test_append_state_survives_a_full_disk_and_a_torn_line(tmp_path):
    from icg.sinks import APPEND_STATE_NAME, AppendState, RecordWriteError

    sidecar = tmp_path / "a.txt"
    sidecar.write_bytes(b"old\n")
    state = AppendState(tmp_path)
    state.record("a.png", b"old\n", b"old\nnew\n")
    state._file = _FullDisk(state._file, room=5)  # noqa: SLF001 - the disk fills up
    with pytest.raises(RecordWriteError, match="cannot write the append state .*No space left"):
        state.record("b.png", None, b"cat\n")
    state.close()
    assert (tmp_path / APPEND_STATE_NAME).read_bytes().endswith(b"\n")
    loaded = AppendState(tmp_path).load()
    assert not loaded.added("a.png", sidecar)  # still its old content: the write never happened
    sidecar.write_bytes(b"old\nnew\n")
    assert loaded.added("a.png", sidecar) and not loaded.added("b.png", tmp_path / "b.txt")
    with open(tmp_path / APPEND_STATE_NAME, "ab") as f:
        f.write(b'{"key": "c.p')  # a kill in the middle of a line
    again = AppendState(tmp_path).load()
    again.record("c.png", None, b"x\n")
    again.close()
    (tmp_path / "c.txt").write_bytes(b"x\n")
    assert AppendState(tmp_path).load().added("c.png", tmp_path / "c.txt")
