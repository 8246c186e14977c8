"""A real ``python -m icg batch`` process killed (SIGKILL) or interrupted (SIGINT) mid-run, then re-run:
every image ends up captioned exactly once, with no partial file left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from icg.cli import main
from icg.sinks import read_manifest
from tests.test_batch_engine import make_images, temp_files, tiny_models

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 30


def batch_command(root: Path, manifest: Path, *extra: str) -> list[str]:
    models = tiny_models()
    return [
        "batch",
        str(root),
        "--model",
        models["clip_prefix_pt"],
        "--clip",
        models["clip_dir"],
        "--tokenizer",
        models["tokenizer_dir"],
        "--device",
        "cpu",
        "--manifest",
        str(manifest),
        "--no-progress",
        *extra,
    ]


def start(args: list[str]) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    return subprocess.Popen(
        [sys.executable, "-m", "icg", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_captions(proc: subprocess.Popen, images: list[Path], least: int, timeout: float = 180) -> int:
    """Poll until at least ``least`` of ``images`` have a new sidecar; return how many have one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = sum(1 for p in images if p.with_suffix(".txt").exists())
        if written >= least:
            return written
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"the batch ended before it could be interrupted ({proc.returncode}):\n{out}\n{err}"
            )
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no captions appeared in time")


def folder(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """30 images; a few already have a caption file of their own (to which the run appends)."""
    root = tmp_path / "images"
    images = make_images(root, [f"{'sub/' if i % 3 == 0 else ''}img{i:02d}.png" for i in range(N_IMAGES)])
    existing = images[1::7]
    for path in existing:
        path.with_suffix(".txt").write_text("existing tags\n", encoding="utf-8")
    return root, [p for p in images if p not in existing], existing


def check_every_image_captioned_once(
    root: Path, manifest: Path, fresh: list[Path], existing: list[Path]
) -> None:
    rows = read_manifest(manifest)
    assert Counter(r["path"] for r in rows) == Counter(
        p.relative_to(root).as_posix() for p in fresh + existing
    )
    prompts = {r["path"]: r["settings"]["prompt"] for r in rows}
    assert all(r["status"] == "done" for r in rows)
    for path in fresh + existing:
        text = path.with_suffix(".txt").read_bytes().decode("utf-8")
        caption = prompts[path.relative_to(root).as_posix()]
        assert caption and "\n" not in caption
        want = f"existing tags\n{caption}\n" if path in existing else f"{caption}\n"
        assert text == want, path
    assert temp_files(root) == []


@pytest.mark.slow  # starts a Python process that imports torch and transformers
def test_killed_run_resumes_and_captions_every_image_exactly_once(tmp_path):
    root, fresh, existing = folder(tmp_path)
    manifest = tmp_path / "captions.jsonl"
    args = batch_command(root, manifest, "--policy", "append", "--batch-size", "1", "--max-new-tokens", "12")
    proc = start(args)
    written = wait_for_captions(proc, fresh, least=3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert written < len(fresh)  # killed mid-run
    done_before = len(read_manifest(manifest))
    assert 0 < done_before < N_IMAGES

    assert main(args) == 0  # the same command again
    check_every_image_captioned_once(root, manifest, fresh, existing)


@pytest.mark.slow
def test_ctrl_c_stops_after_the_current_batch_and_keeps_what_was_written(tmp_path):
    root, fresh, existing = folder(tmp_path)
    manifest = tmp_path / "captions.csv"
    args = batch_command(root, manifest, "--policy", "append", "--batch-size", "3", "--max-new-tokens", "12")
    proc = start(args)
    wait_for_captions(proc, fresh, least=2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "stopping after the current batch" in err
    assert "stopped:" in out and "run the same command again" in out
    rows = read_manifest(manifest)
    assert 0 < len(rows) < N_IMAGES and len(rows) % 3 == 0  # whole batches only
    for row in rows:  # everything that was captioned is complete
        text = (root / row["path"]).with_suffix(".txt").read_text(encoding="utf-8")
        assert text.rstrip("\n").endswith(row["settings"]["prompt"])
    assert temp_files(root) == []

    assert main(args) == 0
    check_every_image_captioned_once(root, manifest, fresh, existing)
