"""Fake ``modules.shared_total_tqdm.TotalTQDM`` (1.10): counts instead of drawing a console bar."""

from __future__ import annotations


class TotalTQDM:
    def __init__(self):
        self._tqdm = None
        self.updates = 0
        self.total = None
        self.cleared = 0

    def reset(self):
        self._tqdm = object()

    def update(self):
        if self._tqdm is None:
            self.reset()
        self.updates += 1

    def updateTotal(self, new_total):  # noqa: N802 - the WebUI's name
        if self._tqdm is None:
            self.reset()
        self.total = new_total

    def clear(self):
        self._tqdm = None
        self.cleared += 1
