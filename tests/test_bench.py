"""``icg bench``: the suites run end to end on tiny random models, and only the bench command imports them."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from icg.cli import main

ICG = Path(__file__).resolve().parents[1] / "icg"


def _tiny_context(batch: int, tokens: int):
    import torch

    from icg.bench.core import BenchContext

    return BenchContext(torch.device("cpu"), torch.float32, "tiny", batch=batch, tokens=tokens, quick=True)


def test_bench_tiny_quick_reports_ratios_and_leaves_no_temporary_files(capsys, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    argv = ["bench", "--size", "tiny", "--quick", "--batch", "4", "--tokens", "5", "--suite", "prefix"]
    assert main([*argv, "--json"]) == 0
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor")] == []
    report = json.loads(capsys.readouterr().out)
    assert report["checks"] == {"greedy tokens identical to the predecessor loop (2 images)": True}
    assert {"decode_predecessor_b1", "decode_library_b1", "decode_library_b4"} <= set(
        report["seconds_per_image"]
    )
    assert all(v > 0 for v in report["ratios"].values())


def test_bench_text_report_lists_every_row_and_check(capsys):
    assert main(["bench", "--quick", "--batch", "2", "--tokens", "2", "--suite", "prefix"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("icg bench: size=tiny device=cpu")
    assert "decode_library_b2" in out and "decode: predecessor / library b2" in out
    assert "greedy tokens identical to the predecessor loop (2 images): yes" in out


def test_bench_rejects_an_unknown_suite(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--suite", "nope"])
    assert exc.value.code == 2
    assert "--suite: invalid choice: 'nope'" in capsys.readouterr().err


def test_folder_benchmark_suite_runs_the_engine_at_both_batch_sizes():
    from icg.bench.folder import bench_folder

    part = bench_folder(_tiny_context(batch=2, tokens=2))
    rows = part["seconds_per_image"]
    assert {"folder_b1", "folder_b2", "folder_image_decode_1_thread", "folder_b2_model"} <= set(rows)
    assert all(value > 0 for key, value in rows.items() if "waiting" not in key)
    assert part["ratios"]["folder: b1 / b2"] == pytest.approx(rows["folder_b1"] / rows["folder_b2"])
    assert part["ratios"]["folder b2: images per second"] == pytest.approx(1 / rows["folder_b2"])
    assert list(part["checks"].values()) == [True]  # all 2 images captioned at both sizes
    assert "-bound" in part["notes"]["folder"]


def test_sbg_benchmark_suite_does_the_same_work_on_both_paths():
    from icg.bench.sbg import bench_sbg

    part = bench_sbg(_tiny_context(batch=2, tokens=3))
    assert part["checks"] == {
        "sbg: trimmed text features equal the 77-token ones (12 prompts)": True,
        "sbg: same work on both paths (5 x 3 new tokens)": True,
        "sbg: shared prompt cache gives today's candidates (1 images)": True,
    }
    rows = part["seconds_per_image"]
    assert {"sbg_lib_keywords", "sbg_lib_rerank", "sbg_lib_total", "sbg_pred_total est."} <= set(rows)
    assert {"sbg_today_total", "sbg_today_generate_5_in_1 (3tok)"} <= set(rows)
    assert "sbg b1: today (prompt per candidate) / shared prompt" in part["ratios"]
    assert rows["sbg_lib_total"] == pytest.approx(
        rows["sbg_lib_keywords"] + rows["sbg_lib_generate_5_in_1 (3tok)"] + rows["sbg_lib_rerank"]
    )
    assert all(value > 0 for value in part["ratios"].values())


class _FakeClock:
    """A clock that only moves when the measured function runs: its first call costs 100, later ones 1."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> int:
        self.calls += 1
        self.now += 100.0 if self.calls == 1 else 1.0
        return self.calls


@pytest.mark.parametrize("quick", [True, False])
def test_bench_timings_exclude_the_warm_up_run(quick, monkeypatch):
    """Every suite times through ``BenchContext.timed``: quick and full runs both do an untimed warm-up
    run first, so the one-off cost of a first call never lands in a row (quick mode once reported batch 8
    slower than batch 1 because only its batch-8 pass paid it)."""
    from icg.bench import core

    clock = _FakeClock()
    monkeypatch.setattr(core, "time", SimpleNamespace(perf_counter=clock))  # the bench's clock only
    ctx = _tiny_context(batch=2, tokens=2)
    ctx.quick = quick
    seconds, result = ctx.timed(clock.work)
    assert seconds == 1.0  # the warm-up's 100 is not in it
    assert clock.calls == result == (2 if quick else 4)  # warm-up + 1 timed run, or + the median of 3
    clock2 = _FakeClock()
    assert core.timed(clock2.work, repeats=1, clock=clock2) == (100.0, 1)  # no warm-up asked: it counts


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_bench_command_imports_the_bench_package():
    allowed = {ICG / "commands" / "bench.py"}
    offenders = [
        str(path.relative_to(ICG.parent))
        for path in sorted(ICG.rglob("*.py"))
        if (ICG / "bench") not in path.parents and path not in allowed
        if any(name == "icg.bench" or name.startswith("icg.bench.") for name in _imports(path))
    ]
    assert offenders == []
    assert "icg.bench" in _imports(ICG / "commands" / "bench.py")  # the walk does see the imports
