"""Registers the "Image Caption" tab, its settings, its API and auto-captions with the WebUI.

The WebUI runs every file in ``scripts/`` with the extension folder on ``sys.path``; the work is done in
``icg.webui`` (the adapter), so this file only connects callbacks.
"""

from __future__ import annotations

from modules import script_callbacks

from icg import webui

script_callbacks.on_ui_settings(webui.on_ui_settings)
script_callbacks.on_ui_tabs(webui.on_ui_tabs)
script_callbacks.on_after_component(webui.on_after_component)
script_callbacks.on_app_started(webui.on_app_started)
script_callbacks.on_image_saved(webui.on_image_saved)
if hasattr(script_callbacks, "on_script_unloaded"):
    script_callbacks.on_script_unloaded(webui.on_script_unloaded)
