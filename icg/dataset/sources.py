"""What ``icg dataset INPUT`` reads, and the Ray dataset of rows it becomes.

Every input becomes rows of ``key`` (unique, what resume and the output go by), ``path`` (where the
image came from) and ``data`` (the encoded image bytes, or null when a CPU task reads ``path``):

- a folder (recursive unless ``--no-recursive``): keys are the paths relative to it, as ``icg batch``
  keys its manifest;
- a glob (``photos/**/*.jpg``): keys are the matched paths as written;
- a ``.txt`` (one path a line), ``.csv`` or ``.parquet`` list of paths (``--path-column``, default
  ``path``): keys are the paths as written; relative ones are found from the list file's folder;
- parquet files with image bytes (``--bytes-column``; keys from ``--key-column``, default ``key``);
- WebDataset ``.tar`` shards (a shard, a folder or a glob of them): one row per sample, keyed by its
  ``__key__`` (the member name up to the first dot of its base name), taking its first image member;
- a remote folder or parquet (``s3://``, ``gs://``, ...): read by Ray Data and pyarrow (credentials and
  endpoints as pyarrow takes them: ``AWS_*`` variables, instance roles); a folder's keys are the paths
  relative to it, as a local folder's are, and ``path`` is the full URI.

Keys already in committed output shards (``done``) are dropped before anything is decoded.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icg.errors import ConfigError

logger = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
GLOB_CHARS = frozenset("*?[")
MAX_BLOCKS = 4096


@dataclass(frozen=True)
class Source:
    """A resolved input. ``kind``: ``files`` (``items`` of key and path), ``parquet`` (parquet ``files``
    with image bytes), ``webdataset`` (``.tar`` ``files``) or ``uri`` (a remote folder for Ray Data)."""

    kind: str
    description: str
    items: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()
    key_column: str = "key"
    bytes_column: str = "bytes"
    extensions: frozenset[str] = field(default_factory=frozenset)

    def dataset(self, ray: Any, done: frozenset[str], block_rows: int = 8):
        """The Ray dataset of ``key``/``path``/``data`` rows not in ``done`` (and how many rows it has,
        where that is known without reading the input); a list of files goes in ``block_rows`` blocks."""
        import pyarrow as pa

        if self.kind == "files":
            todo = [(k, p) for k, p in self.items if k not in done]
            table = pa.table(
                {
                    "key": pa.array([k for k, _ in todo], pa.string()),
                    "path": pa.array([p for _, p in todo], pa.string()),
                    "data": pa.nulls(len(todo), pa.binary()),
                }
            )
            # Blocks of about a batch each (at most MAX_BLOCKS of them): Ray Data hands a block to one
            # decoding task and one actor, so one big block would keep every other actor idle.
            rows = block_rows * max(1, -(-len(todo) // (block_rows * MAX_BLOCKS)))
            blocks = [table.slice(i, rows) for i in range(0, len(todo), rows)] or [table]
            return ray.data.from_arrow(blocks), len(todo)
        if self.kind == "parquet":
            columns = [self.key_column, self.bytes_column, "path"]
            ds = ray.data.read_parquet(list(self.files), include_paths=True).select_columns(columns)
            ds = ds.map_batches(
                _from_parquet,
                batch_format="pyarrow",
                fn_kwargs={"key": self.key_column, "data": self.bytes_column, "done": done},
            )
        elif self.kind == "webdataset":
            ds = ray.data.from_items([{"tar": f} for f in self.files]).flat_map(
                _tar_rows, fn_kwargs={"done": done, "extensions": self.extensions}
            )
        else:
            ds = ray.data.read_binary_files(
                list(self.files), include_paths=True, file_extensions=[e.lstrip(".") for e in self.extensions]
            ).map_batches(
                _from_binary, batch_format="pyarrow", fn_kwargs={"done": done, "uri": self.files[0]}
            )
        return ds, None


def resolve(
    spec: str,
    *,
    path_column: str = "path",
    bytes_column: str | None = None,
    key_column: str = "key",
    recursive: bool = True,
) -> Source:
    """The ``Source`` for ``icg dataset``'s INPUT (``ConfigError`` naming it when it can't be read)."""
    from icg.imaging import supported_extensions

    extensions = frozenset(supported_extensions())
    if not spec:
        raise ConfigError("no input given")
    if "://" in spec and not spec.startswith("file://"):
        if not recursive:
            raise ConfigError(
                f"input {spec}: --no-recursive applies to local folders; Ray Data reads a remote folder "
                "with everything under it"
            )
        return _remote(spec, bytes_column, key_column, extensions)
    path = Path(spec.removeprefix("file://"))
    if any(c in GLOB_CHARS for c in spec):
        matches = sorted(glob.glob(os.fspath(path), recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise ConfigError(f"input {spec}: no files match")
        return _from_files(spec, files, None, bytes_column, key_column, extensions)
    if path.is_dir():
        if bytes_column:
            files = sorted(str(p) for p in (path.rglob if recursive else path.glob)("*.parquet"))
            if not files:
                raise ConfigError(f"input {spec}: no .parquet files in this folder for --bytes-column")
            return _parquet(spec, files, bytes_column, key_column, extensions)
        tars = sorted(str(p) for p in (path.rglob if recursive else path.glob)("*.tar"))
        if tars:
            return Source(
                "webdataset",
                f"{len(tars)} WebDataset shard(s) in {spec}",
                files=tuple(tars),
                extensions=extensions,
            )
        return _folder(spec, path, recursive, extensions)
    if not path.exists():
        raise ConfigError(f"input {spec}: no such file or folder")
    return _from_files(
        spec, [os.fspath(path)], path_column, bytes_column, key_column, extensions, single=True
    )


def _from_files(spec, files, path_column, bytes_column, key_column, extensions, single=False) -> Source:
    if all(f.endswith(".tar") for f in files):
        return Source(
            "webdataset", f"{len(files)} WebDataset shard(s)", files=tuple(files), extensions=extensions
        )
    if bytes_column:
        if not all(f.endswith(".parquet") for f in files):
            raise ConfigError(f"input {spec}: --bytes-column needs parquet files")
        return _parquet(spec, files, bytes_column, key_column, extensions)
    if single and Path(files[0]).suffix.lower() in LIST_SUFFIXES:
        return _path_list(Path(files[0]), path_column or "path", extensions)
    items = [(f, f) for f in files if Path(f).suffix.lower() in extensions]
    if not items:
        raise ConfigError(f"input {spec}: no image files")
    return Source(
        "files", f"{len(items)} image(s) matching {spec}", items=tuple(items), extensions=extensions
    )


def _folder(spec: str, root: Path, recursive: bool, extensions) -> Source:
    from icg.discovery import discover

    found = discover(root, recursive=recursive)
    paths = sorted(list(found.images) + [p for p, _ in found.broken], key=lambda p: p.relative_to(root).parts)
    if not paths:
        raise ConfigError(f"input {spec}: no images in this folder")
    items = tuple((p.relative_to(root).as_posix(), os.fspath(p)) for p in paths)
    return Source("files", f"{len(items)} image(s) in {spec}", items=items, extensions=extensions)


def _path_list(list_file: Path, column: str, extensions) -> Source:
    """Paths from a ``.txt``, ``.csv`` or ``.parquet`` list; relative ones from the list file's folder."""
    suffix = list_file.suffix.lower()
    try:
        if suffix == ".txt":
            paths = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
        elif suffix == ".csv":
            with open(list_file, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if column not in (reader.fieldnames or []):
                    raise ConfigError(f"{list_file}: no column {column!r} (--path-column)")
                paths = [(row[column] or "").strip() for row in reader]
        else:
            import pyarrow.parquet as pq

            schema = pq.read_schema(list_file)
            if column not in schema.names:
                raise ConfigError(
                    f"{list_file}: no column {column!r} (--path-column; give --bytes-column for image bytes)"
                )
            paths = [str(p) for p in pq.read_table(list_file, columns=[column]).column(column).to_pylist()]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{list_file}: cannot read the list of paths ({err})") from err
    base = list_file.parent
    seen: dict[str, str] = {}
    for p in paths:
        if p and p not in seen:
            seen[p] = p if os.path.isabs(p) else os.fspath(base / p)
    if not seen:
        raise ConfigError(f"{list_file}: the list of paths is empty")
    dropped = sum(1 for p in paths if p) - len(seen)
    if dropped:
        logger.warning("%s: %d repeated path(s) captioned once", list_file, dropped)
    return Source(
        "files",
        f"{len(seen)} path(s) listed in {list_file}",
        items=tuple(seen.items()),
        extensions=extensions,
    )


def _parquet(spec, files, bytes_column, key_column, extensions) -> Source:
    import pyarrow.parquet as pq

    for f in files:
        try:
            names = pq.read_schema(f).names
        except (OSError, ValueError) as err:
            raise ConfigError(f"{f}: not a readable parquet file ({err})") from err
        for column, flag in ((bytes_column, "--bytes-column"), (key_column, "--key-column")):
            if column not in names:
                raise ConfigError(f"{f}: no column {column!r} ({flag}); it has {', '.join(names)}")
    return Source(
        "parquet",
        f"{len(files)} parquet file(s) of image bytes ({spec})",
        files=tuple(files),
        key_column=key_column,
        bytes_column=bytes_column,
        extensions=extensions,
    )


def _remote(spec, bytes_column, key_column, extensions) -> Source:
    if bytes_column:
        return Source(
            "parquet",
            f"parquet of image bytes at {spec}",
            files=(spec,),
            key_column=key_column,
            bytes_column=bytes_column,
            extensions=extensions,
        )
    return Source("uri", f"images at {spec}", files=(spec,), extensions=extensions)


# ----------------------------------------------------------------------------- row functions (tasks)


def _drop_done(table, done: frozenset[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done or table.num_rows == 0:
        return table
    return table.filter(
        pc.invert(pc.is_in(table.column("key"), value_set=pa.array(sorted(done), pa.string())))
    )


def _from_parquet(table, key: str, data: str, done: frozenset[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.cast(table.column(key), pa.string())
    out = pa.table(
        {"key": keys, "path": table.column("path"), "data": pc.cast(table.column(data), pa.binary())}
    )
    return _drop_done(out, done)


def remote_key(uri: str, path: str) -> tuple[str, str]:
    """``(key, full URI)`` of a file Ray listed under the remote folder ``uri`` (Ray's paths have no
    scheme: ``bucket/photos/a.jpg``): keys are relative to the folder, as a local folder's are, so a
    folder captioned locally and from a bucket has the same keys; the file itself keys by its name."""
    scheme, _, base = uri.partition("://")
    base = base.rstrip("/")
    full = f"{scheme}://{path}"
    if path == base:
        return path.rsplit("/", 1)[-1], full
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :], full
    return path, full


def _from_binary(table, done: frozenset[str], uri: str):
    import pyarrow as pa

    pairs = [remote_key(uri, path) for path in table.column("path").to_pylist()]
    out = pa.table(
        {
            "key": pa.array([key for key, _ in pairs], pa.string()),
            "path": pa.array([full for _, full in pairs], pa.string()),
            "data": table.column("bytes"),
        }
    )
    return _drop_done(out, done)


def webdataset_key(member: str) -> str:
    """A WebDataset sample's ``__key__``: the member's path up to the first dot of its base name."""
    folder, _, name = member.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def _tar_rows(row: dict[str, Any], done: frozenset[str], extensions) -> list[dict[str, Any]]:
    """The samples of one WebDataset shard: its first image member per ``__key__``."""
    shard = row["tar"]
    rows: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key = webdataset_key(member.name)
                suffix = "." + member.name.rsplit(".", 1)[-1].lower() if "." in member.name else ""
                if key in done or key in rows or suffix not in extensions:
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                rows[key] = {"key": key, "path": f"{shard}/{member.name}", "data": data}
    except (OSError, tarfile.TarError) as err:
        # A damaged shard: the samples read so far stand; the shard itself becomes one error row.
        rows[shard] = {
            "key": shard,
            "path": shard,
            "data": None,
            "error": f"unreadable WebDataset shard: {err}",
        }
    return [{"error": None, **r} for r in rows.values()]
