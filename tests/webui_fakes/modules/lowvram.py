"""Fake ``modules.lowvram``: ``send_everything_to_cpu`` (counted) and ``module_in_gpu``."""

from __future__ import annotations

module_in_gpu = None
calls = 0


def send_everything_to_cpu():
    global module_in_gpu, calls
    calls += 1
    module_in_gpu = None


def reset() -> None:
    global module_in_gpu, calls
    module_in_gpu = None
    calls = 0
