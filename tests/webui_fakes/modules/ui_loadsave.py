"""Fake ``modules.ui_loadsave`` (1.10): how the WebUI stores every field's value in ``ui-config.json`` on
the first start and puts it back on each later start (``add_block``/``add_component``), including the
``do_not_save_to_config`` attribute that keeps a component out. Only the ``value`` fields."""

from __future__ import annotations

import gradio as gr

TRACKED = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)


class UiLoadsave:
    def __init__(self, ui_settings: dict | None = None):
        self.ui_settings = dict(ui_settings or {})  # what ui-config.json held at this start
        self.component_mapping: dict = {}

    def add_component(self, path, x):
        if type(x) not in TRACKED or getattr(x, "do_not_save_to_config", False):
            return
        key = f"{path}/value"
        saved_value = self.ui_settings.get(key, None)
        if saved_value is None:
            self.ui_settings[key] = x.value
        elif type(x) is gr.Dropdown and saved_value not in [
            c[0] if isinstance(c, tuple) else c for c in x.choices
        ]:
            pass
        else:
            x.value = saved_value
        self.component_mapping.setdefault(key, x)

    def add_block(self, x, path=""):
        if hasattr(x, "children"):
            for c in x.children:
                self.add_block(c, path)
        elif x.label is not None:
            self.add_component(f"{path}/{x.label}", x)
