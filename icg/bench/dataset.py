"""``python -m icg bench --suite dataset``: ``icg batch`` (one process) against ``icg dataset`` on Ray Data
with 1 and with 2 CPU model actors, on the same folder of generated 640x480 JPEGs.

Ray's actors load their models from disk in their own processes, so this suite writes the tiny
random-weight models (``icg.tiny``) in their real formats to a temporary folder and both paths load
them from there (``--size real`` would need 2 GB of random weights on disk per run; the suite always
uses the tiny ones, which makes Ray's fixed costs look as large as they can). Times are whole runs,
model loading included: ``icg batch``'s ``run_batch`` and ``icg dataset``'s ``run_dataset`` on one local
Ray instance of 2 CPUs started before the first run (its start-up is not counted). Each actor reserves
0.75 CPU, so two actors leave room for the decoding tasks on 2 CPUs.
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


def _write_models(folder: Path) -> dict[str, str]:
    import torch

    from icg.tiny import tiny_clip_spec, tiny_prefix_state, tiny_tokenizer

    tiny_clip_spec(folder / "clip")
    tok = tiny_tokenizer(folder / "tokenizer")
    model = folder / "clip-prefix-tiny.pt"
    torch.save(tiny_prefix_state(tok), model)
    return {"clip": str(folder / "clip"), "tokenizer": str(folder / "tokenizer"), "model": str(model)}


def bench_dataset(ctx) -> dict[str, Any]:
    """Images/s of ``icg batch`` and of ``icg dataset`` with 1 and 2 actors; see the module docstring."""
    from icg.batch.engine import BatchOptions, run_batch
    from icg.dataset import require_ray
    from icg.dataset.run import DatasetOptions, run_dataset
    from icg.models.manager import ModelManager, RuntimeConfig

    ray = require_ray()
    n = 16 if ctx.quick else 48
    work = Path(tempfile.mkdtemp(prefix="icg-bench-dataset-"))
    decoding = {"max_new_tokens": ctx.tokens}
    rows: dict[str, float] = {}
    started_ray = False
    try:
        models = _write_models(work / "models")
        folder = work / "images"
        folder.mkdir()
        write_jpegs(folder, n)
        runtime = {"device": "cpu", "clip": models["clip"], "tokenizer": models["tokenizer"]}
        manager = ModelManager(RuntimeConfig(**runtime))
        options = BatchOptions(
            folder,
            model=models["model"],
            batch_size=ctx.batch,
            write_sidecars=False,
            manifest=work / "batch.jsonl",
            decoding=decoding,
        )
        start = time.perf_counter()
        batch = run_batch(manager, options)
        rows["batch_1_process"] = (time.perf_counter() - start) / n
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            started_ray = True
        summaries = {}
        for actors in (1, 2):
            opts = DatasetOptions(
                input=str(folder),
                out=work / f"out{actors}",
                model=models["model"],
                runtime=runtime,
                decoding=decoding,
                actors=(actors, actors),
                actor_cpus=0.75,
                batch_size=ctx.batch,
                progress=False,
            )
            start = time.perf_counter()
            summaries[actors] = run_dataset(opts)
            rows[f"dataset_{actors}_actor"] = (time.perf_counter() - start) / n
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    overhead = rows["dataset_1_actor"] / rows["batch_1_process"]
    scaling = rows["dataset_1_actor"] / rows["dataset_2_actor"]
    ratios = {
        "batch: images per second": 1.0 / rows["batch_1_process"],
        "dataset 1 actor: images per second": 1.0 / rows["dataset_1_actor"],
        "dataset 2 actors: images per second": 1.0 / rows["dataset_2_actor"],
        "dataset 1 actor / batch (Ray's overhead; goal <= 1.15 at real sizes)": overhead,
        "dataset: 2 actors / 1 actor speed-up": scaling,
    }
    complete = batch.captioned == n and all(s.captioned == n and not s.failed for s in summaries.values())
    note = (
        f"{n} JPEGs, tiny models, whole runs with model loading; Ray costs {overhead:.2f}x the single "
        f"process per image with 1 actor, and 2 actors run {scaling:.2f}x as fast as 1"
    )
    logger.info("dataset bench: %s", note)
    return {
        "seconds_per_image": rows,
        "ratios": ratios,
        "checks": {f"dataset: all {n} images captioned by batch and by 1 and 2 actors": complete},
        "notes": {"dataset": note},
    }
