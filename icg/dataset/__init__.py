"""Datasets beyond one machine: ``icg dataset`` on Ray Data (the optional ``scale`` extra).

- ``sources``: what the input is (a folder or glob, a list of paths, parquet with image bytes,
  WebDataset shards) and the Ray dataset of ``key``/``path``/``data`` rows it becomes;
- ``shards``: the committed output shards in ``--out`` (parquet or JSONL, written under a temp name and
  renamed, so a shard left by a killed job is never read as done) and the keys they hold;
- ``run``: the options, the CPU decoding tasks, the model actors (each loads its models once through a
  ``ModelManager`` and captions through ``icg.pipeline.caption_batch``) and the driver loop that writes
  shards, sidecars and the summary.

Only this package and ``icg.commands.dataset`` (inside its ``run``) import Ray; this module imports
nothing heavy. ``require_ray()`` turns a missing Ray into one line saying how to install it.
"""

from __future__ import annotations

from icg.errors import IcgError

INSTALL_HINT = 'pip install "icg[scale]"'


def require_ray():
    """The ``ray`` module with Ray Data, or ``IcgError`` saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we need
    except ImportError as err:
        raise IcgError(
            f"icg dataset needs Ray Data ({err.name or 'ray'} is not installed): {INSTALL_HINT}"
        ) from None
    return ray
