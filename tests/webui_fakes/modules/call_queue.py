"""Fake ``modules.call_queue``: the WebUI's ``queue_lock`` (a plain, non-reentrant ``threading.Lock``)."""

from __future__ import annotations

import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def reset() -> None:
    global queue_lock
    queue_lock = threading.Lock()
