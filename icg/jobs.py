"""Background jobs for the HTTP API: a FIFO run by one worker thread, each job polled by its id.

A job is a function ``work(job) -> dict`` (its summary). It reports progress with ``job.progress(done,
total, current=...)`` and checks ``job.should_stop()`` between steps; ``JobRegistry.stop(id)`` asks it to
stop (a job still waiting in the queue is stopped without running). Jobs run one at a time, in the order
they were submitted, so two folder batches never compete for the GPU or write the same files at once.

The registry keeps the newest ``keep`` finished jobs for polling; older finished ones are forgotten.
Everything here is thread-safe and free of WebUI, torch and web-framework imports.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icg.errors import IcgError

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"
FINISHED = frozenset({DONE, FAILED, STOPPED})


class JobNotFound(IcgError, LookupError):
    """No job has this id (never submitted, or forgotten long after it finished)."""


@dataclass
class Job:
    """One submitted job; ``snapshot()`` is what pollers see."""

    id: str
    kind: str
    work: Callable[[Job], dict[str, Any] | None]
    status: str = QUEUED
    done: int = 0
    total: int | None = None
    failed: int = 0
    current: str | None = None
    message: str = ""
    summary: dict[str, Any] | None = None
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # ------------------------------------------------------------------ called by the job's own work
    def progress(
        self,
        done: int,
        total: int | None = None,
        *,
        failed: int | None = None,
        current: str | None = None,
        message: str | None = None,
    ) -> None:
        with self._lock:
            self.done = int(done)
            if total is not None:
                self.total = int(total)
            if failed is not None:
                self.failed = int(failed)
            if current is not None:
                self.current = current
            if message is not None:
                self.message = message

    def should_stop(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ read by everyone else
    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = time.time()
            end = self.finished_at or now
            elapsed = (end - self.started_at) if self.started_at else 0.0
            fraction = None
            if self.status == DONE:
                fraction = 1.0
            elif self.total:
                fraction = min(1.0, self.done / self.total)
            elif self.total == 0:
                fraction = 1.0 if self.finished else 0.0
            return {
                "id": self.id,
                "kind": self.kind,
                "status": self.status,
                "done": self.done,
                "total": self.total,
                "failed": self.failed,
                "progress": fraction,
                "current": self.current,
                "message": self.message,
                "stop_requested": self._stop.is_set(),
                "submitted_at": self.submitted_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "elapsed": elapsed,
                "summary": self.summary,
                "error": self.error,
            }


class JobRegistry:
    """Runs submitted jobs one at a time in a daemon thread; look them up by id."""

    def __init__(self, keep: int = 100, name: str = "icg-jobs") -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.name = name
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._counter = itertools.count(1)

    def submit(
        self, work: Callable[[Job], dict[str, Any] | None], *, kind: str = "batch", total: int | None = None
    ) -> Job:
        """Queue ``work`` and return its ``Job`` at once (status "queued"; ``total`` steps, if known)."""
        job = Job(
            id=f"{kind}-{next(self._counter)}-{secrets.token_hex(4)}", kind=kind, work=work, total=total
        )
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._forget_old()
            self._ensure_worker()
            self._wake.notify()
        logger.info("queued %s job %s", kind, job.id)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r} (unknown, or finished long ago and forgotten)")
        return job

    def stop(self, job_id: str) -> Job:
        """Ask a job to stop: a queued one never runs, a running one stops at its next check."""
        job = self.get(job_id)
        job._stop.set()
        with self._lock:
            if job.status == QUEUED:
                self._queue.remove(job)
                job.status = STOPPED
                job.finished_at = time.time()
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def active(self) -> list[Job]:
        """Jobs queued or running, oldest first."""
        return [job for job in self.jobs() if not job.finished]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job has finished (or ``timeout`` seconds passed); return it."""
        job = self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return job

    # ------------------------------------------------------------------ internals
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
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.popleft()
                job.status = RUNNING
                job.started_at = time.time()
            self._run(job)

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
        with self._lock:
            job.summary = summary
            job.error = error
            job.status = status
            job.finished_at = time.time()
            job.current = None
            self._forget_old()
        logger.info("%s job %s %s", job.kind, job.id, status)
