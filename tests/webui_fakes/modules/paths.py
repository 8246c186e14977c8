"""Fake ``modules.paths``: re-exports the folders of ``paths_internal`` like the real one."""

from __future__ import annotations

from modules.paths_internal import data_path, models_path, script_path  # noqa: F401
