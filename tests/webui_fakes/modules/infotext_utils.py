"""Fake ``modules.infotext_utils`` (1.7+; ``generation_parameters_copypaste`` before): send-to buttons.

Bindings are recorded; the real ``connect_paste_params_buttons`` wires them into the page after every
tab exists, which the tests check by reading ``registered_param_bindings``.
"""

from __future__ import annotations

import sys


class ParamBinding:
    def __init__(
        self,
        paste_button,
        tabname,
        source_text_component=None,
        source_image_component=None,
        source_tabname=None,
        override_settings_component=None,
        paste_field_names=None,
    ):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


paste_fields: dict[str, dict] = {}
registered_param_bindings: list[ParamBinding] = []


def reset():
    paste_fields.clear()
    registered_param_bindings.clear()


def create_buttons(tabs_list):
    import gradio as gr

    return {tab: gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab") for tab in tabs_list}


def register_paste_params_button(binding: ParamBinding):
    registered_param_bindings.append(binding)


def parse_generation_parameters(x: str):
    lines = x.strip().split("\n")
    prompt, negative = [], []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[16:].strip()
        target.append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}


sys.modules.setdefault("modules.generation_parameters_copypaste", sys.modules[__name__])
