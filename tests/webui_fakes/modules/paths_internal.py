"""Fake ``modules.paths_internal``: the WebUI's folders (a temp folder chosen by the tests)."""

from __future__ import annotations

import os
import tempfile

script_path = os.environ.get("ICG_FAKE_WEBUI_ROOT") or os.path.join(tempfile.gettempdir(), "icg-fake-webui")
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
