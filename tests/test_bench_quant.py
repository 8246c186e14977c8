"""The precision and threads suites of ``icg bench`` on tiny random models (their figures are not
checked: timings mean nothing here; what they report, and that it is computed, is)."""

from __future__ import annotations

import pytest
import torch

from icg.bench.core import BenchContext


def _tiny_context(batch: int = 2, tokens: int = 3) -> BenchContext:
    return BenchContext(torch.device("cpu"), torch.float32, "tiny", batch=batch, tokens=tokens, quick=True)


def test_quant_suite_times_both_precisions_side_by_side_and_measures_accuracy():
    from icg.bench.quant import QUICK_CASES, bench_quant

    part = bench_quant(_tiny_context())
    rows, ratios = part["seconds_per_image"], part["ratios"]
    assert {"clip_encode_fp32_b1", "clip_encode_int8_b1", "clip_encode_bf16_b1"} <= set(rows)
    assert {"decode_fp32_b2", "decode_int8_b2"} <= set(rows)
    assert ratios["int8: clip encode fp32 / int8 b1"] == pytest.approx(
        rows["clip_encode_fp32_b1"] / rows["clip_encode_int8_b1"]
    )
    cosine_min = ratios["int8: image-feature cosine min"]
    cosine_mean = ratios["int8: image-feature cosine mean"]
    assert 0.9 < cosine_min <= cosine_mean <= 1.0001
    for name in ("int8-clip", "int8 lm", "int8"):
        share = ratios[f"{name}: greedy captions changed (share)"]
        assert 0 <= share <= 1 and (share * QUICK_CASES).is_integer()
    assert part["checks"] == {}  # the goals are checked at the real size only
    assert f"{QUICK_CASES} random images" in part["notes"]["int8 accuracy"]
    assert "bf16=" in part["notes"]["precision"]


def test_quant_suite_skips_other_devices():
    from icg.bench.quant import bench_quant

    ctx = BenchContext(torch.device("meta"), torch.float32, "tiny", batch=1, tokens=1, quick=True)
    assert "CPU only" in bench_quant(ctx)["notes"]["int8"]


def test_threads_suite_probes_a_server_idle_and_under_both_thread_counts(monkeypatch):
    from icg.bench import threads

    monkeypatch.setattr(threads, "LOAD_SECONDS", 0.0)  # one encoding per setting is enough here
    part = threads.bench_threads(_tiny_context())
    note = next(iter(part["notes"].values()))
    available = torch.get_num_threads()
    capped = max(1, available - 1)
    assert note.startswith("idle: p50") and f"all threads ({available})" in note
    assert f"all but one ({capped})" in note
    assert set(part["seconds_per_image"]) == {
        f"threads: clip encode b2, all threads ({available})",
        f"threads: clip encode b2, all but one ({capped})",
    }
    assert all(value > 0 for value in part["ratios"].values())
