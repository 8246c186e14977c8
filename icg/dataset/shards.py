"""The output of ``icg dataset``: committed shards in ``--out``, one row per image.

A shard is written whole under a hidden temp name and renamed to ``part-<run>-<n>.parquet`` (or
``.jsonl``) in one step (``icg.sinks.atomic_write``/``atomic_write_with``, the writers ``icg batch``
uses), so a job killed mid-write leaves at most a hidden temp file, which is never read as done and is
removed by the next run. Resume reads the ``key`` column of the committed shards only.

Columns: ``key``, ``path``, ``caption``, ``prompt``, ``keywords``, ``candidates``, ``scores`` (SBG's
re-ranking or the beams' scores), ``model``, ``decoding`` (the settings, as JSON text), ``seed``,
``error`` (null when captioned), ``node`` (the Ray node id) and ``worker`` (host:pid of the actor).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from icg.errors import ConfigError, IcgError
from icg.sinks import atomic_write, atomic_write_with, stem_of_temp

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
COLUMNS = (
    "key",
    "path",
    "caption",
    "prompt",
    "keywords",
    "candidates",
    "scores",
    "model",
    "decoding",
    "seed",
    "error",
    "node",
    "worker",
)
_SHARD = re.compile(r"^part-[\w.-]+\.(parquet|jsonl)$")


def schema():
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("key", text),
            ("path", text),
            ("caption", text),
            ("prompt", text),
            ("keywords", pa.list_(text)),
            ("candidates", pa.list_(text)),
            ("scores", pa.list_(pa.float64())),
            ("model", text),
            ("decoding", text),
            ("seed", pa.int64()),
            ("error", text),
            ("node", text),
            ("worker", text),
        ]
    )


def committed_shards(out: str | os.PathLike) -> list[Path]:
    """The committed shards in ``out`` (either format), by name."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if _SHARD.match(p.name) and p.is_file())


def read_shard(path: Path) -> list[dict[str, Any]]:
    """The rows of one committed shard."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise IcgError(
            f"{path}: cannot read this output shard ({err}); move it away to redo its images"
        ) from err


def read_rows(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of every committed shard in ``out``."""
    return [row for shard in committed_shards(out) for row in read_shard(shard)]


def done_keys(out: str | os.PathLike) -> frozenset[str]:
    """The keys in the committed shards (captioned or failed: each key is written once)."""
    keys: set[str] = set()
    for shard in committed_shards(out):
        if shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                keys.update(str(k) for k in pq.read_table(shard, columns=["key"]).column("key").to_pylist())
            except (OSError, ValueError) as err:
                raise IcgError(f"{shard}: cannot read this output shard ({err})") from err
        else:
            keys.update(str(row["key"]) for row in read_shard(shard))
    return frozenset(keys)


def remove_stale_temps(out: str | os.PathLike) -> int:
    """Delete the hidden temp files of shards a killed job was writing."""
    out = Path(out)
    removed = 0
    if not out.is_dir():
        return 0
    for entry in out.iterdir():
        stem = stem_of_temp(entry.name)
        if stem is not None and _SHARD.match(stem):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
                logger.info("removed a leftover temp file %s", entry)
    return removed


class ShardWriter:
    """Collects rows and commits them as shards of ``rows_per_shard`` rows (the rest on ``close``)."""

    def __init__(self, out: str | os.PathLike, fmt: str = "parquet", rows_per_shard: int = 10_000) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if rows_per_shard < 1:
            raise ConfigError(f"rows per shard must be at least 1, not {rows_per_shard}")
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"output folder {self.out} exists and is not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.format = fmt
        self.rows_per_shard = rows_per_shard
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.pending: list[dict[str, Any]] = []
        self.written: list[Path] = []

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.pending.append({c: row.get(c) for c in COLUMNS})
            if len(self.pending) >= self.rows_per_shard:
                self.commit()

    def commit(self) -> None:
        """Write the pending rows as one shard (nothing when there are none)."""
        if not self.pending:
            return
        path = self.out / f"part-{self.run_id}-{len(self.written):05d}.{self.format}"
        rows, self.pending = self.pending, []
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows, schema=schema())
            atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))
        else:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            atomic_write(path, lines.encode("utf-8"))
        self.written.append(path)
        logger.info("committed %s (%d rows)", path, len(rows))
