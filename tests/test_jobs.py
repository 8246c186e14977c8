"""The one job registry (icg.jobs): jobs run one at a time in order, stop the same way whether queued or
running, record their errors, say what they are queued behind, stay bounded, and are observed through
their changes. Every wait here is on an event or a job, with a generous timeout; nothing sleeps."""

from __future__ import annotations

import threading

import pytest

from icg import jobs as joblib
from icg.errors import ImageError
from icg.jobs import DONE, FAILED, QUEUED, RUNNING, STOPPED, Feed, JobNotFound, JobRegistry

WAIT = 60


def blocking(gate: threading.Event, started: threading.Event | None = None, result=None):
    def work(job):
        if started is not None:
            started.set()
        assert gate.wait(WAIT)
        return result

    return work


def test_jobs_run_in_order_and_queued_ones_stop_without_running():
    registry = JobRegistry()
    gate = threading.Event()
    order = []

    def first(job):
        assert gate.wait(WAIT)
        order.append("first")
        return {"n": 1}

    def second(job):
        order.append("second")
        return {"n": 2}

    one = registry.submit(first)
    queued = registry.submit(second)
    third = registry.submit(second, total=5)
    assert registry.get(third.id).snapshot()["total"] == 5
    registry.stop(queued.id)
    assert queued.status == STOPPED and queued.snapshot()["stop_requested"]
    gate.set()
    assert registry.wait(third.id, timeout=WAIT).status == DONE
    assert order == ["first", "second"]
    assert one.snapshot()["summary"] == {"n": 1}


def test_a_running_job_stops_at_its_next_check():
    registry = JobRegistry()
    checked, started = threading.Event(), threading.Event()

    def work(job):
        started.set()
        steps = 0
        while not job.should_stop():
            assert checked.wait(WAIT)
            steps += 1
        return {"steps": steps}

    job = registry.submit(work)
    assert started.wait(WAIT)
    registry.stop(job.id)
    checked.set()
    assert job.wait(WAIT)
    assert job.status == STOPPED and job.snapshot()["summary"] == {"steps": 1}  # the step it was on


def test_failures_and_progress_are_recorded_on_the_job():
    registry = JobRegistry()

    def failing(job):
        job.progress(1, 4, current="a.png", details={"skipped": 2})
        raise ImageError("a.png: broken")

    def buggy(job):
        raise ZeroDivisionError("oops")

    snap = registry.wait(registry.submit(failing).id, timeout=WAIT).snapshot()
    assert snap["status"] == FAILED and snap["error"] == "a.png: broken"
    assert snap["done"] == 1 and snap["total"] == 4 and snap["progress"] == 0.25
    assert snap["details"] == {"skipped": 2} and snap["current"] is None  # nothing is current any more
    bug = registry.wait(registry.submit(buggy).id, timeout=WAIT).snapshot()
    assert bug["error"] == "ZeroDivisionError: oops"
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        registry.get("nope")


def test_a_waiting_job_names_the_job_it_is_queued_behind():
    registry = JobRegistry()
    gate, started = threading.Event(), threading.Event()
    running = registry.submit(blocking(gate, started), kind="autocaption")
    assert started.wait(WAIT)
    second = registry.submit(lambda job: {}, kind="batch")
    third = registry.submit(lambda job: {}, kind="batch")
    assert running.snapshot()["queued_behind"] is None
    assert second.snapshot()["queued_behind"] == {"id": running.id, "kind": "autocaption"}
    assert (second.snapshot()["ahead"], third.snapshot()["ahead"]) == (1, 2)
    assert joblib.describe(second.snapshot()["queued_behind"]) == f"autocaption {running.id}"
    assert [job.id for job in registry.active()] == [running.id, second.id, third.id]
    gate.set()
    assert third.wait(WAIT) and third.snapshot()["queued_behind"] is None


def test_history_and_results_are_bounded():
    registry = JobRegistry(keep=2, keep_results=3)

    def work(job):
        for i in range(10):
            job.add_result({"key": f"img{i}.png"})
        return {}

    ids = [registry.submit(work).id for _ in range(4)]
    assert registry.wait(ids[-1], timeout=WAIT).finished
    registry.submit(lambda job: {})  # forgetting happens on submit and when a job ends
    known = {job.id for job in registry.jobs()}
    assert ids[0] not in known and ids[1] not in known and ids[-1] in known
    results = registry.get(ids[-1]).snapshot(results=True)["results"]
    assert [row["key"] for row in results] == ["img7.png", "img8.png", "img9.png"]
    assert "results" not in registry.get(ids[-1]).snapshot()
    with pytest.raises(ValueError):
        JobRegistry(keep=0)


def test_observers_wake_on_each_change():
    registry = JobRegistry()
    step = threading.Event()

    def work(job):
        job.progress(1, 2)
        assert step.wait(WAIT)
        job.progress(2, 2)
        return {}

    job = registry.submit(work)
    version = job.wait_change(-1, WAIT)
    while job.snapshot()["done"] != 1:  # each pass waits for the job's next change
        version = job.wait_change(version, WAIT)
    assert job.status == RUNNING
    step.set()
    assert job.wait(WAIT)
    assert job.wait_change(job.version, WAIT) == job.version  # a finished job does not block


def test_the_process_registry_is_one_and_created_once_under_a_lock(monkeypatch):
    monkeypatch.setattr(joblib, "_REGISTRY", None)
    barrier = threading.Barrier(8)
    made = []

    def get():
        barrier.wait(WAIT)
        made.append(joblib.registry())

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(made) == 8 and all(r is made[0] for r in made)
    assert isinstance(made[0], JobRegistry)


def test_a_feed_coalesces_items_into_few_jobs_and_is_bounded():
    registry = JobRegistry()
    gate, started = threading.Event(), threading.Event()
    registry.submit(blocking(gate, started))  # holds the registry while the items arrive
    assert started.wait(WAIT)
    handled = []

    def handle(job, items):
        for done, item in enumerate(items, 1):
            handled.append(item)
            job.progress(done, len(items))
        return {"items": list(items)}

    feed = Feed(registry, "autocaption", handle, maxsize=5, chunk=3)
    assert all(feed.submit(f"img{i}.png") for i in range(5))
    assert feed.submit("one-too-many.png") is False
    assert feed.pending() == 5
    assert [job.status for job in feed.jobs()] == [QUEUED]  # one waiting job for all of them
    gate.set()
    assert feed.join(WAIT)
    assert handled == [f"img{i}.png" for i in range(5)]
    summaries = [job.snapshot()["summary"] for job in feed.jobs()]
    assert summaries == [{"items": ["img0.png", "img1.png", "img2.png"]}, {"items": ["img3.png", "img4.png"]}]
    assert all(job.kind == "autocaption" for job in feed.jobs())
