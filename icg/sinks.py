"""Where captions go: sidecar text files beside (or mirrored away from) the images, and a JSONL/CSV manifest.

Sidecar files are written atomically: the new content goes to a hidden temp file in the same folder
(``.<name>.<random>.tmp``, which discovery ignores; for a name too long for that, ``.<start of
name>~<hash>.<random>.tmp``, see ``temp_name``), is fsynced, then replaces the target with ``os.replace``;
on any error the temp file is removed and the old file is left as it was. A read-only file (no write
permission bit, or not writable by us) is never replaced: that is an ``IcgError`` naming it.

Sidecar text rules: UTF-8; a file ends with exactly one newline; an existing file's newline convention
("\\r\\n" or "\\n") and UTF-8 BOM are kept, whatever the policy. ``append``/``prepend`` join the old text and
the caption with ``separator`` (default: one newline), after dropping the blank lines at the join, so
``"a cat\\n"`` + append ``"a dog"`` gives ``"a cat\\na dog\\n"`` and with ``separator=", "`` gives
``"a cat, a dog\\n"``. An empty caption adds nothing (a new file is empty). An existing file that is not
UTF-8 is never appended to or prepended to.

File names that are not valid UTF-8 (bytes from an old archive, held by Python as surrogate escapes) are
written into manifests, state files and reports with each undecodable byte as ``\\xNN`` (``printable``), so
that every file ICG writes is UTF-8 text; resume compares names in that form.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from icg.discovery import IMAGE_EXTENSIONS
from icg.errors import ConfigError, IcgError

logger = logging.getLogger(__name__)

SidecarPolicy = Literal["skip", "overwrite", "append", "prepend"]
SidecarAction = Literal["new", "skip", "overwrite", "append", "prepend"]
SIDECAR_POLICIES: tuple[str, ...] = ("skip", "overwrite", "append", "prepend")

MANIFEST_FIELDS = ("path", "caption", "keywords", "model", "settings", "seed", "error", "status")
_MANIFEST_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
_BOM = b"\xef\xbb\xbf"
#: The append state file in the caption folder (see ``AppendState``).
APPEND_STATE_NAME = ".icg-append.jsonl"
_NAME_MAX = 255  # bytes in one file name on ext4, XFS, Btrfs, APFS (NTFS: 255 UTF-16 units, never fewer)
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{12}\.tmp$", re.DOTALL)


class RecordWriteError(IcgError):
    """The manifest or the append state could not be written (a full disk, ...): the run cannot go on
    safely. Every record written before stays complete."""


def printable(text: str) -> str:
    """``text`` as valid Unicode: the undecodable bytes of a file name (surrogate escapes) as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates of a UTF-16 file system (Windows)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def printable_data(value: Any) -> Any:
    """``printable`` applied to every string (and path) in nested dicts, lists and tuples."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, os.PathLike):
        return printable(os.fspath(value))
    if isinstance(value, Mapping):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- sidecars


def normalise_extension(extension: str) -> str:
    """``"txt"`` or ``".TXT"`` -> ``".txt"``; refuses empty names, path separators and image extensions."""
    ext = "." + extension.strip().lstrip(".").lower()
    if ext == "." or any(sep in ext for sep in ("/", "\\", os.sep)):
        raise ConfigError(f"invalid caption file extension: {extension!r}")
    if ext in IMAGE_EXTENSIONS:
        raise ConfigError(f"caption file extension {ext!r} is an image extension; it could overwrite images")
    return ext


def sidecar_path(
    image_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    extension: str = ".txt",
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """The caption file for ``image_path``: beside it, or under ``output_dir`` at its path from ``root``."""
    image_path = Path(image_path)
    ext = normalise_extension(extension)
    if output_dir is None:
        return image_path.with_suffix(ext)
    if root is None:
        raise ConfigError("an output folder for caption files needs the input folder (root) too")
    try:
        relative = Path(os.path.abspath(image_path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise ConfigError(f"image {image_path} is not inside the input folder {root}") from None
    return Path(output_dir) / relative.with_suffix(ext)


def check_policy(policy: str) -> SidecarPolicy:
    """Return ``policy`` if it is one of ``SIDECAR_POLICIES``, else raise ``ConfigError``."""
    if policy not in SIDECAR_POLICIES:
        expected = ", ".join(SIDECAR_POLICIES)
        raise ConfigError(f"unknown caption file policy {policy!r}; expected one of {expected}")
    return policy  # type: ignore[return-value]


def plan_sidecar(path: str | os.PathLike, policy: str = "skip") -> SidecarAction:
    """What ``write_sidecar`` would do: "new" when nothing is there, else the policy itself."""
    policy = check_policy(policy)
    return policy if os.path.lexists(path) else "new"


def write_sidecar(
    path: str | os.PathLike,
    caption: str,
    policy: str = "skip",
    separator: str | None = None,
    on_write: Callable[[bytes | None, bytes], None] | None = None,
) -> SidecarAction:
    """Write ``caption`` to the sidecar ``path`` following ``policy``; return the action taken.

    ``on_write(old, new)`` (the file's bytes, ``None`` when there is none, and what replaces them) is
    called just before the file is replaced (``AppendState.record``). Raises ``IcgError`` naming the file
    when it can't be read or written, is read-only, or when ``append``/``prepend`` meets an existing file
    that is not UTF-8 text.
    """
    path = Path(path)
    action = plan_sidecar(path, policy)
    if action == "skip":
        return action
    if action != "new":
        _replaceable_mode(path, "caption file ")
    existing = None if action == "new" else _read_bytes(path)
    data = _sidecar_bytes(path, existing, caption, action, separator)
    if on_write is not None:
        on_write(existing, data)
    atomic_write(path, data)
    logger.debug("%s caption file %s", action, path)
    return action


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IcgError(f"cannot read caption file {path}: {exc.strerror or exc}") from exc


def _sidecar_bytes(
    path: Path, existing: bytes | None, caption: str, action: str, separator: str | None
) -> bytes:
    existing = existing or b""
    bom = _BOM if existing.startswith(_BOM) else b""
    newline = "\r\n" if b"\r\n" in existing else "\n"
    caption = newline.join(caption.strip().splitlines())
    if action in ("append", "prepend"):
        try:
            old = existing[len(bom) :].decode("utf-8")
        except UnicodeDecodeError:
            raise IcgError(
                f"caption file {path} is not UTF-8 text; refusing to {action} to it (overwrite replaces it)"
            ) from None
        sep = newline if separator is None else separator.replace("\r\n", "\n").replace("\n", newline)
        parts = [old.rstrip("\r\n"), caption] if action == "append" else [caption, old.lstrip("\r\n")]
        text = sep.join(part for part in parts if part.strip())
    else:
        text = caption
    text = text.rstrip("\r\n")
    return bom + (text + newline if text else "").encode("utf-8")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, ``os.replace``); keeps its permissions.

    Creates missing parent folders. Raises ``IcgError`` naming the file on failure or when it is
    read-only, leaving no temp file and the old content intact.
    """
    path = Path(path)
    mode = _replaceable_mode(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path)
    except OSError as exc:
        raise IcgError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise IcgError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Like ``atomic_write`` for writers that take a file name (``safetensors``' ``save_file``, ...):
    ``write(tmp)`` fills a temp file beside ``path``, which then replaces ``path`` in one step."""
    path = Path(path)
    _replaceable_mode(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path)
        os.close(fd)
    except OSError as exc:
        raise IcgError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise IcgError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def atomic_write_json(
    path: str | os.PathLike,
    data: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``data`` as UTF-8 JSON (non-ASCII kept as is) ending in one newline, atomically, as
    ``atomic_write`` does: the one JSON writer for every config, manifest and state file ICG saves."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default, ensure_ascii=False)
    atomic_write(path, (text + "\n").encode("utf-8"))


def _replaceable_mode(path: Path, what: str = "") -> int | None:
    """The permission bits of the existing ``path`` (``None`` when there is none); ``IcgError`` when it is
    read-only. Checked before replacing: ``os.replace`` would swap a read-only file away (and root may
    write anything), so the mode is what tells the user's intent."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IcgError(f"cannot write {what}{path}: {exc.strerror or exc}") from exc
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise IcgError(f"{what}{path} is read-only; left as it is")
    return mode


def temp_name(target: str) -> str:
    """The name of a new temp file for ``target``: ``.<target>.<12 hex>.tmp``, or, where that would pass
    the 255-byte name limit, ``.<start of target>~<8 hex of its SHA-256>.<12 hex>.tmp``, which fits
    whenever ``target`` does and still tells whose it is (``is_temp_of``)."""
    return f".{temp_stem(target)}.{secrets.token_hex(6)}.tmp"


def is_temp_of(name: str, target: str) -> bool:
    """Whether ``name`` is one of ``temp_name(target)``'s names (a leftover of a killed write)."""
    return stem_of_temp(name) == temp_stem(target)


def stem_of_temp(name: str) -> str | None:
    """The ``temp_stem`` in a temp file's name; ``None`` for any other name."""
    match = _TEMP_NAME.match(name)
    return None if match is None else match["stem"]


def temp_stem(target: str) -> str:
    """What names ``target`` in its temp files' names: the name itself, or where that would not fit, its
    start, "~" and 8 hex digits of its SHA-256."""
    raw = os.fsencode(target)
    if len(raw) + 18 <= _NAME_MAX:  # 18: the two dots, the 12 hex digits and ".tmp"
        return target
    digest = hashlib.sha256(raw).hexdigest()[:8]
    room = _NAME_MAX - 18 - 9  # 9: "~" and the digest
    start = target
    while len(os.fsencode(start)) > room:
        start = start[:-1]
    return f"{start}~{digest}"


def _create_temp(path: Path) -> tuple[str, int]:
    """A new hidden ``temp_name`` beside ``path``, created with the umask's permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(path.parent, temp_name(path.name))
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _write_all(file: Any, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered binary ``file`` (a short write goes on where it stopped)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


# ---------------------------------------------------------------------------------------------- manifest


def manifest_format(path: str | os.PathLike) -> str:
    """Return "jsonl" or "csv" from the file extension; anything else is a ``ConfigError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _MANIFEST_FORMATS:
        raise ConfigError(f"manifest {path}: unknown format {suffix or '(none)'!r}; use .jsonl or .csv")
    return _MANIFEST_FORMATS[suffix]


class ManifestWriter:
    """One row per image in a JSONL or CSV file; each row reaches the file in one piece.

    With ``resume=True`` an existing manifest is kept and appended to (a partial last row left by a killed
    run is cut off first), and ``done_paths()`` holds the paths whose last row did not fail. Without it an
    existing manifest is replaced. Rows hold ``MANIFEST_FIELDS``; in CSV, keywords are joined with ", ",
    settings is a JSON string and a missing seed or error is an empty cell. Text goes through
    ``printable_data`` (names that are not UTF-8: ``\\xNN``).

    One row per path: when a path has several rows (a retried image, a run killed before its clean-up),
    the manifest is rewritten atomically with the last row of each path, in the place of its first row,
    on ``open`` and on ``close``; a kill in between leaves extra rows that the next open removes, and
    reading keeps the last row of each path meanwhile.

    A write error (a full disk) cuts the file back to its last complete row and raises
    ``RecordWriteError``.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.format = manifest_format(self.path)
        self.resume = resume
        self._file: Any = None
        self._end = 0  # bytes of complete rows
        self._status: dict[str, str] = {}  # path -> status of its last row
        self._repeated = False  # a path got a second row: compact on close

    def __enter__(self) -> ManifestWriter:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        rows: list[dict[str, Any]] = []
        _replaceable_mode(self.path, "manifest ")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keep = 0
            if self.resume and self.path.exists():
                rows, keep = _read_manifest(self.path, self.format)
                latest = last_rows(rows)
                if len(latest) < len(rows):
                    rows = list(latest.values())
                    atomic_write(self.path, self._render(rows))
                    keep = self.path.stat().st_size
                elif keep < self.path.stat().st_size:
                    os.truncate(self.path, keep)  # cut a partial last row off before appending
            self._file = open(self.path, "ab" if keep else "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise IcgError(f"cannot open manifest {self.path}: {exc.strerror or exc}") from exc
        self._end = keep
        self._status = {row["path"]: _status_of(row) for row in rows}
        self._repeated = False
        if not keep and self.format == "csv":
            self._put(_csv_line(MANIFEST_FIELDS))

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._repeated:
            try:
                rows = list(last_rows(_read_manifest(self.path, self.format)[0]).values())
                atomic_write(self.path, self._render(rows))
            except (OSError, IcgError) as exc:
                logger.warning("could not compact manifest %s (the next run does it): %s", self.path, exc)

    def done_paths(self) -> frozenset[str]:
        """Paths whose last row has a status other than "failed" (including rows written now)."""
        return frozenset(path for path, status in self._status.items() if status != "failed")

    def write(
        self,
        path: str | os.PathLike,
        *,
        caption: str = "",
        keywords: Iterable[str] = (),
        model: str = "",
        settings: Mapping[str, Any] | None = None,
        seed: int | None = None,
        error: str | None = None,
        status: str | None = None,
    ) -> None:
        """Add one row. ``status`` defaults to "failed" with an error, else "done"."""
        if self._file is None:
            raise RuntimeError("ManifestWriter is not open; use it as a context manager")
        row = printable_data(
            {
                "path": os.fspath(path),
                "caption": caption,
                "keywords": list(keywords),
                "model": model,
                "settings": dict(settings or {}),
                "seed": seed,
                "error": error,
                "status": status or ("failed" if error else "done"),
            }
        )
        self._put(self._line(row))
        self._repeated = self._repeated or row["path"] in self._status
        self._status[row["path"]] = row["status"]

    def _put(self, data: bytes) -> None:
        try:
            _write_all(self._file, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._file.truncate(self._end)
            raise RecordWriteError(f"cannot write manifest {self.path}: {exc.strerror or exc}") from exc
        self._end += len(data)

    def _line(self, row: Mapping[str, Any]) -> bytes:
        if self.format == "jsonl":
            return (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        return _csv_line(_to_csv_row(row))

    def _render(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        head = _csv_line(MANIFEST_FIELDS) if self.format == "csv" else b""
        return head + b"".join(self._line(printable_data(row)) for row in rows)


def last_rows(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Path -> its last row, in the order of each path's first row."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest[row["path"]] = row
    return latest


def manifest_done(path: str | os.PathLike) -> frozenset[str]:
    """The paths of a manifest whose last row did not fail (empty when the file does not exist)."""
    if not Path(path).exists():
        return frozenset()
    rows = last_rows(read_manifest(path)).values()
    return frozenset(row["path"] for row in rows if _status_of(row) != "failed")


def _status_of(row: Mapping[str, Any]) -> str:
    return row.get("status") or ("failed" if row.get("error") else "done")


def _csv_line(cells: Iterable[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(list(cells))
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------------- append state


class AppendState:
    """What this round of ``append``/``prepend`` has added to caption files, so that no rerun (a plain
    second run with sampled captions, a rerun after a kill, with or without a manifest) adds a caption to
    a file twice.

    The state is ``APPEND_STATE_NAME`` in the caption folder: one JSON line per caption file written,
    ``{"key", "before", "after"}``, the SHA-256 of the file before our write (``null``: there was none) and
    after it. The line is written and fsynced *before* the caption file is replaced, so after a kill at
    any point the file tells what happened: still its ``before`` content, the write never happened and is
    done again; anything else (our ``after``, or the user's edit since), it is left alone. A write error
    raises ``RecordWriteError``. ``reset()`` starts a new round (``resume=False``).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / APPEND_STATE_NAME
        self._before: dict[str, str | None] = {}
        self._file: Any = None
        self._end = 0

    def load(self) -> AppendState:
        """Read the state file (a torn last line, from a kill, is ignored)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self
        except OSError as exc:
            raise IcgError(f"cannot read the append state {self.path}: {exc.strerror or exc}") from exc
        self._end = data.rfind(b"\n") + 1
        for line in data[: self._end].splitlines():
            try:
                entry = json.loads(line)
                self._before[entry["key"]] = entry["before"]
            except (ValueError, TypeError, KeyError):
                logger.warning("append state %s: a line that is not an entry; ignored", self.path)
        return self

    def reset(self) -> None:
        """Forget the round: the next record starts a new state file."""
        self.close()
        self._before.clear()
        self._end = 0
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            reason = exc.strerror or exc
            raise RecordWriteError(f"cannot reset the append state {self.path}: {reason}") from exc

    def added(self, key: str, sidecar: str | os.PathLike) -> bool:
        """Whether this round already added a caption to ``sidecar`` (the caption file of ``key``)."""
        key = printable(key)
        if key not in self._before:
            return False
        try:
            data = Path(sidecar).read_bytes()
        except OSError:
            return False  # gone (a new file repeats nothing), or unreadable: the write reports it
        return _digest(data) != self._before[key]

    def record(self, key: str, before: bytes | None, after: bytes) -> None:
        """Note that ``key``'s caption file is about to go from ``before`` to ``after``; durable on return."""
        entry = {"key": printable(key), "before": _digest(before), "after": _digest(after)}
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "r+b" if self.path.exists() else "wb", buffering=0)  # noqa: SIM115
                self._file.truncate(self._end)  # a torn last line
                self._file.seek(self._end)
            _write_all(self._file, data)
            os.fsync(self._file.fileno())
        except OSError as exc:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.truncate(self._end)
            reason = exc.strerror or exc
            raise RecordWriteError(f"cannot write the append state {self.path}: {reason}") from exc
        self._end += len(data)
        self._before[entry["key"]] = entry["before"]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete rows of a manifest, with CSV cells turned back into lists, dicts, ints and ``None``."""
    path = Path(path)
    try:
        return _read_manifest(path, manifest_format(path))[0]
    except OSError as exc:
        raise IcgError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def _read_manifest(path: Path, fmt: str) -> tuple[list[dict[str, Any]], int]:
    """(rows, number of leading bytes holding complete rows)."""
    data = path.read_bytes()
    return _read_jsonl(path, data) if fmt == "jsonl" else _read_csv(path, data)


def _read_jsonl(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    end = data.rfind(b"\n") + 1  # whatever follows the last newline is a partial row
    rows = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and "path" in row:
            rows.append(row)
        else:
            logger.warning("manifest %s line %d is not a row; ignored", path, number)
    return rows, end


def _read_csv(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    bom = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError:
        raise IcgError(f"manifest {path} is not UTF-8 text") from None
    records, end = _complete_csv_records(text)
    if not records:
        return [], 0
    header, body = records[0], records[1:]
    if tuple(header) != MANIFEST_FIELDS:
        raise IcgError(
            f"manifest {path} has the columns {', '.join(header)}; expected {', '.join(MANIFEST_FIELDS)}"
        )
    rows = [_from_csv_row(dict(zip(header, record))) for record in body if len(record) == len(header)]
    return rows, bom + len(text[:end].encode("utf-8"))


def _complete_csv_records(text: str) -> tuple[list[list[str]], int]:
    """The records of ``text`` that end with a line break, and the character offset just after them."""
    consumed = 0

    def lines() -> Iterable[str]:
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    records, end = [], 0
    with contextlib.suppress(csv.Error):  # an unterminated quote at the end of a partial row
        for record in csv.reader(lines()):
            if text[consumed - 1 : consumed] not in ("\n", "\r"):
                break  # the last record has no line break: a partial row
            if record:
                records.append(record)
            end = consumed
    return records, end


def _to_csv_row(row: Mapping[str, Any]) -> list[str]:
    return [
        row["path"],
        row["caption"],
        ", ".join(row["keywords"]),
        row["model"],
        row["settings"]
        if isinstance(row["settings"], str)
        else json.dumps(row["settings"], ensure_ascii=False, sort_keys=True, default=str),
        "" if row["seed"] is None else str(row["seed"]),
        row["error"] or "",
        row["status"],
    ]


def _from_csv_row(cells: Mapping[str, str]) -> dict[str, Any]:
    seed = cells["seed"]
    return {
        **cells,
        "keywords": cells["keywords"].split(", ") if cells["keywords"] else [],
        "settings": _json_or_text(cells["settings"]),
        "seed": int(seed) if seed.lstrip("-").isdigit() else (seed or None),
        "error": cells["error"] or None,
    }


def _json_or_text(cell: str) -> Any:
    """A settings cell: its JSON value, ``{}`` when empty, or the text itself if someone edited it badly."""
    try:
        return json.loads(cell) if cell else {}
    except ValueError:
        return cell
