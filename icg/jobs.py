"""The one job registry of a process: tab batches, API batches and auto-captioning run here, one at a time.

A job is a function ``work(job) -> dict | None`` (its JSON-ready summary). It reports progress with
``job.progress(done, total, ...)`` and its latest results with ``job.add_result(row)``, and checks
``job.should_stop()`` between steps; ``JobRegistry.stop(id)`` asks it to stop (a job still waiting in the
queue is stopped without running). Jobs run one at a time in the order they were submitted, so two
folder batches never compete for the GPU or write the same files at once, and a job that waits shows
what it is queued behind.

``Job.snapshot()`` is what every front end renders (the Batch tab, ``GET /icg/v1/batch``, the WebUI).
Front ends that follow a job wait on its changes (``Job.wait_change``), never on the clock.

Bounded: the registry keeps the newest ``keep`` finished jobs (older ones are forgotten) and each job the
newest ``keep_results`` result rows. ``registry()`` is the process's registry, created on first use.
``Feed`` turns a stream of items handed in from any thread (images saved by the WebUI) into jobs of one
kind. Everything here is thread-safe and free of WebUI, torch and web-framework imports.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from icg.errors import IcgError

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"
FINISHED = frozenset({DONE, FAILED, STOPPED})
KEEP_JOBS = 100
KEEP_RESULTS = 500


class JobNotFound(IcgError, LookupError):
    """No job has this id (never submitted, or forgotten long after it finished)."""


class Job:
    """One submitted job. Its state is guarded by its registry's condition (``_cond``), which is notified
    on every change, so observers wait for changes instead of polling."""

    def __init__(
        self,
        job_id: str,
        kind: str,
        work: Callable[[Job], dict[str, Any] | None],
        *,
        total: int | None = None,
        label: str = "",
        keep_results: int = KEEP_RESULTS,
        registry: JobRegistry | None = None,
    ) -> None:
        self.id = job_id
        self.kind = kind
        self.label = label
        self.work = work
        self.status = QUEUED
        self.done = 0
        self.total = total
        self.failed = 0
        self.current: str | None = None
        self.message = ""
        self.details: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.version = 0  # grows with every change
        self.results: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_results)
        self._stop = threading.Event()
        self._registry = registry
        self._cond = registry._cond if registry is not None else threading.Condition()

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.status})"

    # ------------------------------------------------------------------ called by the job's own work
    def progress(
        self,
        done: int,
        total: int | None = None,
        *,
        failed: int | None = None,
        current: str | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Report ``done`` of ``total`` steps; ``details`` are extra numbers a front end may show (rate,
        ETA, skipped, ...)."""
        with self._cond:
            self.done = int(done)
            if total is not None:
                self.total = int(total)
            if failed is not None:
                self.failed = int(failed)
            if current is not None:
                self.current = current
            if message is not None:
                self.message = message
            if details is not None:
                self.details = dict(details)
            self._changed()

    def add_result(self, row: Mapping[str, Any]) -> None:
        """Keep ``row`` (JSON-ready) among the job's latest results."""
        with self._cond:
            self.results.append(dict(row))
            self._changed()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ read by everyone else
    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (or ``timeout`` seconds passed); True when it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    def wait_change(self, version: int, timeout: float | None = None) -> int:
        """Block until the job changed since ``version`` (or has finished, or ``timeout`` passed); return
        its version now."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != version or self.finished, timeout)
            return self.version

    def snapshot(self, results: bool = False) -> dict[str, Any]:
        """The job as plain data; ``queued_behind`` names the job it waits for (the running one, else the
        first queued ahead of it) and ``ahead`` counts them. ``results=True`` adds the latest results."""
        with self._cond:
            ahead = self._registry._ahead(self) if self._registry is not None and not self.finished else []
            end = self.finished_at or time.time()
            elapsed = (end - self.started_at) if self.started_at else 0.0
            fraction = None
            if self.status == DONE:
                fraction = 1.0
            elif self.total:
                fraction = min(1.0, self.done / self.total)
            elif self.total == 0:
                fraction = 1.0 if self.finished else 0.0
            snap = {
                "id": self.id,
                "kind": self.kind,
                "label": self.label,
                "status": self.status,
                "done": self.done,
                "total": self.total,
                "failed": self.failed,
                "progress": fraction,
                "current": self.current,
                "message": self.message,
                "details": dict(self.details),
                "stop_requested": self._stop.is_set(),
                "ahead": len(ahead),
                "queued_behind": {"id": ahead[0].id, "kind": ahead[0].kind} if ahead else None,
                "submitted_at": self.submitted_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "elapsed": elapsed,
                "summary": self.summary,
                "error": self.error,
                "version": self.version,
            }
            if results:
                snap["results"] = list(self.results)
            return snap

    # ------------------------------------------------------------------ internals (under _cond)
    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()


class JobRegistry:
    """Runs submitted jobs one at a time in a daemon thread; look them up by id."""

    def __init__(
        self, keep: int = KEEP_JOBS, keep_results: int = KEEP_RESULTS, name: str = "icg-jobs"
    ) -> None:
        if keep < 1 or keep_results < 1:
            raise ValueError("keep and keep_results must be at least 1")
        self.keep = keep
        self.keep_results = keep_results
        self.name = name
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cond = threading.Condition(threading.RLock())
        self._worker: threading.Thread | None = None
        self._counter = itertools.count(1)

    def submit(
        self,
        work: Callable[[Job], dict[str, Any] | None],
        *,
        kind: str = "batch",
        total: int | None = None,
        label: str = "",
    ) -> Job:
        """Queue ``work`` and return its ``Job`` at once (status "queued"; ``total`` steps, if known;
        ``label``: what it works on, e.g. the folder)."""
        job_id = f"{kind}-{next(self._counter)}-{secrets.token_hex(4)}"
        job = Job(job_id, kind, work, total=total, label=label, keep_results=self.keep_results, registry=self)
        with self._cond:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._forget_old()
            self._ensure_worker()
            self._cond.notify_all()
        logger.info("queued %s job %s", kind, job.id)
        return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r} (unknown, or finished long ago and forgotten)")
        return job

    def stop(self, job_id: str) -> Job:
        """Ask a job to stop: a queued one never runs, a running one stops at its next check."""
        job = self.get(job_id)
        with self._cond:
            job._stop.set()
            if job.status == QUEUED:
                self._queue.remove(job)
                job.status = STOPPED
                job.finished_at = time.time()
            job._changed()
        return job

    def jobs(self) -> list[Job]:
        """Every known job, oldest first."""
        with self._cond:
            return list(self._jobs.values())

    def active(self) -> list[Job]:
        """Jobs queued or running, oldest first."""
        return [job for job in self.jobs() if not job.finished]

    def snapshots(self) -> list[dict[str, Any]]:
        return [job.snapshot() for job in self.jobs()]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job has finished (or ``timeout`` seconds passed); return it."""
        job = self.get(job_id)
        job.wait(timeout)
        return job

    # ------------------------------------------------------------------ internals
    def _ahead(self, job: Job) -> list[Job]:
        """The running job and the queued ones before ``job`` (under ``_cond``)."""
        if job.status != QUEUED:
            return []
        before = list(itertools.takewhile(lambda other: other is not job, self._queue))
        return ([self._running] if self._running is not None else []) + before

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_forever, name=self.name, daemon=True)
            self._worker.start()

    def _run_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                job = self._queue.popleft()
                job.status = RUNNING
                job.started_at = time.time()
                self._running = job
                self._notify_all_jobs()
            self._run(job)

    def _notify_all_jobs(self) -> None:
        """A job started or ended: every queued job's place changed (under ``_cond``)."""
        for job in self._queue:
            job.version += 1
        if self._running is not None:
            self._running.version += 1
        self._cond.notify_all()

    def _run(self, job: Job) -> None:
        status, summary, error = DONE, None, None
        try:
            summary = job.work(job)
            if job.should_stop():
                status = STOPPED
        except IcgError as err:
            status, error = FAILED, str(err)
            logger.warning("job %s failed: %s", job.id, err)
        except Exception as err:  # a bug: keep the worker alive, and say what happened
            status, error = FAILED, f"{type(err).__name__}: {err}"
            logger.exception("job %s failed", job.id)
        with self._cond:
            job.summary = summary
            job.error = error
            job.status = status
            job.finished_at = time.time()
            job.current = None
            job.version += 1
            self._running = None
            self._notify_all_jobs()
            self._forget_old()
        logger.info("%s job %s %s", job.kind, job.id, status)


_REGISTRY: JobRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def registry() -> JobRegistry:
    """The process's job registry (created on first use): the Batch tab, the API and auto-captioning
    share it, so each sees the others' jobs and none runs beside another."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = JobRegistry()
        return _REGISTRY


def describe(snapshot: Mapping[str, Any]) -> str:
    """``"batch batch-3-1a2b3c4d"``: how a front end names a job (e.g. after "queued behind")."""
    return f"{snapshot['kind']} {snapshot['id']}"


class Feed:
    """Items handed in from any thread (e.g. images the WebUI saved), worked off in registry jobs of one
    ``kind``. At most one such job waits in the queue at a time; when it starts it takes up to ``chunk``
    waiting items (and queues a follow-up job for the rest), so a burst of items is a few jobs, not one
    per item. At most ``maxsize`` items wait: ``submit`` returns False beyond that.

    ``handle(job, items) -> dict`` does the work and reports on ``job`` like any job.
    """

    def __init__(
        self,
        registry: JobRegistry,
        kind: str,
        handle: Callable[[Job, Sequence[Any]], dict[str, Any] | None],
        *,
        maxsize: int = 256,
        chunk: int = 16,
        label: str = "",
    ) -> None:
        if maxsize < 1 or chunk < 1:
            raise ValueError("maxsize and chunk must be at least 1")
        self.registry = registry
        self.kind = kind
        self.handle = handle
        self.maxsize = maxsize
        self.chunk = chunk
        self.label = label
        self._pending: collections.deque[Any] = collections.deque()
        self._waiting: Job | None = None  # the queued job that will take the pending items
        self._jobs: collections.deque[Job] = collections.deque(maxlen=max(2, maxsize))
        self._lock = threading.Lock()

    def submit(self, item: Any) -> bool:
        """Queue ``item``; False (and nothing queued) when ``maxsize`` items already wait."""
        with self._lock:
            if len(self._pending) >= self.maxsize:
                return False
            self._pending.append(item)
            if self._waiting is None or self._waiting.finished:
                self._waiting = self.registry.submit(self._work, kind=self.kind, label=self.label)
                self._jobs.append(self._waiting)
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def jobs(self) -> list[Job]:
        """This feed's recent jobs, oldest first."""
        with self._lock:
            return list(self._jobs)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item submitted so far has been worked off; True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            jobs = [job for job in self.jobs() if not job.finished]
            if not jobs:
                return self.pending() == 0
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not jobs[0].wait(left):
                return False

    def _work(self, job: Job) -> dict[str, Any] | None:
        with self._lock:
            items = [self._pending.popleft() for _ in range(min(self.chunk, len(self._pending)))]
            self._waiting = None
            if self._pending:
                self._waiting = self.registry.submit(self._work, kind=self.kind, label=self.label)
                self._jobs.append(self._waiting)
        job.progress(0, len(items))
        if not items:
            return {}
        return self.handle(job, items)


# ---------------------------------------------------------------------------------- folder batches
def batch_work(
    service: Any, options: Any, lock: Any = None, plan: Any = None
) -> Callable[[Job], dict[str, Any]]:
    """The job function of a folder batch (the Batch tab's and the API's): ``service.run_batch`` under
    ``lock`` (if given; ``plan``: the folder's plan when the caller already made it), with its progress
    and each image's result reported on the job; returns the summary as JSON-ready data."""

    def work(job: Job) -> dict[str, Any]:
        def on_progress(done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
            info = jsonable(info or {})
            current = info.get("current") or None
            job.progress(done, total, failed=info.get("failed"), current=current, details=info)

        def on_result(item: Any) -> None:
            job.add_result(jsonable(item.to_dict() if hasattr(item, "to_dict") else item))

        with lock if lock is not None else contextlib.nullcontext():
            if job.should_stop():
                return {"stopped": True}
            summary = service.run_batch(
                options, on_progress=on_progress, should_stop=job.should_stop, on_result=on_result, plan=plan
            )
        return summary_dict(summary)

    return work


def summary_dict(summary: Any) -> dict[str, Any]:
    """A JSON-ready dict of a ``BatchSummary`` (or of any mapping)."""
    if summary is None:
        return {}
    return jsonable(summary.to_dict() if hasattr(summary, "to_dict") else dict(summary))


def jsonable(value: Any) -> Any:
    """``value`` with mappings, sequences and plain values kept and everything else as text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
