"""The Gradio user interface shared by the standalone app (``python -m icg app``) and the WebUI tab.

- ``CaptionService``: what the panels call (models, captions, keywords, folder batches); subclass or wrap
  it to add a host's job handling.
- ``UiDefaults``: the panels' initial values (the WebUI fills them from its settings).
- ``build_panels(service, defaults)``: the Caption and Batch tabs inside the caller's ``gr.Blocks``;
  returns ``IcgPanels`` (the components, for Send-to buttons and other wiring).
- ``build_app(service, defaults)``: a standalone ``gr.Blocks`` with both tabs and the queue on.

Importing this package does not import gradio; building the panels does.
"""

from __future__ import annotations

from icg.ui.handlers import BatchController, CaptionController
from icg.ui.panels import (
    BatchPanel,
    CaptionPanel,
    DecodingControls,
    IcgPanels,
    build_app,
    build_batch_panel,
    build_caption_panel,
    build_panels,
)
from icg.ui.service import CaptionService, UiDefaults

__all__ = [
    "BatchController",
    "BatchPanel",
    "CaptionController",
    "CaptionPanel",
    "CaptionService",
    "DecodingControls",
    "IcgPanels",
    "UiDefaults",
    "build_app",
    "build_batch_panel",
    "build_caption_panel",
    "build_panels",
]
