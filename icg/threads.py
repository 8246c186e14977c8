"""Torch's CPU threads while ICG captions inside a process that also serves requests (the WebUI).

Captioning on the CPU keeps every intra-op thread busy; the WebUI's server threads (Gradio, the API,
progress polling) then wait for a core, and the page stalls. Inside a WebUI job ICG therefore runs with
``caption_threads(setting, available)`` threads: the ``icg_threads`` setting (``icg.options.RUNTIME``)
when it is above 0, else all but one of the threads the host runs torch with once it runs at least
``KEEP_ONE_FROM`` of them, so one core stays free. Below that every thread captions: on a 2-core laptop
the cap would halve captioning speed, while the server thread it frees answered a probe in 3.6 instead
of 4.3 ms (``icg bench --suite threads``), which nobody notices.

``torch.set_num_threads`` is process-wide in name, but with the OpenMP backend it sets the calling
thread's team size (and the default of threads that start torch work later). ``limited_threads`` sets it
in the job's thread around the job and restores the host's value in ``finally``. WebUI jobs hold the
WebUI's queue lock, so no image generation runs beside them that the lower count could slow; a thread
that first touches torch during the job starts with the lower count and keeps it (torch's own rule).

This module imports torch only inside its functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: From this many threads up, automatic mode leaves one for the WebUI's server (it costs at most 1/4).
KEEP_ONE_FROM = 4


def caption_threads(setting: int | None, available: int) -> int:
    """Threads for captioning: ``setting`` when above 0 (at most ``available``), else all but one of
    the ``available`` ones when there are at least ``KEEP_ONE_FROM``, else all of them; at least 1."""
    available = max(1, int(available))
    if setting and setting > 0:
        return min(int(setting), available)
    return available - 1 if available >= KEEP_ONE_FROM else available


@contextlib.contextmanager
def limited_threads(count: int) -> Iterator[int]:
    """Run the block with at most ``count`` intra-op threads (never more than torch has now); the
    previous count is restored afterwards. Yields the count in effect."""
    import torch

    before = torch.get_num_threads()
    if count >= before:
        yield before
        return
    torch.set_num_threads(max(1, count))
    log.debug("captioning with %d of %d torch threads", count, before)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
