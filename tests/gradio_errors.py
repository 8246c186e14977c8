"""What a gradio event shows for an expected user error, on every gradio the project supports."""

from __future__ import annotations

from typing import Any
from unittest import mock


def shown_error(func: Any, *args: Any, **kwargs: Any) -> str:
    """Call an event function that must refuse its input and return the message the page shows.

    gradio 5+: a raised ``gr.Error`` (no traceback printed by gradio). gradio 3.41 and 4.40 print a
    traceback for any raised exception, so there the event shows a ``gr.Warning`` and returns "no change"
    for each of its outputs; anything else fails the test."""
    import gradio as gr

    shown: list[str] = []
    modern = int(str(gr.__version__).split(".")[0]) >= 5
    with mock.patch.object(gr, "Warning", shown.append):
        try:
            result = func(*args, **kwargs)
        except gr.Error as err:
            assert modern, f"gradio {gr.__version__} prints a traceback for a raised error: {err}"
            assert "\n" not in str(err) and not str(err).startswith("'"), repr(str(err))
            return str(err)
    assert not modern, f"gradio {gr.__version__}: the user error was not raised (result {result!r})"
    assert len(shown) == 1, shown
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(out == gr.update() for out in outputs), outputs
    return shown[0]
