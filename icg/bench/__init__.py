"""``python -m icg bench``: the library's paths against the predecessor's, side by side in one run.

Random weights at the real sizes (CLIP ViT-L/14, GPT-2 124M, the 768 -> 3840 -> 7680 MLP) or tiny
ones; a fixed number of forced new tokens so every path does the same work. Reported per image, with
ratios; absolute times mean something only on the machine they were taken on.

Only ``icg bench`` (``icg.commands.bench``) imports this package; no runtime module does.

- ``core``: the shared context (settings, random-weight models built once), timing, the runner, the
  text report;
- ``predecessor``: the predecessor's code paths, re-implemented as the baseline the suites time;
- ``prefix``, ``sbg``, ``folder``: the suites against the predecessor;
- ``coldstart``: time to the first caption in fresh processes, today's loading against the old one;
- ``dataset``: ``icg batch`` against ``icg dataset`` on Ray (1 and 2 actors);
- ``quant``: int8 and bf16 against fp32 on the CPU (speed and accuracy);
- ``threads``: a server thread's latency while CLIP encodes, with and without the WebUI's thread cap.

This module imports nothing heavy, so that the CLI can build its parser from ``SUITES``.
"""

from __future__ import annotations

# name -> "module:function"; a suite takes a ``core.BenchContext`` and returns
# {"seconds_per_image": {...}, "ratios": {...}, "checks": {name: bool}, "notes": {name: text}}
SUITES = {
    "prefix": "icg.bench.prefix:bench_prefix",
    "sbg": "icg.bench.sbg:bench_sbg",
    "folder": "icg.bench.folder:bench_folder",
    "dataset": "icg.bench.dataset:bench_dataset",
    "coldstart": "icg.bench.coldstart:bench_coldstart",
    "quant": "icg.bench.quant:bench_quant",
    "threads": "icg.bench.threads:bench_threads",
}
#: Suites run only when named with ``--suite``: ``dataset`` needs the optional Ray extra and starts Ray;
#: ``coldstart`` writes ~2 GB of real-size models once and starts many fresh processes.
ON_REQUEST = frozenset({"dataset", "coldstart"})
