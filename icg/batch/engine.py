"""The folder engine: discover, plan, decode in the background, caption in batches, write, report.

``plan_batch(options)`` decides, per image, what a run would do, without loading a model or writing
anything. The plan's actions:

- ``new``/``overwrite``/``append``/``prepend``: caption it and write its sidecar that way;
- ``manifest``: caption it for the manifest only (sidecars are off, or the policy is ``skip`` and its
  sidecar exists: the manifest is a complete record of the folder, the sidecar is left alone);
- ``skip``: its sidecar exists, the policy is ``skip`` and there is no manifest: nothing to do;
- ``done``: the manifest (``resume=True``) already holds a row for it that did not fail: nothing to do;
- ``conflict``: another image (``a.jpg`` and ``a.png``) owns the same sidecar: reported as a failure
  rather than letting one caption clobber the other.

``run_batch(manager, options)`` carries the plan out. Images are decoded (``icg.imaging.load_image``)
and preprocessed (``ClipEncoder.preprocess_images``) by a small thread pool a few batches ahead of the
model, so decoding overlaps CLIP encoding and caption decoding, which run batched
(``captioner.caption_features``). The models come from the manager inside ``manager.session()`` for each
batch, so other users of the manager can get in between batches. A bad file never stops the run: it is
reported (path and reason) in the summary and as a "failed" manifest row, and retried by the next run.
``should_stop()`` is asked before each batch: a stop lets the current batch finish and be written.

Resume: the key of an image is its path relative to the root, with "/" separators (the manifest's
``path``). Re-running with the same options redoes only what is missing: with ``skip`` the existing
sidecars say what is done; with a manifest its rows do, whatever the policy; ``append``/``prepend``
never add a caption that is already the last (first) part of the sidecar, so a re-run does not double
it. Leftover temp files of our own atomic writes (from a killed run) next to the sidecars about to be
written are removed. With sampling and a seed, each image draws from its own generator seeded with it,
so a resumed run captions the remaining images as one uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icg.discovery import discover_images, normalise_extensions
from icg.errors import ConfigError, IcgError
from icg.imaging import DEFAULT_MAX_PIXELS
from icg.options import BATCH, BATCH_TEMPLATE, DECODING, DEFAULT_MODEL, CaptionOptions
from icg.pipeline import caption_batch, resolve_decoding
from icg.prompt import PromptTemplate
from icg.sinks import (
    ManifestWriter,
    check_policy,
    manifest_format,
    normalise_extension,
    plan_sidecar,
    read_manifest,
    sidecar_path,
    write_sidecar,
)

logger = logging.getLogger(__name__)


PLAN_ACTIONS = ("new", "overwrite", "append", "prepend", "manifest", "skip", "done", "conflict")
CAPTION_ACTIONS = frozenset({"new", "overwrite", "append", "prepend", "manifest"})
SIDECAR_WRITES = frozenset({"new", "overwrite", "append", "prepend"})
#: Summary counters, and the item action each one counts.
COUNT_KEYS = (
    "new",
    "overwritten",
    "appended",
    "prepended",
    "unchanged",
    "manifest_only",
    "skipped",
    "failed",
)
_COUNT_OF_ACTION = {
    "new": "new",
    "overwrite": "overwritten",
    "append": "appended",
    "prepend": "prepended",
    "unchanged": "unchanged",
    "manifest": "manifest_only",
    "skip": "skipped",
    "done": "skipped",
    "conflict": "failed",
    "failed": "failed",
}
#: ``icg.sinks.atomic_write``'s temp files: ``.<target name>.<12 hex digits>.tmp`` beside the target.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")

ProgressCallback = Callable[[int, int, dict], None]


def auto_batch_size(device: Any) -> int:
    """32 on CUDA (the decoder is launch-bound at small batches), 16 on MPS, 8 on the CPU (CLIP is
    compute-bound there: bigger batches only delay the first results)."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return {"cuda": 32, "mps": 16}.get(kind, 8)


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BatchOptions:
    """What to caption, how, and where the captions go. Validated on construction (``ConfigError``).

    ``extensions=None``: every image extension this Pillow can read. ``batch_size=None``: automatic
    (``auto_batch_size``). ``output_dir``: sidecars go there at the image's path relative to ``root``
    (it may sit inside ``root``; its contents are never captioned); ``None`` or ``root`` itself: beside
    the images. ``separator``: what joins an old sidecar and the caption for append/prepend (default: a
    new line). ``manifest``: a ``.jsonl`` or ``.csv`` file, one row per image. ``resume``: keep an
    existing manifest and skip the images it lists as done; ``False`` replaces it. ``template``: what goes
    into the sidecar (``icg.prompt.PromptTemplate``; the default is the caption alone). ``decoding``:
    ``DecodingConfig`` fields overriding the model's defaults. ``dry_run``: plan and caption the first
    ``preview`` images, write nothing. ``max_pixels``: larger images are refused as possible
    decompression bombs (``None``: Pillow's own limit only). ``workers``: decoding threads (default:
    the CPU count, at most 8); ``prefetch``: batches decoded ahead of the one the model is running.
    """

    root: str | os.PathLike
    model: str = DEFAULT_MODEL
    recursive: bool = BATCH["recursive"].default
    extensions: tuple[str, ...] | None = None
    batch_size: int | None = BATCH["batch_size"].default
    sidecar_extension: str = BATCH["sidecar_extension"].default
    output_dir: str | os.PathLike | None = None
    policy: str = BATCH["policy"].default
    separator: str | None = None
    write_sidecars: bool = BATCH["write_sidecars"].default
    manifest: str | os.PathLike | None = None
    resume: bool = BATCH["resume"].default
    template: PromptTemplate = field(default_factory=lambda: PromptTemplate(BATCH_TEMPLATE))
    decoding: Mapping[str, Any] = field(default_factory=dict)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    dry_run: bool = False
    preview: int = BATCH["preview"].default
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int | None = None
    prefetch: int = 2

    def __post_init__(self) -> None:
        for option in BATCH:
            object.__setattr__(self, option.name, option.check(getattr(self, option.name), "batch"))
        if not str(self.root):
            raise ConfigError("no image folder given")
        if not self.model:
            raise ConfigError("no model given")
        check_policy(self.policy)
        object.__setattr__(self, "sidecar_extension", normalise_extension(self.sidecar_extension))
        if self.extensions is not None:
            exts = tuple(sorted(normalise_extensions(self.extensions)))
            if not exts:
                raise ConfigError("the list of image extensions is empty")
            object.__setattr__(self, "extensions", exts)
        if self.manifest is not None:
            if not str(self.manifest):
                raise ConfigError("empty manifest path")
            manifest_format(self.manifest)
        if not self.write_sidecars and self.manifest is None:
            raise ConfigError("nothing to write: caption files are off and no manifest was given")
        if not isinstance(self.caption, CaptionOptions):
            kind = type(self.caption).__name__
            raise ConfigError(f"caption must be icg.options.CaptionOptions, not {kind}")
        if not isinstance(self.template, PromptTemplate):
            raise ConfigError(
                f"template must be an icg.prompt.PromptTemplate, not {type(self.template).__name__}"
            )
        for name, value, least in (
            ("workers", self.workers, 1),
            ("max_pixels", self.max_pixels, 1),
        ):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ConfigError(
                    f"{name} must be a whole number of at least {least} (or automatic), not {value!r}"
                )
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be 0 or more, not {self.prefetch}")
        decoding = DECODING.check(self.decoding, "batch")
        object.__setattr__(self, "decoding", decoding)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (paths as strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("root", "output_dir", "manifest"):
            out[key] = None if out[key] is None else os.fspath(out[key])
        out["extensions"] = None if self.extensions is None else list(self.extensions)
        out["template"] = dataclasses.asdict(self.template)
        out["decoding"] = dict(self.decoding)
        out["caption"] = dataclasses.asdict(self.caption)
        return out


@dataclass(frozen=True)
class PlanItem:
    """One discovered image: its path, its key (relative POSIX path), its sidecar, and the plan for it."""

    path: Path
    key: str
    sidecar: Path | None
    action: str
    reason: str | None = None  # why, for a conflict

    @property
    def needs_caption(self) -> bool:
        return self.action in CAPTION_ACTIONS


@dataclass(frozen=True)
class BatchPlan:
    root: Path
    items: tuple[PlanItem, ...]
    output_dir: Path | None
    done_keys: frozenset[str] = frozenset()  # the manifest's finished images the plan was made with

    @property
    def todo(self) -> list[PlanItem]:
        """The images a run would caption, in order."""
        return [item for item in self.items if item.needs_caption]

    @property
    def conflicts(self) -> list[PlanItem]:
        return [item for item in self.items if item.action == "conflict"]

    def counts(self) -> dict[str, int]:
        """Images per plan action (every action of ``PLAN_ACTIONS``, zeros included)."""
        counts = dict.fromkeys(PLAN_ACTIONS, 0)
        for item in self.items:
            counts[item.action] += 1
        return counts


@dataclass(frozen=True)
class Failure:
    path: str  # as discovered (root / key)
    key: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ItemResult:
    """What happened to one captioned (or failed) image; handed to ``on_result``."""

    key: str
    path: str
    sidecar: str | None
    action: str  # new, overwrite, append, prepend, unchanged, manifest, skip (appeared meanwhile), failed
    caption: str = ""
    text: str = ""  # what went (or would go) into the sidecar: the composed prompt
    keywords: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["keywords"] = list(self.keywords)
        return out


@dataclass(frozen=True)
class PreviewItem:
    """A dry run's caption of one image, and what would be done with it."""

    key: str
    sidecar: str | None
    action: str
    caption: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchSummary:
    """The outcome of ``run_batch`` (or of a dry run: ``plan_counts`` and ``preview``)."""

    root: str
    model: str
    total: int  # images found
    planned: int  # images the run set out to caption
    plan_counts: dict[str, int]
    processed: int = 0  # images captioned or failed during the run
    captioned: int = 0  # images captioned successfully during the run
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    failures: list[Failure] = field(default_factory=list)
    stopped: bool = False
    dry_run: bool = False
    preview: list[PreviewItem] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("total", "load", "run", "wait_decode", "model", "write"), 0.0)
    )
    batch_size: int | None = None
    device: str | None = None
    manifest: str | None = None
    stale_temps_removed: int = 0

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def images_per_second(self) -> float:
        """Images processed per second of the captioning loop (model loading excluded)."""
        run = self.seconds["run"]
        return self.processed / run if run > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """130 when stopped by the caller, 1 when some image failed, else 0."""
        if self.stopped:
            return 130
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["failures"] = [f.to_dict() for f in self.failures]
        out["preview"] = [p.to_dict() for p in self.preview]
        out.update(
            failed=self.failed,
            images_per_second=self.images_per_second,
            exit_code=self.exit_code,
        )
        return out


# ------------------------------------------------------------------------------------------- planning


def plan_batch(options: BatchOptions) -> BatchPlan:
    """What ``run_batch(options)`` would do with every image; reads the folder (and manifest) only."""
    return _plan(options, _manifest_done(options))


def _manifest_done(options: BatchOptions) -> frozenset[str]:
    if options.manifest is None or not options.resume or not Path(options.manifest).exists():
        return frozenset()
    return frozenset(row["path"] for row in read_manifest(options.manifest) if row.get("status") != "failed")


def _output_dir(options: BatchOptions) -> Path | None:
    if options.output_dir is None or not str(options.output_dir):
        return None
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} exists and is not a folder")
    if os.path.realpath(out) == os.path.realpath(options.root):
        return None  # the same folder: sidecars beside the images
    return out


def _identity(path: str | os.PathLike) -> str:
    ident = os.path.normcase(os.path.abspath(path))
    return ident.casefold() if sys.platform == "darwin" else ident  # macOS folders ignore case by default


def _plan(options: BatchOptions, done: frozenset[str]) -> BatchPlan:
    root = Path(options.root)
    out = _output_dir(options)
    paths = discover_images(
        root, recursive=options.recursive, extensions=options.extensions, exclude_dirs=[out] if out else []
    )
    manifest_ident = None if options.manifest is None else _identity(options.manifest)
    owners: dict[str, str] = {}
    items = []
    for path in paths:
        key = path.relative_to(root).as_posix()
        sidecar = None
        reason = None
        if options.write_sidecars:
            sidecar = sidecar_path(path, root, options.sidecar_extension, out)
            ident = _identity(sidecar)
            if ident == manifest_ident:
                raise ConfigError(f"the manifest {options.manifest} would also be the caption file of {path}")
            owner = owners.setdefault(ident, key)
            if owner != key:
                reason = f"its caption file {sidecar} is also the caption file of {owner}; rename one of them"
        if reason is not None:
            action = "conflict"
        elif key in done:
            action = "done"
        elif sidecar is None:
            action = "manifest"
        else:
            action = plan_sidecar(sidecar, options.policy)
            if action == "skip" and options.manifest is not None:
                action = "manifest"
        items.append(PlanItem(path, key, sidecar, action, reason))
    return BatchPlan(root, tuple(items), out, done)


# ------------------------------------------------------------------------------------------- running


def run_batch(
    manager,
    options: BatchOptions,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    plan: BatchPlan | None = None,
) -> BatchSummary:
    """Caption the folder ``options.root`` with ``manager``'s models; see the module docstring.

    ``plan``: ``plan_batch(options)`` made earlier (the API makes it to answer with the total), so the
    folder is walked once; images added to the folder since then wait for the next run.

    ``on_progress(done, total, info)`` is called once before the first batch and after each batch
    (``done`` of ``total`` images to caption; ``info`` holds the counts, elapsed seconds, images/s, the
    ETA and the last image's key). ``on_result(item)`` gets each captioned or failed image. Errors in the
    options, the folder or the models raise ``IcgError``; a bad image never does.
    """
    start = time.perf_counter()
    if options.dry_run:
        return _dry_run(manager, options, plan or plan_batch(options), start)
    done = _manifest_done(options)
    if plan is None or plan.done_keys != done:
        plan = _plan(options, done)  # before anything is created: a wrong folder leaves no manifest behind
    with contextlib.ExitStack() as stack:
        manifest = None
        if options.manifest is not None:
            manifest = stack.enter_context(ManifestWriter(options.manifest, resume=options.resume))
            if manifest.done_paths() != done:  # changed since it was read
                plan = _plan(options, manifest.done_paths())
        run = _Run(manager, options, plan, manifest, start, on_progress, should_stop, on_result)
        run.run(stack)
        return run.summary


class _Run:
    """One run of the engine (state shared by the steps of ``run_batch``)."""

    def __init__(self, manager, options, plan, manifest, start, on_progress, should_stop, on_result) -> None:
        self.manager = manager
        self.options = options
        self.plan = plan
        self.manifest: ManifestWriter | None = manifest
        self.start = start
        self.on_progress = on_progress
        self.should_stop = should_stop or (lambda: False)
        self.on_result = on_result
        self.todo = plan.todo
        self.summary = _new_summary(options, plan)
        self.summary.planned = len(self.todo)
        self.last_key = ""

    def run(self, stack: contextlib.ExitStack) -> None:
        summary, options = self.summary, self.options
        for item in self.plan.conflicts:
            self._fail(item, item.reason or "conflict")
        summary.stale_temps_removed = _remove_stale_temps(self.todo)
        if not self.todo:
            summary.seconds["total"] = time.perf_counter() - self.start
            self._progress()
            return
        loaded = time.perf_counter()
        with self.manager.session():
            captioner = self.manager.captioner(options.model)
            clip = self.manager.clip(captioner.clip_spec)
            preprocess = clip.preprocess_images
            summary.device = str(self.manager.device)
        decoding = resolve_decoding(captioner, options.decoding)
        batch_size = options.batch_size or auto_batch_size(self.manager.device)
        summary.batch_size = batch_size
        summary.seconds["load"] = time.perf_counter() - loaded
        logger.info(
            "captioning %d of %d images in %s with %s (batch %d on %s)",
            len(self.todo),
            summary.total,
            options.root,
            options.model,
            batch_size,
            summary.device,
        )
        batches = [self.todo[i : i + batch_size] for i in range(0, len(self.todo), batch_size)]
        prefetcher = stack.enter_context(
            _Prefetcher(batches, _Preparer(preprocess, options.max_pixels), options.workers, options.prefetch)
        )
        run_start = time.perf_counter()
        self._progress(run_start)
        while True:
            if self.should_stop():
                summary.stopped = True
                logger.info("stopped after %d of %d images", summary.processed, len(self.todo))
                break
            got = prefetcher.next()
            if got is None:
                break
            batch, prepared, waited = got
            summary.seconds["wait_decode"] += waited
            self._run_batch(batch, prepared, decoding)
            summary.seconds["run"] = time.perf_counter() - run_start
            self._progress(run_start)
        summary.seconds["total"] = time.perf_counter() - self.start

    def _run_batch(self, batch: list[PlanItem], prepared: list[tuple[Any, str | None]], decoding) -> None:
        import torch

        good = [(item, pixels) for item, (pixels, _) in zip(batch, prepared) if pixels is not None]
        results = []
        if good:
            started = time.perf_counter()
            pixels = torch.stack([p for _, p in good])
            results = caption_batch(
                self.manager, self.options.model, pixels, decoding=decoding, options=self.options.caption
            )
            self.summary.seconds["model"] += time.perf_counter() - started
        by_key = {item.key: result for (item, _), result in zip(good, results)}
        started = time.perf_counter()
        for item, (_, error) in zip(batch, prepared):
            self.last_key = item.key
            self.summary.processed += 1
            if error is not None:
                self._fail(item, error)
            else:
                self._write(item, by_key[item.key])
        self.summary.seconds["write"] += time.perf_counter() - started

    def _write(self, item: PlanItem, result) -> None:
        options = self.options
        keywords = tuple(getattr(k, "text", str(k)) for k in result.keywords)
        text = options.template.compose(result.caption, keywords)
        action = item.action
        if item.sidecar is not None and action in SIDECAR_WRITES:
            try:
                action = _final_action(item, text, options.separator)
                if action != "unchanged":
                    action = write_sidecar(item.sidecar, text, options.policy, options.separator)
            except IcgError as exc:
                self._fail(item, str(exc))
                return
        if self.manifest is not None:
            settings = {
                "prompt": text,
                "sidecar": None if item.sidecar is None else os.fspath(item.sidecar),
                "action": action,
                "decoding": result.decoding,
            }
            self.manifest.write(
                item.key,
                caption=result.caption,
                keywords=keywords,
                model=result.model,
                settings=settings,
                seed=result.seed,
            )
        self.summary.counts[_COUNT_OF_ACTION[action]] += 1
        self.summary.captioned += 1
        self._report(
            ItemResult(
                item.key,
                os.fspath(item.path),
                None if item.sidecar is None else os.fspath(item.sidecar),
                action,
                result.caption,
                text,
                keywords,
            )
        )

    def _fail(self, item: PlanItem, message: str) -> None:
        reason = _strip_path(message, item.path)
        logger.info("failed: %s: %s", item.path, reason)
        self.summary.failures.append(Failure(os.fspath(item.path), item.key, reason))
        self.summary.counts["failed"] += 1
        if self.manifest is not None:
            self.manifest.write(item.key, model=self.options.model, error=reason)
        sidecar = None if item.sidecar is None else os.fspath(item.sidecar)
        self._report(ItemResult(item.key, os.fspath(item.path), sidecar, "failed", error=reason))

    def _report(self, result: ItemResult) -> None:
        if self.on_result is not None:
            self.on_result(result)

    def _progress(self, run_start: float | None = None) -> None:
        if self.on_progress is None:
            return
        summary = self.summary
        elapsed = 0.0 if run_start is None else time.perf_counter() - run_start
        rate = summary.processed / elapsed if elapsed > 0 else 0.0
        left = len(self.todo) - summary.processed
        info = {
            "found": summary.total,
            "counts": dict(summary.counts),
            "failed": summary.counts["failed"],
            "skipped": summary.counts["skipped"],
            "elapsed": elapsed,
            "images_per_second": rate,
            "eta": left / rate if rate > 0 else None,
            "current": self.last_key,
            "stopped": summary.stopped,
        }
        self.on_progress(summary.processed, len(self.todo), info)


def _new_summary(options: BatchOptions, plan: BatchPlan) -> BatchSummary:
    plan_counts = plan.counts()
    summary = BatchSummary(
        root=os.fspath(options.root),
        model=options.model,
        total=len(plan.items),
        planned=len(plan.todo),
        plan_counts=plan_counts,
        dry_run=options.dry_run,
        manifest=None if options.manifest is None else os.fspath(options.manifest),
    )
    summary.counts["skipped"] = plan_counts["skip"] + plan_counts["done"]
    return summary


def _strip_path(message: str, path: Path) -> str:
    """``"<path>: reason"`` (how ``ImageError`` names the file) -> ``"reason"``."""
    prefix = f"{os.fspath(path)}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _final_action(item: PlanItem, text: str, separator: str | None) -> str:
    """The planned action, or "unchanged" where append/prepend would repeat the caption already there."""
    repeat = item.action in ("append", "prepend") and item.sidecar is not None
    return (
        "unchanged" if repeat and _already_there(item.sidecar, text, item.action, separator) else item.action
    )


def _already_there(sidecar: Path, text: str, action: str, separator: str | None) -> bool:
    """Whether appending (prepending) ``text`` would repeat the sidecar's last (first) part."""
    try:
        data = sidecar.read_bytes()
        old = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False  # write_sidecar reports the problem
    old = old.replace("\r\n", "\n").strip("\n")
    text = " ".join(text.split())
    if not text:
        return True  # an empty caption adds nothing
    sep = "\n" if separator is None else separator.replace("\r\n", "\n")
    if old == text:
        return True
    return old.endswith(sep + text) if action == "append" else old.startswith(text + sep)


def _remove_stale_temps(items: Iterable[PlanItem]) -> int:
    """Delete the temp files a killed run left next to the sidecars about to be written."""
    wanted: dict[Path, set[str]] = {}
    for item in items:
        if item.sidecar is not None and item.action in SIDECAR_WRITES:
            wanted.setdefault(item.sidecar.parent, set()).add(item.sidecar.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            with os.scandir(folder) as entries:
                stale = [e.path for e in entries if (m := _TEMP_NAME.match(e.name)) and m["target"] in names]
        except OSError:
            continue  # a folder that does not exist yet holds no leftovers
        for path in stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
                logger.info("removed a leftover temp file %s", path)
    return removed


class _Preparer:
    """Worker-thread job: one image path -> (preprocessed pixels, None) or (None, reason)."""

    def __init__(self, preprocess: Callable[[list], Any], max_pixels: int | None) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> tuple[Any, str | None]:
        from icg.imaging import load_image

        try:
            image = load_image(path, max_pixels=self.max_pixels)
            return self.preprocess([image])[0], None
        except IcgError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever one file does, the run goes on
            return None, f"{path}: cannot prepare image ({type(exc).__name__}: {exc})"


class _Prefetcher:
    """Decodes and preprocesses the images of upcoming batches in a thread pool, ``depth`` batches ahead
    of the one being returned; at most ``depth + 1`` batches of pixels are held at once."""

    def __init__(
        self, batches: list[list[PlanItem]], prepare: _Preparer, workers: int | None, depth: int
    ) -> None:
        workers = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="icg-decode")
        self._prepare = prepare
        self._batches = iter(batches)
        self._queue: deque[tuple[list[PlanItem], list[Future]]] = deque()
        for _ in range(depth + 1):
            self._submit_next()

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit_next(self) -> None:
        batch = next(self._batches, None)
        if batch is not None:
            self._queue.append((batch, [self._pool.submit(self._prepare, item.path) for item in batch]))

    def next(self) -> tuple[list[PlanItem], list[tuple[Any, str | None]], float] | None:
        """The next batch, its prepared images in order, and the seconds spent waiting for them."""
        if not self._queue:
            return None
        batch, futures = self._queue.popleft()
        self._submit_next()
        started = time.perf_counter()
        prepared = [future.result() for future in futures]
        return batch, prepared, time.perf_counter() - started


# ------------------------------------------------------------------------------------------- dry run


def _dry_run(manager, options: BatchOptions, plan: BatchPlan, start: float) -> BatchSummary:
    """The plan, and the captions of the first ``options.preview`` images to caption; writes nothing."""
    summary = _new_summary(options, plan)
    for item in plan.conflicts:
        summary.failures.append(Failure(os.fspath(item.path), item.key, item.reason or "conflict"))
        summary.counts["failed"] += 1
    todo = plan.todo
    if options.preview and todo:
        loaded = time.perf_counter()
        with manager.session():
            captioner = manager.captioner(options.model)
            clip = manager.clip(captioner.clip_spec)
            summary.device = str(manager.device)
            summary.seconds["load"] = time.perf_counter() - loaded
            prepare = _Preparer(clip.preprocess_images, options.max_pixels)
            good: list[tuple[PlanItem, Any]] = []
            for item in todo[: options.preview * 4]:  # a few bad files do not empty the preview
                pixels, error = prepare(item.path)
                if error is not None:
                    summary.failures.append(
                        Failure(os.fspath(item.path), item.key, _strip_path(error, item.path))
                    )
                    summary.counts["failed"] += 1
                else:
                    good.append((item, pixels))
                if len(good) == options.preview:
                    break
            if good:
                import torch

                run_start = time.perf_counter()
                pixels = torch.stack([p for _, p in good])
                results = caption_batch(
                    manager, options.model, pixels, decoding=options.decoding, options=options.caption
                )
                summary.seconds["model"] = summary.seconds["run"] = time.perf_counter() - run_start
                for (item, _), result in zip(good, results):
                    keywords = tuple(getattr(k, "text", str(k)) for k in result.keywords)
                    text = options.template.compose(result.caption, keywords)
                    action = _final_action(item, text, options.separator)
                    sidecar = None if item.sidecar is None else os.fspath(item.sidecar)
                    summary.preview.append(PreviewItem(item.key, sidecar, action, result.caption, text))
    summary.seconds["total"] = time.perf_counter() - start
    return summary
