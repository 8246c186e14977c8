"""Folder batches: caption every image in a folder into sidecar files and/or a manifest.

``run_batch`` is the one engine behind the CLI (``python -m icg batch``), the standalone app, the WebUI
tab and the API; ``plan_batch`` tells what a run would do without loading a model or writing anything.
"""

from __future__ import annotations

from icg.batch.engine import (
    BatchOptions,
    BatchPlan,
    BatchSummary,
    Failure,
    ItemResult,
    PlanItem,
    PreviewItem,
    auto_batch_size,
    plan_batch,
    run_batch,
)

__all__ = [
    "BatchOptions",
    "BatchPlan",
    "BatchSummary",
    "Failure",
    "ItemResult",
    "PlanItem",
    "PreviewItem",
    "auto_batch_size",
    "plan_batch",
    "run_batch",
]
