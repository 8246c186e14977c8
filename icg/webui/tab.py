"""The "Image Caption" tab: the Caption and Batch panels of ``icg.ui``, the Models panel, and the
Send-to and Append buttons that hand the prompt to txt2img and img2img."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from icg.options import DEFAULT_TEMPLATE, STRATEGIES
from icg.prompt import merge_prompt
from icg.ui.service import UiDefaults
from icg.webui import host
from icg.webui.models_panel import build_models_panel
from icg.webui.service import WebUIService, get_service
from icg.webui.settings import Settings

logger = logging.getLogger(__name__)

TAB_TITLE = "Image Caption"
TAB_ID = "icg"
PROMPT_IDS = ("txt2img_prompt", "img2img_prompt")
SEND_LABELS = {
    "txt2img": "Send prompt to txt2img",
    "img2img": "Send image and prompt to img2img",
    "inpaint": "Send image and prompt to inpaint",
}
#: The tab's fields whose first value comes from the Settings (or the WebUI's output folder). The WebUI
#: stores every other field in ui-config.json on the first start and restores it on each later one, which
#: would hide every later change of the setting: these carry ``do_not_save_to_config`` (ui_loadsave.py).
FOLLOW_SETTINGS = (
    "model",
    "strategy",
    "num_beams",
    "max_new_tokens",
    "seed",
    "num_samples",
    "template",
    "prefix",
    "suffix",
    "folder",
    "sidecar_extension",
    "policy",
)
# ------------------------------------------------------------------------------------------ components
_COMPONENTS: dict[str, Any] = {}


def on_after_component(component: Any, **kwargs: Any) -> None:
    """Remember the txt2img and img2img prompt boxes as the WebUI builds them (``on_after_component``)."""
    elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
    if elem_id in PROMPT_IDS:
        _COMPONENTS[elem_id] = component



def default_output_folder() -> str:
    """The WebUI's output folder: the samples folder when set, else the folder above txt2img's."""
    samples = str(host.opt("outdir_samples", "") or "").strip()
    if samples:
        return samples
    folders = [str(host.opt(k, "") or "") for k in ("outdir_txt2img_samples", "outdir_img2img_samples")]
    folders = [f for f in folders if f]
    if len(folders) == 2:
        with contextlib.suppress(ValueError):
            common = os.path.commonpath([os.path.abspath(f) for f in folders])
            if common and common != os.path.abspath(os.sep):
                return common
    if folders:
        return folders[0]
    return os.path.join(getattr(host.module("paths_internal"), "data_path", os.getcwd()), "outputs")


def ui_defaults() -> UiDefaults:
    settings = Settings.read()
    overrides = settings.decoding_overrides()
    return UiDefaults(
        model=settings.default_model,
        strategy=settings.strategy if settings.strategy in STRATEGIES else None,
        num_beams=overrides.get("num_beams"),
        max_new_tokens=overrides.get("max_new_tokens"),
        seed=settings.seed,
        num_samples=settings.num_candidates,
        template=settings.template or DEFAULT_TEMPLATE,
        prefix=settings.prefix,
        suffix=settings.suffix,
        batch_folder=default_output_folder(),
        sidecar_extension=settings.sidecar_extension,
        policy=settings.sidecar_policy,
        recursive=True,
        allow_folders=not host.hide_dirs(),
    )


@dataclass
class TabParts:
    """What ``build_tab`` made (the tests, and anyone extending the tab, reach the components here)."""

    blocks: Any
    panels: Any
    models: Any
    send_buttons: dict[str, Any]
    append_buttons: dict[str, Any]


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """The "Image Caption" tab (``on_ui_tabs`` callback)."""
    return [(build_tab().blocks, TAB_TITLE, TAB_ID)]


def build_tab(service: WebUIService | None = None) -> TabParts:
    """The tab's ``gr.Blocks``: Caption (with Send-to and Append buttons), Batch and Models."""
    import gradio as gr

    from icg.ui.panels import IcgPanels, build_batch_panel, build_caption_panel, wire_model_refresh

    service = service or get_service()
    defaults = ui_defaults()
    with gr.Blocks(analytics_enabled=False) as blocks:
        with gr.Tabs(elem_id="icg_tabs"):
            with gr.Tab("Caption", elem_id="icg_tab_caption") as caption_tab:
                caption = build_caption_panel(service, defaults)
                with gr.Row(elem_id="icg_send_row"):
                    send = add_send_buttons(caption)
                    append = add_append_buttons(caption)
            with gr.Tab("Batch", elem_id="icg_tab_batch") as batch_tab:
                batch = build_batch_panel(service, defaults)
            with gr.Tab("Models", elem_id="icg_tab_models") as models_tab:
                models = build_models_panel(service, models_tab)
        # A model imported or copied while the WebUI runs shows up when its tab is opened again.
        wire_model_refresh(caption_tab.select, caption.model, service)
        wire_model_refresh(batch_tab.select, batch.model, service)
    panels = IcgPanels(caption=caption, batch=batch, service=service)
    for component in settings_fields(panels, models):
        component.do_not_save_to_config = True
    return TabParts(blocks=blocks, panels=panels, models=models, send_buttons=send, append_buttons=append)


def settings_fields(panels: Any, models: Any) -> list[Any]:
    """The components of ``FOLLOW_SETTINGS`` in both panels, and the Models panel's model choice."""
    caption, batch = panels.caption, panels.batch
    groups = (
        {"model": caption.model},
        caption.decoding.components,
        caption.prompt_options.components,
        batch.fields.components,
        batch.decoding.components,
    )
    found = [group[name] for group in groups for name in FOLLOW_SETTINGS if name in group]
    return [*found, models.model]


def _paste_module() -> Any:
    return host.module("infotext_utils") or host.module("generation_parameters_copypaste")


def add_send_buttons(caption: Any) -> dict[str, Any]:
    """ "Send to txt2img / img2img / inpaint": the prompt (and for img2img and inpaint the image) through
    the WebUI's own paste machinery, which also switches to the tab."""
    import gradio as gr

    paste = _paste_module()
    if paste is None or not hasattr(paste, "register_paste_params_button"):
        logger.warning("Image Caption: this WebUI has no infotext_utils; no Send-to buttons")
        return {}
    buttons = {}
    for tab in ("txt2img", "img2img", "inpaint"):
        button = gr.Button(SEND_LABELS[tab], elem_id=f"icg_send_{tab}")
        paste.register_paste_params_button(
            paste.ParamBinding(
                paste_button=button,
                tabname=tab,
                source_text_component=caption.prompt,
                source_image_component=None if tab == "txt2img" else caption.image,
            )
        )
        buttons[tab] = button
    return buttons


def append_prompt(existing: str, addition: str) -> str:
    """``existing`` with ``addition`` appended (", "-joined, parts already there not repeated)."""
    return merge_prompt(existing or "", addition or "", "append")


def add_append_buttons(caption: Any) -> dict[str, Any]:
    """ "Append to txt2img / img2img prompt": adds the prompt where the cursor was (javascript/icg.js), or at
    the end (without it), instead of replacing what is there."""
    import gradio as gr

    buttons = {}
    for tab in ("txt2img", "img2img"):
        target = _COMPONENTS.get(f"{tab}_prompt")
        if target is None:  # the WebUI did not build that prompt box (or not yet): no button
            continue
        button = gr.Button(f"Append to {tab} prompt", elem_id=f"icg_append_{tab}")
        insert = host.guarded_js("icgInsertAtCursor", f"'{tab}'", "a[0]", "a[1]", fallback="a")
        button.click(
            append_prompt,
            inputs=[target, caption.prompt],
            outputs=[target],
            **host.js_kwargs(button.click, insert),
        )
        switch = host.guarded_js(f"switch_to_{tab}", fallback="[]")
        button.click(None, inputs=[], outputs=[], **host.js_kwargs(button.click, switch))
        buttons[tab] = button
    return buttons

