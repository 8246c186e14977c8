"""``python -m icg batch``: options, output, exit codes, Ctrl-C handling, and a 200-image folder."""

from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from icg.cli import build_parser, main
from icg.commands.batch import options_from_args, stop_on_sigint
from icg.options import KEYWORDS_TEMPLATE
from icg.sinks import read_manifest
from tests.test_batch_engine import make_images, snapshot, tiny_models


def model_args(*extra: str) -> list[str]:
    models = tiny_models()
    return [
        "--model",
        models["clip_prefix_pt"],
        "--clip",
        models["clip_dir"],
        "--tokenizer",
        models["tokenizer_dir"],
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        *extra,
    ]


def test_two_hundred_generated_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(200):
        folder = tmp_path / f"part{i % 4}"
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.jpg", quality=80)
    manifest = tmp_path / "captions.jsonl"
    code = main(["batch", str(tmp_path), *model_args("--batch-size", "16", "--manifest", str(manifest))])
    out = capsys.readouterr().out
    assert code == 0
    assert "done: 200 of 200 images captioned" in out and "200 new" in out and "images/s" in out
    sidecars = sorted(tmp_path.rglob("*.txt"))
    assert len(sidecars) == 200
    assert all(p.with_suffix(".jpg").is_file() for p in sidecars)
    rows = read_manifest(manifest)
    assert len(rows) == 200 and {r["status"] for r in rows} == {"done"}
    assert all((tmp_path / r["path"]).with_suffix(".txt").read_text(encoding="utf-8").strip() for r in rows)


def test_failures_are_listed_and_exit_code_is_1(tmp_path, capsys):
    make_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    code = main(["batch", str(tmp_path), *model_args("--no-progress")])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 new" in out and "1 failed" in out
    assert f"failed (1):\n  {tmp_path / 'broken.jpg'}: " in out


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    make_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "a.txt").write_text("old\n", encoding="utf-8")
    before = snapshot(tmp_path)
    code = main(["batch", str(tmp_path), *model_args("--dry-run", "--preview", "2", "--policy", "prepend")])
    out = capsys.readouterr().out
    assert code == 0 and snapshot(tmp_path) == before
    assert "dry run: 3 images" in out and "2 new" in out and "1 prepend" in out
    assert f"  a.png -> {tmp_path / 'a.txt'} [prepend]: " in out and "  b.png -> " in out
    assert "  c.png" not in out and "nothing was written" in out


def test_json_summary(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    code = main(["batch", str(tmp_path), *model_args("--json", "--sidecar-ext", "caption")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 == summary["exit_code"]
    assert summary["counts"]["new"] == 1 and summary["captioned"] == 1 and summary["batch_size"] == 8
    assert (tmp_path / "a.caption").is_file()


def test_nothing_to_write_is_a_one_line_error(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    assert main(["batch", str(tmp_path), *model_args("--no-sidecars")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("icg: error: nothing to write") and err.count("\n") == 1


def test_arguments_map_to_batch_options(tmp_path):
    args = build_parser().parse_args(
        [
            "batch",
            str(tmp_path),
            "--no-recursive",
            "--ext",
            "PNG, .jpg",
            "--batch-size",
            "3",
            "--sidecar-ext",
            "caption",
            "--output-dir",
            str(tmp_path / "out"),
            "--policy",
            "append",
            "--separator",
            ", ",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--no-resume",
            "--keywords",
            "--prefix",
            "sks",
            "--suffix",
            "best",
            "--lowercase",
            "--max-keywords",
            "4",
            "--keep-period",
            "--max-pixels",
            "0",
            "--workers",
            "2",
            "--seed",
            "5",
            "--strategy",
            "sample",
        ]
    )
    opts = options_from_args(args)
    assert (opts.root, opts.recursive, opts.extensions, opts.batch_size) == (
        str(tmp_path),
        False,
        (".jpg", ".png"),
        3,
    )
    assert (opts.sidecar_extension, opts.output_dir, opts.policy, opts.separator) == (
        ".caption",
        str(tmp_path / "out"),
        "append",
        ", ",
    )
    assert (opts.manifest, opts.resume, opts.write_sidecars) == (str(tmp_path / "m.csv"), False, True)
    t = opts.template
    assert (t.template, t.prefix, t.suffix, t.lowercase, t.max_keywords, t.strip_period) == (
        KEYWORDS_TEMPLATE,
        "sks",
        "best",
        True,
        4,
        False,
    )
    assert opts.max_pixels is None and opts.workers == 2
    assert dict(opts.decoding) == {"seed": 5, "strategy": "sample"}
    defaults = options_from_args(build_parser().parse_args(["batch", str(tmp_path)]))
    assert defaults.recursive and defaults.policy == "skip" and defaults.template.compose("A cat.") == "A cat"
    assert defaults.model == "clip-prefix-flickr8k" and defaults.max_pixels and not defaults.dry_run


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_first_ctrl_c_requests_a_stop_and_the_second_aborts():
    stop, notes = threading.Event(), []
    previous = signal.getsignal(signal.SIGINT)
    # signal.raise_signal runs the Python handler before it returns (the handler's exception with it)
    with pytest.raises(KeyboardInterrupt), stop_on_sigint(stop, notes.append):
        signal.raise_signal(signal.SIGINT)
        assert stop.is_set() and "stopping after the current batch" in notes[0]
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is removed again
