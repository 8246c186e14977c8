"""The Flickr8k smoke run: a Flickr8k-format dataset of generated images goes through ``features``,
``train prefix`` (1 epoch, then resumed for a second) and ``evaluate``, with tiny models, on the CPU.

As a test it runs 20 images and skips METEOR (the metric tests cover it). As a script it is the CI smoke:

    python -m tests.test_train_pipeline OUT_DIR [--images 200] [--test-images 50] [--full]

``--full`` adds METEOR and the PTB tokenizer (Java) to the evaluation. It prints each step's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (the eval extra) is not installed")

from icg.cli import main as icg
from icg.eval.metrics import find_java
from icg.train.loop import STATE_JSON, read_log
from tests import fixtures
from tests.data import synthetic


def run_smoke(out: Path, *, images: int = 20, test_images: int = 5, full: bool = False) -> dict:
    """Run the whole pipeline in ``out``; returns the evaluation report and the seconds per step."""
    out = Path(out)
    timings: dict[str, float] = {}

    def step(name: str, argv: list[str]) -> None:
        start = time.perf_counter()
        code = icg(argv)
        timings[name] = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"`python -m icg {' '.join(argv)}` exited with {code}")

    fx = fixtures.write_all(out / "fx")
    data = synthetic.write_flickr8k(out / "flickr8k", n_images=images, captions_per_image=5)
    feats, run, report = out / "features", out / "run", out / "eval.json"
    tiny = ["--lm-config", "tiny", "--tokenizer", fx["tokenizer_dir"], "--batch-size", "8", "--lr", "1e-3"]
    step("features", ["features", str(data), "--out", str(feats), "--clip", fx["clip_dir"],
                      "--test-images", str(test_images), "--quiet"])  # fmt: skip
    step("train prefix (1 epoch)", ["train", "prefix", str(feats), "--out", str(run), "--epochs", "1", *tiny,
                                    "--quiet"])  # fmt: skip
    step("train prefix (resumed to 2)", ["train", "prefix", str(feats), "--out", str(run), "--epochs", "2",
                                         *tiny, "--quiet"])  # fmt: skip
    metrics = ["--metric-tokenizer", "ptb"] if full else ["--no-meteor"]
    step("evaluate", ["evaluate", "--model", str(run / "epoch-002"), str(data),
                      "--test-images", str(test_images), "--out", str(report), "--clip", fx["clip_dir"],
                      "--tokenizer", fx["tokenizer_dir"], *metrics, "--quiet"])  # fmt: skip
    return {"report": json.loads(report.read_text()), "timings": timings, "run": run, "feats": feats}


def test_flickr8k_format_smoke(tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_smoke(tmp_path, images=20, test_images=5)
    finally:
        torch.set_num_threads(before)
    report, run = result["report"], result["run"]
    assert report["images"] == 5 and report["references_per_image"] == 5.0
    scores = report["rows"][0]["scores"]
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert all(isinstance(v, float) and v >= 0 for v in scores.values())
    # 15 training images x 5 captions = 75 examples, batch 8, the last partial batch dropped as the paper
    # did: 9 steps per epoch; the second run resumed
    epochs = [e for e in read_log(run) if e.get("kind") == "epoch"]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 9), (2, 18)]
    assert not (run / "epoch-001" / STATE_JSON).exists() and (run / "epoch-002" / STATE_JSON).exists()
    printed = capsys.readouterr().out
    assert "throughput:" in printed and "samples/s" in printed and "BLEU-4" in printed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ICG Flickr8k-format smoke run (tiny models, CPU or GPU)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--full", action="store_true", help="METEOR and the PTB tokenizer too (needs Java)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.full and not find_java().available:
        print(f"--full needs Java: {find_java().reason}", file=sys.stderr)
        return 2
    result = run_smoke(args.out, images=args.images, test_images=args.test_images, full=args.full)
    for name, seconds in result["timings"].items():
        print(f"{name:<30} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
