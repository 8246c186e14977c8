"""``python -m icg bench --suite dataset``: ``icg batch`` (one process) against ``icg dataset`` on Ray Data
with 1 and with 2 CPU model actors, on the same folder of generated 640x480 JPEGs.

Ray's actors load their models from disk in their own processes, so both paths load the random-weight
models the ``coldstart`` suite writes once into its cache folder (``icg.bench.coldstart.ensure_models``):
at ``--size real`` CLIP ViT-L/14 + GPT-2 124M + the MLP prefix mapper in the registry's layout, at
``--size tiny`` the test models.

Times are steady-state seconds per image: from the first batch of captions to the last, divided by
the images after the first batch, so loading the models (once per process or actor) and filling the
pipeline are left out. ``icg batch`` reports after each batch (``on_progress``); ``icg dataset`` notes
when its first batch of results reached the driver (``DatasetSummary.first_batch_seconds``). Whole-run
times, loading included, are printed beside them. ``icg dataset`` runs on one local Ray instance of 2
CPUs started before the first run (its start-up is not counted); each actor reserves 0.75 CPU, so two
actors leave room for the decoding and preprocessing tasks on 2 CPUs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from icg.bench.folder import write_jpegs

logger = logging.getLogger(__name__)


def bench_dataset(ctx) -> dict[str, Any]:
    """Images/s of ``icg batch`` and of ``icg dataset`` with 1 and 2 actors; see the module docstring."""
    from icg.batch.engine import BatchOptions, run_batch
    from icg.bench.coldstart import ensure_models, prefix_setup
    from icg.dataset import require_ray
    from icg.dataset.run import DatasetOptions, run_dataset
    from icg.models.manager import ModelManager, RuntimeConfig

    ray = require_ray()
    n = 16 if ctx.quick else 24 if ctx.size == "real" else 48
    models = ensure_models(ctx.size)
    model, extra = prefix_setup(models, ctx.size)
    runtime = {"device": "cpu", "models_dir": str(models), **extra}
    work = Path(tempfile.mkdtemp(prefix="icg-bench-dataset-"))
    decoding = {"max_new_tokens": ctx.tokens}
    steady: dict[str, float] = {}
    whole: dict[str, float] = {}
    started_ray = False
    try:
        folder = work / "images"
        folder.mkdir()
        write_jpegs(folder, n)
        options = BatchOptions(
            folder,
            model=model,
            batch_size=ctx.batch,
            write_sidecars=False,
            manifest=work / "batch.jsonl",
            decoding=decoding,
        )
        marks: list[tuple[float, int]] = []  # (time, images done) after each batch
        start = time.perf_counter()
        batch = run_batch(
            ModelManager(RuntimeConfig(**runtime)),
            options,
            on_progress=lambda done, total, info: marks.append((time.perf_counter(), done)),
        )
        whole["batch_1_process"] = (time.perf_counter() - start) / n
        first = next((m for m in marks if m[1] > 0), None)
        if first is not None and marks[-1][1] > first[1]:
            steady["batch_1_process"] = (marks[-1][0] - first[0]) / (marks[-1][1] - first[1])
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            started_ray = True
        summaries = {}
        for actors in (1, 2):
            name = f"dataset_{actors}_actor"
            opts = DatasetOptions(
                input=str(folder),
                out=work / f"out{actors}",
                model=model,
                runtime=runtime,
                decoding=decoding,
                actors=(actors, actors),
                actor_cpus=0.75,
                batch_size=ctx.batch,
                progress=False,
            )
            start = time.perf_counter()
            summaries[actors] = summary = run_dataset(opts)
            whole[name] = (time.perf_counter() - start) / n
            if summary.steady_images_per_second:
                steady[name] = 1.0 / summary.steady_images_per_second
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    names = ("batch_1_process", "dataset_1_actor", "dataset_2_actor")
    measured = all(k in steady for k in names)
    times = steady if measured else whole  # one batch per run: no steady state to measure
    overhead = times["dataset_1_actor"] / times["batch_1_process"]
    scaling = times["dataset_1_actor"] / times["dataset_2_actor"]
    what = "steady-state (first caption to last)" if measured else "whole-run (one batch: loading included)"
    ratios = {
        "batch: images per second": 1.0 / times["batch_1_process"],
        "dataset 1 actor: images per second": 1.0 / times["dataset_1_actor"],
        "dataset 2 actors: images per second": 1.0 / times["dataset_2_actor"],
        "dataset 1 actor / batch (Ray's overhead at equal resources; goal <= 1.15 at real sizes)": overhead,
        "dataset: 2 actors / 1 actor speed-up": scaling,
        **{f"whole run with loading, {k}: images per second": 1.0 / v for k, v in whole.items()},
    }
    complete = batch.captioned == n and all(s.captioned == n and not s.failed for s in summaries.values())
    note = (
        f"{n} JPEGs, {ctx.size} models, batch {ctx.batch}, {ctx.tokens} tokens, {what} times per image: "
        f"Ray costs {overhead:.2f}x the single process per image with 1 actor, and "
        f"2 actors run {scaling:.2f}x as fast as 1; whole runs with loading: "
        + ", ".join(f"{k} {1.0 / v:.2f} images/s" for k, v in whole.items())
    )
    logger.info("dataset bench: %s", note)
    return {
        "seconds_per_image": {**{f"{k}_steady": v for k, v in steady.items()}, **whole},
        "ratios": ratios,
        "checks": {f"dataset: all {n} images captioned by batch and by 1 and 2 actors": complete},
        "notes": {"dataset": note},
    }
