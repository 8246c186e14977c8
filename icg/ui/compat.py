"""The few places where gradio 3.41 (AUTOMATIC1111), 4.40 (Forge) and current gradio differ.

Everything else in ``icg.ui`` uses only the API the three share: ``gr.Blocks``/``Tab``/``Row``/``Column``/
``Accordion``, the basic components with ``elem_id``, ``.click``/``.change`` with ``inputs``/``outputs``/
``queue``, generator handlers (progress streaming; needs the queue, which every host enables),
``gr.update`` and ``gr.Error``. Each difference is decided by looking at the installed signatures, never at
version numbers, so a release in between behaves like the side whose API it has.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)


def parameters(func: Any) -> frozenset[str]:
    """The parameter names of ``func`` (empty where they can't be read)."""
    try:
        return frozenset(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # pragma: no cover - C callables
        return frozenset()


def copy_button_kwargs() -> dict[str, Any]:
    """Keyword arguments that give a ``gr.Textbox`` a copy-to-clipboard button.

    gradio 3.41 and 4.x: ``show_copy_button=True``; gradio 5+: ``buttons=["copy"]``. Empty where neither
    exists (the text stays selectable, and the prompt box is plain text the user can copy by hand).
    """
    import gradio as gr

    params = parameters(gr.Textbox.__init__)
    if "show_copy_button" in params:
        return {"show_copy_button": True}
    if "buttons" in params:
        return {"buttons": ["copy"]}
    return {}


def enable_queue(demo: Any, concurrency: int = 4) -> Any:
    """Turn on the queue of ``demo`` (generator handlers need it) with room for ``concurrency`` jobs.

    gradio 3.x: ``queue(concurrency_count=N)`` (one worker pool for every event); gradio 4+:
    ``queue(default_concurrency_limit=N)`` (a limit per event).
    """
    params = parameters(demo.queue)
    # gradio 4 still names concurrency_count (to raise a DeprecationWarning): test the new name first.
    if "default_concurrency_limit" in params:
        return demo.queue(default_concurrency_limit=concurrency)
    if "concurrency_count" in params:
        return demo.queue(concurrency_count=concurrency)
    return demo.queue()


def blocks_kwargs(title: str) -> dict[str, Any]:
    """Keyword arguments for the standalone app's ``gr.Blocks``: a title and no telemetry."""
    import gradio as gr

    kwargs: dict[str, Any] = {"title": title}
    if "analytics_enabled" in parameters(gr.Blocks.__init__):
        kwargs["analytics_enabled"] = False
    return kwargs


def launch_kwargs(demo: Any, **wanted: Any) -> dict[str, Any]:
    """``wanted`` without the arguments this gradio's ``launch`` does not take (logged at debug level)."""
    params = parameters(demo.launch)
    dropped = sorted(set(wanted) - params)
    if dropped:
        logger.debug("gradio launch() takes no %s here; left out", ", ".join(dropped))
    return {name: value for name, value in wanted.items() if name in params}
