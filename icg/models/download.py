"""Fetching model files into the models folder, checking them, and telling what is installed.

* ``hf`` sources go through ``huggingface_hub.hf_hub_download`` with ``local_dir`` = the model folder, so
  the files land there under their own names (resume, the hub's cache and ``HF_HUB_OFFLINE`` are the
  hub's business). huggingface_hub is imported only when something is downloaded.
* ``url`` sources are plain HTTPS downloads with ``urllib``: written to ``<file>.part``, resumed with a
  ``Range`` request when a ``.part`` exists (a full download when the server ignores it), checked
  against the registry's size and sha256 where known, then renamed into place.
* Offline (the ``offline`` argument, ``ICG_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), an unreachable server,
  or a manual-only model: ``DownloadError`` with one message naming the file, its URL and the manual
  alternative (``python -m icg import FILE --as <id>``).

Nothing is downloaded at import time, and this module never prints: it logs, and shows a tqdm bar for
URL downloads when ``progress`` is true.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from icg.__version__ import __version__
from icg.errors import DownloadError
from icg.models.paths import ensure_dir, model_dir
from icg.models.registry import ModelEntry, ModelSource, resolve_entries

logger = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("ICG_OFFLINE", "HF_HUB_OFFLINE")
IMPORT_COMMAND = "python -m icg import FILE --as {id}"
HTTP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
CHUNK_SIZE = 1 << 20
USER_AGENT = f"icg/{__version__} (+https://github.com/Anshler/ICG_sd_extension)"

_TRUE = frozenset({"1", "true", "yes", "on"})
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


# --------------------------------------------------------------------------------------------------
# Offline mode


def offline_reason(offline: bool | None = None) -> str | None:
    """Why downloads are refused (``None`` when they are allowed).

    ``offline`` True/False decides; ``None`` reads ``ICG_OFFLINE`` and ``HF_HUB_OFFLINE``.
    """
    if offline is True:
        return "offline mode is on"
    if offline is False:
        return None
    for var in OFFLINE_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value.lower() in _TRUE:
            return f"offline mode is on ({var}={value})"
    return None


def is_offline(offline: bool | None = None) -> bool:
    """True when downloads are refused (see ``offline_reason``)."""
    return offline_reason(offline) is not None


# --------------------------------------------------------------------------------------------------
# Checksums and sizes


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> str:
    """The sha256 of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], sha256: str | None) -> str | None:
    """Check ``path`` against ``sha256``; return the actual digest (``None`` when nothing is expected).

    A mismatch raises ``DownloadError`` naming the file and both hashes; the file is left in place.
    """
    if sha256 is None:
        return None
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise DownloadError(f"{path}: sha256 mismatch, expected {sha256.lower()}, got {actual}")
    return actual


def format_size(nbytes: int | None) -> str:
    """``1536`` -> ``'1.5 KB'`` (binary units); ``None`` -> ``'unknown size'``."""
    if nbytes is None:
        return "unknown size"
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _file_size(entry: ModelEntry, filename: str) -> int | None:
    sizes = [s.size for s in entry.sources_for(filename) if s.size is not None]
    return sizes[0] if sizes else None


def _sum_sizes(entry: ModelEntry, files: Iterable[str], probe: bool = False) -> tuple[int, int]:
    """(known bytes, number of files of unknown size) for ``files`` of ``entry``."""
    known, unknown = 0, 0
    for name in files:
        size = _file_size(entry, name)
        if size is None and probe:
            size = next((s for s in map(_probe_size, entry.sources_for(name)) if s is not None), None)
        if size is None:
            unknown += 1
        else:
            known += size
    return known, unknown


def _describe_total(known: int, unknown: int) -> str:
    if unknown and not known:
        return "unknown size"
    if unknown:
        return f"{format_size(known)} + {unknown} file(s) of unknown size"
    return format_size(known)


def expected_size(entry: ModelEntry) -> int | None:
    """Bytes the model's required files take once downloaded; ``None`` if any size is unknown."""
    known, unknown = _sum_sizes(entry, entry.required_files)
    return None if unknown else known


def file_path(entry: ModelEntry, root: str | os.PathLike[str], filename: str) -> Path:
    """Where ``filename`` of ``entry`` lives: ``<root>/<id>/<filename>``."""
    return model_dir(entry, root) / filename


def missing_files(entry: ModelEntry, root: str | os.PathLike[str]) -> list[str]:
    """The required files of ``entry`` that are not in its folder yet."""
    return [f for f in entry.required_files if not file_path(entry, root, f).is_file()]


def present(entry: ModelEntry, root: str | os.PathLike[str]) -> bool:
    """True when every required file of ``entry`` is in its folder."""
    return not missing_files(entry, root)


def local_size(entry: ModelEntry, root: str | os.PathLike[str]) -> int:
    """Bytes the model's files take on disk now (files that exist; 0 when none do)."""
    total = 0
    for name in entry.files:
        path = file_path(entry, root, name)
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


# --------------------------------------------------------------------------------------------------
# Messages


def manual_instructions(
    entry: ModelEntry, root: str | os.PathLike[str], files: Iterable[str] | None = None
) -> str:
    """How a person installs ``entry`` by hand: where to get the file(s) and the import command."""
    names = list(files) if files is not None else list(entry.required_files)
    folder = model_dir(entry, root)
    direct = [
        f"{name} from {entry.sources_for(name)[0].download_url}" for name in names if entry.sources_for(name)
    ]
    pages = [f"{s.filename or 'the file'} from the page {s.url}" for s in entry.manual_sources]
    if direct:
        get = "download " + "; ".join(direct)
        if pages:
            get += f" (another copy: {'; '.join(pages)})"
    elif pages:
        get = "download " + "; ".join(pages)
    else:
        get = "get " + ", ".join(names)
    command = IMPORT_COMMAND.format(id=entry.id)
    copy = ", ".join(names) if names else "the files"
    return f"To install it by hand, {get}, then run: {command} (or copy {copy} into {folder})."


def _label(entry: ModelEntry, capital: bool = False) -> str:
    return f"{'Model' if capital else 'model'} '{entry.id}' ({entry.display_name})"


# --------------------------------------------------------------------------------------------------
# Hugging Face


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise DownloadError(
            "huggingface_hub is not installed; install it with: pip install huggingface_hub"
        ) from err
    return huggingface_hub


def _fetch_hf(source: ModelSource, folder: Path) -> Path:
    hub = _hub()
    kwargs: dict[str, Any] = {"repo_id": source.repo, "filename": source.filename, "local_dir": str(folder)}
    if source.revision:
        kwargs["revision"] = source.revision
    try:
        returned = Path(hub.hf_hub_download(**kwargs))
    except Exception as err:  # any hub or network failure becomes one readable error
        raise DownloadError(f"{type(err).__name__}: {err}".strip().splitlines()[0]) from err
    dest = folder / str(source.filename)
    if not dest.is_file():
        if not returned.is_file():
            raise DownloadError(f"the hub returned {returned}, which is not a file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(returned.read_bytes())
    try:
        verify_file(dest, source.sha256)
    except DownloadError:
        dest.unlink(missing_ok=True)
        raise
    return dest


# --------------------------------------------------------------------------------------------------
# Plain HTTPS


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Iterator[Any]:
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _open(url: str, start: int, method: str = "GET", timeout: float = HTTP_TIMEOUT_S) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers, method=method)
    return urllib.request.urlopen(request, timeout=timeout)


def _http_reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    return f"{type(err).__name__}: {err}"


def _fetch_url(source: ModelSource, folder: Path, progress: bool) -> Path:
    url, name = str(source.url), str(source.filename)
    dest = folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for _attempt in range(2):
        start = part.stat().st_size if part.is_file() else 0
        if source.size is not None and start > source.size:
            part.unlink()
            start = 0
        try:
            response = _open(url, start)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start:  # range not satisfiable: the .part is complete or stale
                if source.size is not None and start == source.size:
                    break
                part.unlink()
                continue
            raise DownloadError(_http_reason(err)) from err
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DownloadError(_http_reason(err)) from err
        with response:
            status = getattr(response, "status", None) or response.getcode()
            mode = "wb"
            if start and status == 206:
                match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == start:
                    mode = "ab"
                    logger.info("Resuming %s at %s", name, format_size(start))
            if mode == "wb":
                if start:
                    logger.info("The server ignored the resume request for %s; downloading it again", name)
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else source.size
            written = start
            try:
                with open(part, mode) as fh, _progress_bar(progress, total, start, name) as bar:
                    while chunk := response.read(CHUNK_SIZE):
                        fh.write(chunk)
                        written += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except OSError as err:
                raise DownloadError(
                    f"interrupted after {format_size(written)} ({_http_reason(err)}); run again to resume"
                ) from err
            if total is not None and written < total:
                raise DownloadError(
                    f"the connection closed after {format_size(written)} of {format_size(total)}; "
                    "run again to resume"
                )
        break
    else:  # pragma: no cover - both attempts were 416 on a stale .part
        raise DownloadError("the server refused the byte range twice")

    actual_size = part.stat().st_size
    if source.size is not None and actual_size != source.size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{name}: size mismatch, expected {source.size} bytes, got {actual_size}")
    if source.sha256 is not None:
        actual = sha256_file(part)
        if actual != source.sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{name}: sha256 mismatch, expected {source.sha256}, got {actual} (file deleted)"
            )
    os.replace(part, dest)
    return dest


def _probe_size(source: ModelSource) -> int | None:
    """Best effort: the remote size of a file, or ``None`` (never raises)."""
    try:
        if source.kind == "hf":
            import huggingface_hub as hub

            url = hub.hf_hub_url(source.repo, source.filename, revision=source.revision)
            size = hub.get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S).size
            return int(size) if size is not None else None
        if source.kind == "url":
            with _open(str(source.url), 0, method="HEAD", timeout=PROBE_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else None
    except Exception:  # a probe only improves a log line
        return None
    return None


# --------------------------------------------------------------------------------------------------
# Public download functions


def _fetch_file(entry: ModelEntry, root: Path, folder: Path, name: str, progress: bool) -> Path | None:
    sources = entry.sources_for(name)
    failures = []
    for source in sources:
        logger.info("Downloading %s for %s from %s", name, entry.id, source.download_url)
        try:
            if source.kind == "hf":
                return _fetch_hf(source, folder)
            return _fetch_url(source, folder, progress)
        except DownloadError as err:
            failures.append(f"{source.download_url} ({err})")
            logger.debug("download of %s from %s failed: %s", name, source.download_url, err)
    if entry.is_optional(name):
        logger.info("Optional file %s of %s is not available; continuing without it", name, entry.id)
        return None
    tried = "; ".join(failures) if failures else "it has no automatic source"
    raise DownloadError(
        f"Could not download {name} for {_label(entry)}: tried {tried}. "
        + manual_instructions(entry, root, [name])
    )


def _download(entry: ModelEntry, root: Path, offline: bool | None, progress: bool, announce: bool) -> Path:
    folder = model_dir(entry, root)
    missing = missing_files(entry, root)
    if not missing:
        return folder
    if entry.manual_only:
        raise DownloadError(
            f"{_label(entry, capital=True)} can't be downloaded automatically. "
            + manual_instructions(entry, root)
        )
    reason = offline_reason(offline)
    if reason is not None:
        raise DownloadError(
            f"Can't download {_label(entry)}: {reason}. " + manual_instructions(entry, root, missing)
        )
    # Optional files come along only when required ones are being fetched anyway.
    pending = [f for f in entry.files if not file_path(entry, root, f).is_file()]
    if announce:
        known, unknown = _sum_sizes(entry, pending, probe=True)
        logger.info(
            "Downloading %s: %d file(s), %s, into %s",
            entry.id,
            len(pending),
            _describe_total(known, unknown),
            folder,
        )
    ensure_dir(folder)
    for name in pending:
        _fetch_file(entry, root, folder, name, progress)
    still_missing = missing_files(entry, root)
    if still_missing:
        raise DownloadError(
            f"{_label(entry, capital=True)} is still missing {', '.join(still_missing)} after the download. "
            + manual_instructions(entry, root, still_missing)
        )
    return folder


def download_model(
    entry: ModelEntry, root: str | os.PathLike[str], *, offline: bool | None = None, progress: bool = True
) -> Path:
    """Make sure every required file of ``entry`` is in ``<root>/<id>``; return that folder.

    Files already there are kept (no network then). ``offline``: True refuses, False allows, None reads
    ``ICG_OFFLINE`` / ``HF_HUB_OFFLINE``. Raises ``DownloadError`` (offline, unreachable, checksum
    mismatch, manual-only model) with a message that says how to install the model by hand.
    """
    return _download(entry, Path(root), offline, progress, announce=True)


def download_models(
    models: Iterable[str | ModelEntry],
    root: str | os.PathLike[str],
    *,
    offline: bool | None = None,
    progress: bool = True,
    registry: Mapping[str, ModelEntry] | None = None,
) -> dict[str, Path]:
    """Download several models (ids or entries); log the total size first.

    Every model is attempted; if any failed, one ``DownloadError`` lists each failure after the others
    have been fetched. Returns ``{id: folder}`` when all succeeded.
    """
    root_path = Path(root)
    entries = resolve_entries(models, registry)
    todo = [e for e in entries if not present(e, root_path)]
    if todo and not is_offline(offline):
        known, unknown = 0, 0
        for entry in todo:
            if entry.manual_only:
                continue
            k, u = _sum_sizes(
                entry, [f for f in entry.files if not file_path(entry, root_path, f).is_file()], True
            )
            known, unknown = known + k, unknown + u
        logger.info(
            "Downloading %d model(s) (%s): %s in total, into %s",
            len(todo),
            ", ".join(e.id for e in todo),
            _describe_total(known, unknown),
            root_path,
        )
    done: dict[str, Path] = {}
    errors: list[str] = []
    for entry in entries:
        try:
            done[entry.id] = _download(entry, root_path, offline, progress, announce=False)
        except DownloadError as err:
            errors.append(str(err))
    if errors:
        raise DownloadError("\n".join(errors))
    return done
