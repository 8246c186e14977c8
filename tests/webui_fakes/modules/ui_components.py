"""Fake ``modules.ui_components`` (1.10): ``ToolButton``, the small emoji button of the prompt tool rows.

The real one is a ``gr.Button`` subclass. Here it is a function with the same call signature returning a
``gr.Button`` with the same "tool" class: gradio 4+ writes a ``.pyi`` stub beside every module that
defines a component subclass, and the fakes must not write into the source tree.
"""

from __future__ import annotations

import gradio as gr


def ToolButton(value="", *args, elem_classes=None, **kwargs):  # noqa: N802 - the WebUI's class name
    """Small button with a single emoji as text, fits inside gradio forms."""
    elem_classes = elem_classes or []
    return gr.Button(value, *args, elem_classes=["tool", *elem_classes], **kwargs)
