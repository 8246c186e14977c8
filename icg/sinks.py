"""Where captions go: sidecar text files beside (or mirrored away from) the images, and a JSONL/CSV manifest.

Sidecar files are written atomically: the new content goes to a hidden temp file in the same folder
(``.<name>.<random>.tmp``, which discovery ignores), is fsynced, then replaces the target with
``os.replace``; on any error the temp file is removed and the old file is left as it was.

Sidecar text rules: UTF-8; a file ends with exactly one newline; an existing file's newline convention
("\\r\\n" or "\\n") and UTF-8 BOM are kept, whatever the policy. ``append``/``prepend`` join the old text and
the caption with ``separator`` (default: one newline), after dropping the blank lines at the join, so
``"a cat\\n"`` + append ``"a dog"`` gives ``"a cat\\na dog\\n"`` and with ``separator=", "`` gives
``"a cat, a dog\\n"``. An empty caption adds nothing (a new file is empty). An existing file that is not
UTF-8 is never appended to or prepended to.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
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
    path: str | os.PathLike, caption: str, policy: str = "skip", separator: str | None = None
) -> SidecarAction:
    """Write ``caption`` to the sidecar ``path`` following ``policy``; return the action taken.

    Raises ``IcgError`` naming the file when it can't be read or written, or when ``append``/``prepend``
    meets an existing file that is not UTF-8 text.
    """
    path = Path(path)
    action = plan_sidecar(path, policy)
    if action == "skip":
        return action
    existing = None if action == "new" else _read_bytes(path)
    atomic_write(path, _sidecar_bytes(path, existing, caption, action, separator))
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

    Creates missing parent folders. Raises ``IcgError`` naming the file on failure, leaving no temp file
    and the old content intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = None
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


def _create_temp(path: Path) -> tuple[str, int]:
    """A new hidden ``.<name>.<random>.tmp`` beside ``path``, created with the umask's permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


# ---------------------------------------------------------------------------------------------- manifest


def manifest_format(path: str | os.PathLike) -> str:
    """Return "jsonl" or "csv" from the file extension; anything else is a ``ConfigError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _MANIFEST_FORMATS:
        raise ConfigError(f"manifest {path}: unknown format {suffix or '(none)'!r}; use .jsonl or .csv")
    return _MANIFEST_FORMATS[suffix]


class ManifestWriter:
    """One row per image in a JSONL or CSV file, flushed after each row.

    With ``resume=True`` an existing manifest is kept and appended to (a partial last row left by a killed
    run is cut off first), and ``done_paths()`` holds the paths of its rows that did not fail. Without it an
    existing manifest is replaced. Rows hold ``MANIFEST_FIELDS``; in CSV, keywords are joined with ", ",
    settings is a JSON string and a missing seed or error is an empty cell.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.format = manifest_format(self.path)
        self.resume = resume
        self._file: io.TextIOWrapper | None = None
        self._csv: Any = None
        self._done: set[str] = set()

    def __enter__(self) -> ManifestWriter:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            resuming = self.resume and self.path.exists()
            rows, keep = _read_manifest(self.path, self.format) if resuming else ([], 0)
            if keep:
                with open(self.path, "r+b") as raw:
                    raw.truncate(keep)  # cut a partial last row off before appending
            self._file = open(self.path, "a" if keep else "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise IcgError(f"cannot open manifest {self.path}: {exc.strerror or exc}") from exc
        self._done = {row["path"] for row in rows if row.get("status") != "failed"}
        if self.format == "csv":
            self._csv = csv.writer(self._file, lineterminator="\n")
            if not keep:
                self._csv.writerow(MANIFEST_FIELDS)
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def done_paths(self) -> frozenset[str]:
        """Paths already in the manifest with a status other than "failed" (including rows written now)."""
        return frozenset(self._done)

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
        """Add one row and flush it. ``status`` defaults to "failed" with an error, else "done"."""
        if self._file is None:
            raise RuntimeError("ManifestWriter is not open; use it as a context manager")
        row = {
            "path": os.fspath(path),
            "caption": caption,
            "keywords": list(keywords),
            "model": model,
            "settings": dict(settings or {}),
            "seed": seed,
            "error": error,
            "status": status or ("failed" if error else "done"),
        }
        if self.format == "jsonl":
            self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            self._csv.writerow(_to_csv_row(row))
        self._file.flush()
        if row["status"] != "failed":
            self._done.add(row["path"])


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
        json.dumps(row["settings"], ensure_ascii=False, sort_keys=True, default=str),
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
