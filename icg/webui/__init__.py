"""The WebUI adapter: what ICG adds to the Stable Diffusion WebUI (AUTOMATIC1111 1.10.x; Forge).

``scripts/icg_tab.py`` and ``scripts/icg_img2img.py`` register the callbacks named here; the work is in
the modules of this package, and only ``icg.webui.host`` imports the WebUI's ``modules``:

* ``host``: flags, settings values, the queue lock (re-entrant), memory etiquette, JavaScript bridges;
* ``settings``: the "Image Caption" settings section (``on_ui_settings``, keys ``icg_*``);
* ``service``: the WebUI's ``CaptionService`` (each model job under the queue lock, as a ``shared.state``
  job) and the one service and model manager of the process;
* ``tab``: the "Image Caption" tab (``on_ui_tabs``) with Send-to and Append buttons;
* ``models_panel``: installed or missing models, Download, Unload;
* ``img2img``: a caption button beside img2img's interrogate buttons;
* ``api_mount``: the HTTP API ``/icg/v1`` (``on_app_started``; needs ``--api``);
* ``autocaption``: a caption file beside every generated image when the setting is on;
* ``launcher``: ``icg_import.py`` (``icg import`` from the WebUI's folder) and the WebUI's wording of
  library messages (that command, URLs on lines of their own).

Importing this package imports neither the WebUI nor gradio: everything host-specific happens when a
callback runs, so the library and its tests run without a WebUI.
"""

from __future__ import annotations

from icg.webui.api_mount import on_app_started
from icg.webui.autocaption import on_image_saved
from icg.webui.img2img import img2img_script_class
from icg.webui.service import on_script_unloaded
from icg.webui.settings import on_ui_settings
from icg.webui.tab import on_after_component, on_ui_tabs

__all__ = [
    "img2img_script_class",
    "on_after_component",
    "on_app_started",
    "on_image_saved",
    "on_script_unloaded",
    "on_ui_settings",
    "on_ui_tabs",
]
