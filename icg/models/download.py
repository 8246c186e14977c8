"""Fetching model files into the models folder, checking them and converting them. What is installed is
``icg.models.inventory``'s business (it uses the file checks below).

* ``hf`` sources go through ``huggingface_hub.hf_hub_download`` with ``local_dir`` = the model folder, so
  the files land there under their own names (resume and the hub's cache are the hub's business).
  huggingface_hub is imported only when something is downloaded. Offline, or with the hub unreachable,
  a file already in the Hugging Face cache is still copied in (``local_files_only``).
* ``url`` sources (the two small SBG vocabulary pickles) are plain HTTPS downloads with ``urllib``:
  streamed into a temp file beside the destination, checked against the registry's size and sha256,
  then renamed into place; no resume (a failed download starts over).
* Before the first file from a host, the host is probed once with one short HEAD request (the hub client
  itself retries an unreachable host for ~25 s per file); an unreachable host is remembered for a minute
  and fails every file at once, so an offline machine gets its answer in well under a second.
* Entries with ``convert_from`` (a torch ``.pt`` state_dict, the SBG vocabulary pickles) are converted
  once after the download (``icg.models.importer.convert_downloaded``: safetensors + JSON, the originals
  deleted unless ``keep_original``). Inputs already in the model folder (copied there by hand, or kept)
  are converted without any network.
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
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.__version__ import __version__
from icg.errors import DownloadError, IcgError
from icg.models.paths import ensure_dir, model_dir
from icg.models.pointers import installed_file
from icg.models.pointers import resolve as resolve_pointer
from icg.models.registry import (
    HF_ENDPOINT,
    ModelEntry,
    ModelSource,
    resolve_entries,
)

logger = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("ICG_OFFLINE", "HF_HUB_OFFLINE")
IMPORT_COMMAND = "python -m icg import FILE --as {id}"
HTTP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
UNREACHABLE_TTL_S = 60.0  # how long an unreachable host is remembered
AUTO_KINDS = ("hf", "url")
CHUNK_SIZE = 1 << 20
USER_AGENT = f"icg/{__version__} (+https://github.com/Anshler/ICG_sd_extension)"

_TRUE = frozenset({"1", "true", "yes", "on"})


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


def _approx_size(entry: ModelEntry, filename: str) -> int | None:
    sizes = [s.approx_size for s in entry.sources_for(filename) if s.approx_size is not None]
    return sizes[0] if sizes else None


@dataclass(frozen=True)
class SizeTotal:
    """Bytes of some files: ``known`` (exact or approximate; ``approximate`` when any was), and the
    number of files whose size nobody knows."""

    known: int = 0
    unknown: int = 0
    approximate: bool = False

    def __add__(self, other: SizeTotal) -> SizeTotal:
        return SizeTotal(
            self.known + other.known, self.unknown + other.unknown, self.approximate or other.approximate
        )

    def __str__(self) -> str:
        """``'1.2 GB'``, ``'about 1.2 GB'``, ``'about 1.2 GB + 2 file(s) of unknown size'`` or
        ``'unknown size'``."""
        if self.unknown and not self.known:
            return "unknown size"
        text = ("about " if self.approximate else "") + format_size(self.known)
        return f"{text} + {self.unknown} file(s) of unknown size" if self.unknown else text


def _sum_sizes(entry: ModelEntry, files: Iterable[str], probe: bool = False) -> SizeTotal:
    """The size of ``files`` of ``entry``: the registry's exact sizes, else (``probe``) the server's,
    else the registry's approximate ones."""
    total = SizeTotal()
    for name in files:
        size = _file_size(entry, name)
        if size is None and probe:
            size = next((s for s in map(_probe_size, entry.sources_for(name)) if s is not None), None)
        if size is not None:
            total += SizeTotal(size)
        elif _approx_size(entry, name) is not None:
            total += SizeTotal(_approx_size(entry, name), approximate=True)
        else:
            total += SizeTotal(unknown=1)
    return total


def expected_size(entry: ModelEntry) -> int | None:
    """Bytes (approximate where the registry says so) a download of the model's required files takes;
    ``None`` if any size is unknown.

    For a converted entry these are the downloaded originals (the converted files are about as big)."""
    total = _sum_sizes(entry, entry.required_downloads)
    return None if total.unknown else total.known


def file_path(entry: ModelEntry, root: str | os.PathLike[str], filename: str) -> Path:
    """Where ``filename`` of ``entry`` lives: ``<root>/<id>/<filename>``."""
    return model_dir(entry, root) / filename


def missing_files(entry: ModelEntry, root: str | os.PathLike[str]) -> list[str]:
    """The required files of ``entry`` that are not in its folder yet (a file referenced by a pointer
    file that still checks out counts as there: ``icg.models.pointers``)."""
    folder = model_dir(entry, root)
    return [f for f in entry.required_files if installed_file(folder, f) is None]


def pointer_problems(entry: ModelEntry, root: str | os.PathLike[str]) -> list[str]:
    """Why pointer files of ``entry`` no longer count (their target gone or changed), one line each."""
    folder = model_dir(entry, root)
    return [p for p in (resolve_pointer(folder, f)[1] for f in entry.required_files) if p]


def missing_downloads(entry: ModelEntry, root: str | os.PathLike[str]) -> list[str]:
    """The required downloaded files of ``entry`` (``convert_from`` or ``files``) not in its folder."""
    return [f for f in entry.required_downloads if not file_path(entry, root, f).is_file()]


def present(entry: ModelEntry, root: str | os.PathLike[str]) -> bool:
    """True when every required installed file of ``entry`` (converted ones included) is in its folder."""
    return not missing_files(entry, root)


def ready_to_convert(entry: ModelEntry, root: str | os.PathLike[str]) -> bool:
    """True when a converted entry is not installed yet but its originals are in its folder."""
    return entry.converted and not present(entry, root) and not missing_downloads(entry, root)


def local_size(entry: ModelEntry, root: str | os.PathLike[str]) -> int:
    """Bytes the model's files take on disk now (files that exist, kept originals included; 0 if none).
    A file a pointer refers to counts when it is in the model's folder (a converted copy), not when it
    is another tool's."""
    total = 0
    folder = model_dir(entry, root)
    for name in dict.fromkeys(entry.files + entry.convert_from):
        path = installed_file(folder, name) or file_path(entry, root, name)
        if path.parent != folder:
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


# --------------------------------------------------------------------------------------------------
# Messages


def manual_instructions(
    entry: ModelEntry, root: str | os.PathLike[str], files: Iterable[str] | None = None
) -> str:
    """How a person installs ``entry`` by hand, as an indented block of short lines to follow a one-line
    headline: each address once (a file's name ends its address), then the import command."""
    names = list(files) if files is not None else list(entry.required_downloads)
    folder = model_dir(entry, root)
    direct = [entry.sources_for(name)[0].download_url for name in names if entry.sources_for(name)]
    pages = [(s.url, s.filename) for s in entry.manual_sources]
    get = "download" if direct or pages else f"get {', '.join(names)}"
    lines = [f"  install by hand: {get}"]
    lines += [f"    {url}" for url in direct]
    for url, name in pages:
        offers = f"a web page offering {name}" if name else "a web page"
        lines.append(f"    {url}  ({offers}{'; another copy' if direct else ''})")
    command = IMPORT_COMMAND.format(id=entry.id)
    if len(entry.required_downloads) > 1:  # import takes the folder holding them all
        command = command.replace(" FILE ", " FOLDER ")
    lines.append(f"  then run: {command}")
    what = names[0] if len(names) == 1 else "the files"
    lines.append(f"  (or copy {what} into {folder})")
    return "\n".join(lines)


def _label(entry: ModelEntry, capital: bool = False) -> str:
    return f"{'Model' if capital else 'model'} '{entry.id}' ({entry.display_name})"


# --------------------------------------------------------------------------------------------------
# Reachability: one quick probe per host instead of a client's long retry loop per file

_UNREACHABLE: dict[str, tuple[float, str]] = {}
_UNREACHABLE_LOCK = threading.Lock()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def hf_endpoint() -> str:
    """The Hugging Face endpoint in use (``$HF_ENDPOINT`` for a mirror, else huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")


def _known_unreachable(url: str) -> str | None:
    origin = _origin(url)
    with _UNREACHABLE_LOCK:
        seen = _UNREACHABLE.get(origin)
        if seen is not None and time.monotonic() - seen[0] < UNREACHABLE_TTL_S:
            return seen[1]
        _UNREACHABLE.pop(origin, None)
    return None


def _mark_unreachable(url: str, reason: str) -> None:
    with _UNREACHABLE_LOCK:
        _UNREACHABLE[_origin(url)] = (time.monotonic(), reason)


def forget_unreachable() -> None:
    """Forget which hosts were found unreachable (they are otherwise remembered for a minute).

    Every explicit download (``icg download``, ``download_models``, ``ModelManager.install(...,
    explicit=True)`` behind the Models panel's Download) calls this first, so a network that came back
    is seen at once; only implicit installs on first use rely on the memo."""
    with _UNREACHABLE_LOCK:
        _UNREACHABLE.clear()


def probe_origin(origin: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request to ``origin`` without retries: ``None`` when a server answered (any HTTP
    status), else why not. Honours the proxy environment variables, as the download clients do."""
    try:
        with _open(origin + "/", method="HEAD", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        return _http_reason(err)


def unreachable_reason(url: str) -> str | None:
    """Why the host of ``url`` can't be reached now (probed once, remembered for a minute), or None."""
    reason = _known_unreachable(url)
    if reason is not None:
        return reason
    reason = probe_origin(_origin(url))
    if reason is not None:
        _mark_unreachable(url, reason)
    return reason


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


def _copy_into(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary name, so ``dest`` is never half written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.copy")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _verified(dest: Path, source: ModelSource) -> Path:
    try:
        verify_file(dest, source.sha256)
    except DownloadError as err:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"{err} (file deleted)") from None
    return dest


def _hf_cached(source: ModelSource) -> Path | None:
    """The file from the Hugging Face cache, without any network; None when it is not there."""
    try:
        hub = _hub()
        kwargs: dict[str, Any] = {
            "repo_id": source.repo,
            "filename": source.filename,
            "local_files_only": True,
        }
        if source.revision:
            kwargs["revision"] = source.revision
        path = Path(hub.hf_hub_download(**kwargs))
    except Exception:  # not cached, or no hub at all: both mean "not available offline"
        return None
    return path if path.is_file() else None


def _from_hf_cache(source: ModelSource, folder: Path) -> Path | None:
    cached = _hf_cached(source)
    if cached is None:
        return None
    dest = folder / str(source.filename)
    logger.info("Copying %s from the Hugging Face cache (%s)", source.filename, cached)
    _copy_into(cached, dest)
    return _verified(dest, source)


def _fetch_hf(source: ModelSource, folder: Path) -> Path:
    hub = _hub()
    reason = unreachable_reason(hf_endpoint())
    if reason is not None:
        cached = _from_hf_cache(source, folder)
        if cached is not None:
            return cached
        raise DownloadError(reason)
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
        _copy_into(returned, dest)
    return _verified(dest, source)


# --------------------------------------------------------------------------------------------------
# Plain HTTPS


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None, desc: str) -> Iterator[Any]:
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _open(url: str, method: str = "GET", timeout: float = HTTP_TIMEOUT_S) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    request = urllib.request.Request(url, headers=headers, method=method)
    return urllib.request.urlopen(request, timeout=timeout)


def _http_reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    return f"{type(err).__name__}: {err}"


def _fetch_url(source: ModelSource, folder: Path, progress: bool) -> Path:
    """A plain download of a small file: streamed into a hidden temp file beside its destination while
    hashing, checked against the registry's size and sha256, then renamed into place. A failed download
    leaves nothing behind and starts over next time (large weights go through the hub, which resumes)."""
    from icg.sinks import atomic_write_with

    url, name = str(source.url), str(source.filename)
    reason = unreachable_reason(url)
    if reason is not None:
        raise DownloadError(reason)
    try:
        response = _open(url)
    except urllib.error.HTTPError as err:
        raise DownloadError(_http_reason(err)) from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        if not isinstance(err, ValueError):
            _mark_unreachable(url, _http_reason(err))
        raise DownloadError(_http_reason(err)) from err

    def stream(tmp: str) -> None:
        digest, size = hashlib.sha256(), 0
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else source.size
        try:
            with response, open(tmp, "wb") as fh, _progress_bar(progress, total, name) as bar:
                while chunk := response.read(CHUNK_SIZE):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except OSError as err:
            reason = _http_reason(err)
            raise DownloadError(f"{name}: interrupted after {format_size(size)} ({reason})") from err
        if source.size is not None and size != source.size:
            raise DownloadError(f"{name}: size mismatch, expected {source.size} bytes, got {size}")
        actual = digest.hexdigest()
        if source.sha256 is not None and actual != source.sha256.lower():
            raise DownloadError(
                f"{name}: sha256 mismatch, expected {source.sha256.lower()}, got {actual} (file deleted)"
            )

    dest = folder / name
    atomic_write_with(dest, stream)
    return dest


def _probe_size(source: ModelSource) -> int | None:
    """Best effort: the remote size of a file, or ``None`` (never raises)."""
    url = hf_endpoint() if source.kind == "hf" else str(source.url)
    if source.kind not in AUTO_KINDS or unreachable_reason(url) is not None:
        return None
    try:
        if source.kind == "hf":
            import huggingface_hub as hub

            url = hub.hf_hub_url(source.repo, source.filename, revision=source.revision)
            size = hub.get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S).size
            return int(size) if size is not None else None
        if source.kind == "url":
            with _open(str(source.url), method="HEAD", timeout=PROBE_TIMEOUT_S) as response:
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
            failures.append(str(err))  # the addresses follow in the install block
            logger.debug("download of %s from %s failed: %s", name, source.download_url, err)
    if entry.is_optional(name):
        logger.info("Optional file %s of %s is not available; continuing without it", name, entry.id)
        return None
    reasons = "; ".join(dict.fromkeys(failures)) if failures else "it has no automatic source"
    missing = [f for f in entry.required_downloads if f == name or not file_path(entry, root, f).is_file()]
    raise DownloadError(
        f"Could not download {name} for {_label(entry)}: {reasons}.\n"
        + manual_instructions(entry, root, missing)
    )


def _convert(entry: ModelEntry, folder: Path, keep_original: bool) -> None:
    try:
        from icg.models.importer import convert_downloaded

        convert_downloaded(entry, folder, keep_original=keep_original)
    except ImportError as err:
        raise DownloadError(
            f"Can't convert {', '.join(entry.convert_from)} of {_label(entry)}: {err} "
            "(install the dependencies first: python install.py)"
        ) from err
    except DownloadError:
        raise
    except IcgError as err:
        raise DownloadError(
            f"The download of {_label(entry)} in {folder} could not be converted: {err}. "
            f"Delete {', '.join(entry.convert_from)} there to download again."
        ) from err


def _remove_if_empty(folder: Path) -> None:
    """Remove a model folder a failed download created, when it holds no file worth keeping: a file, or
    the hub's partial ``*.incomplete`` download it resumes from, are; its other ``.cache`` notes are not."""
    for path in folder.rglob("*"):
        inside_cache = ".cache" in path.relative_to(folder).parts
        if path.is_file() and (not inside_cache or path.suffix == ".incomplete"):
            return
    shutil.rmtree(folder, ignore_errors=True)


def _pending_downloads(entry: ModelEntry, root: Path) -> list[str]:
    # Optional files come along only when required ones are being fetched anyway.
    return [f for f in entry.download_files if not file_path(entry, root, f).is_file()]


def _use_local_copy(entry: ModelEntry, folder: Path, clip_dirs: Sequence[str | os.PathLike[str]]) -> bool:
    """Install ``entry`` from a copy another tool keeps on this machine (its kind's ``local_copy``)."""
    from icg.captioners import kinds

    local_copy = kinds.get(entry.kind).local_copy
    if local_copy is None:
        return False
    created = not folder.exists()
    try:
        found = local_copy(entry, folder, tuple(str(d) for d in clip_dirs)) is not None
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    if not found and created:
        _remove_if_empty(folder)
    return found and present(entry, folder.parent)


def _download(
    entry: ModelEntry,
    root: Path,
    offline: bool | None,
    progress: bool,
    announce: bool,
    keep_original: bool = False,
    clip_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    folder = model_dir(entry, root)
    if present(entry, root):
        return folder
    if ready_to_convert(entry, root):  # originals copied in by hand, or kept: no network needed
        _convert(entry, folder, keep_original)
        return folder
    for problem in pointer_problems(entry, root):
        logger.warning("%s; looking for %s again", problem, entry.id)
    if _use_local_copy(entry, folder, clip_dirs):
        return folder
    missing = missing_downloads(entry, root)
    if entry.manual_only:
        raise DownloadError(
            f"{_label(entry, capital=True)} can't be downloaded automatically.\n"
            + manual_instructions(entry, root)
        )
    pending = _pending_downloads(entry, root)
    reason = offline_reason(offline)
    if reason is not None:
        # Respect offline mode, but use what the Hugging Face cache already holds.
        for name in missing:
            for source in entry.sources_for(name):
                if source.kind == "hf" and _from_hf_cache(source, folder) is not None:
                    break
        missing = missing_downloads(entry, root)
        if missing:
            raise DownloadError(
                f"Can't download {_label(entry)}: {reason}.\n" + manual_instructions(entry, root, missing)
            )
    else:
        if announce:
            logger.info(
                "Downloading %s: %d file(s), %s, into %s",
                entry.id,
                len(pending),
                _sum_sizes(entry, pending, probe=True),
                folder,
            )
        created = not folder.exists()
        ensure_dir(folder)
        try:
            for name in pending:
                _fetch_file(entry, root, folder, name, progress)
        except BaseException:
            if created:
                _remove_if_empty(folder)
            raise
    still_missing = missing_downloads(entry, root)
    if still_missing:
        raise DownloadError(
            f"{_label(entry, capital=True)} is still missing {', '.join(still_missing)} after the download.\n"
            + manual_instructions(entry, root, still_missing)
        )
    if entry.converted:
        _convert(entry, folder, keep_original)
    return folder


def download_model(
    entry: ModelEntry,
    root: str | os.PathLike[str],
    *,
    offline: bool | None = None,
    progress: bool = True,
    keep_original: bool = False,
    clip_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Make sure every required file of ``entry`` is in ``<root>/<id>``; return that folder.

    Files already there are kept (no network then); originals of a converted entry found in the folder
    are converted without downloading. ``offline``: True refuses, False allows, None reads
    ``ICG_OFFLINE`` / ``HF_HUB_OFFLINE`` (the Hugging Face cache is still used offline). After a download
    ``convert_from`` files are converted and deleted unless ``keep_original``. Raises ``DownloadError``
    (offline, unreachable, checksum mismatch, manual-only model, failed conversion) with a message that
    says how to install the model by hand. Before any download, a copy another tool already keeps on
    this machine is used where the model's kind can (a CLIP: ``icg.models.clip_sources``; ``clip_dirs``:
    extra folders to search, e.g. the WebUI's ``--clip-models-path``), offline too.
    """
    return _download(
        entry, Path(root), offline, progress, announce=True, keep_original=keep_original, clip_dirs=clip_dirs
    )


@dataclass(frozen=True)
class DownloadPlan:
    """What a download of some models will fetch: the models not installed yet and the total size."""

    todo: tuple[ModelEntry, ...]
    size: SizeTotal

    @property
    def total(self) -> str:
        """The total size in words (see ``SizeTotal``)."""
        return str(self.size)


def plan_download(
    models: Iterable[str | ModelEntry],
    root: str | os.PathLike[str],
    *,
    offline: bool | None = None,
    registry: Mapping[str, ModelEntry] | None = None,
) -> DownloadPlan:
    """The models among ``models`` that are not installed and the bytes their download takes.

    Sizes the registry does not know are asked from the servers (one quick request each, skipped when
    offline or when the host does not answer); originals already in a folder count for nothing."""
    root_path = Path(root)
    todo = tuple(e for e in resolve_entries(models, registry) if not present(e, root_path))
    size = SizeTotal()
    probe = not is_offline(offline)
    for entry in todo:
        if not entry.manual_only:
            size += _sum_sizes(entry, _pending_downloads(entry, root_path), probe)
    return DownloadPlan(todo, size)


def download_models(
    models: Iterable[str | ModelEntry],
    root: str | os.PathLike[str],
    *,
    offline: bool | None = None,
    progress: bool = True,
    registry: Mapping[str, ModelEntry] | None = None,
    keep_original: bool = False,
    clip_dirs: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Path]:
    """Download (and convert) several models (ids or entries); log the total size first.

    Every model is attempted; if any failed, one ``DownloadError`` lists each failure (one line each)
    after the others have been fetched. Returns ``{id: folder}`` when all succeeded. This is an explicit
    request: the hosts remembered as unreachable are forgotten first and probed again.
    """
    forget_unreachable()
    root_path = Path(root)
    entries = resolve_entries(models, registry)
    for entry in entries:  # copies already on this machine first, so the plan counts only downloads
        if not present(entry, root_path):
            _use_local_copy(entry, model_dir(entry, root_path), clip_dirs)
    if not is_offline(offline):
        plan = plan_download(entries, root_path, offline=offline)
        if plan.todo:
            logger.info(
                "Downloading %d model(s) (%s): %s in total, into %s",
                len(plan.todo),
                ", ".join(e.id for e in plan.todo),
                plan.total,
                root_path,
            )
    done: dict[str, Path] = {}
    errors: list[str] = []
    for entry in entries:
        try:
            done[entry.id] = _download(
                entry,
                root_path,
                offline,
                progress,
                announce=False,
                keep_original=keep_original,
                clip_dirs=clip_dirs,
            )
        except DownloadError as err:
            errors.append(str(err))
    if errors:
        raise DownloadError("\n".join(errors))
    return done
