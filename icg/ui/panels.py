"""The Caption and Batch panels, built inside the caller's ``gr.Blocks`` (the standalone app or the WebUI
tab), with only the gradio API that 3.41, 4.x and current releases share (see ``icg.ui.compat``).

The builders return dataclasses of the components so a host can wire more to them (the WebUI's Send-to
buttons read ``CaptionPanel.prompt`` and ``CaptionPanel.image``). Every ``elem_id`` starts with ``icg_``.
The work behind the buttons is in ``icg.ui.handlers`` and calls only the service it is given.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from icg.options import BATCH, CAPTION, DECODING, MODEL_DEFAULT, TEMPLATE, Option
from icg.ui.compat import copy_button_kwargs
from icg.ui.handlers import (
    CANDIDATE_HEADERS,
    JOB_HEADERS,
    MAX_RESULT_ROWS,
    RESULT_HEADERS,
    BatchController,
    BatchInputs,
    CaptionController,
    DecodingInputs,
    PromptInputs,
    table,
)
from icg.ui.service import UiDefaults

logger = logging.getLogger(__name__)

#: The decoding controls in view; every other decoding option goes to "More decoding options".
DECODING_ROWS = (
    ("strategy", "style", "num_samples", "num_beams", "seed"),
    ("temperature", "top_k", "top_p", "max_new_tokens"),
)
#: What an empty number box means, for the options that may be left empty.
EMPTY = {"batch_size": "automatic", "max_keywords": "all"}


class OptionControls:
    """The controls of some options (by name), handed to the handlers in the order of ``names``."""

    def __init__(self, names: tuple[str, ...], components: dict[str, Any]) -> None:
        missing = [name for name in names if name not in components]
        if missing:
            raise ValueError(f"no control for {', '.join(missing)}")
        self.names = names
        self.components = components

    def __getattr__(self, name: str) -> Any:
        components = self.__dict__.get("components")
        if components is not None and name in components:
            return components[name]
        raise AttributeError(name)

    def inputs(self) -> list[Any]:
        return [self.components[name] for name in self.names]


DecodingControls = OptionControls


@dataclass
class CaptionPanel:
    image: Any
    model: Any
    refresh_models: Any
    decoding: OptionControls
    caption_button: Any
    caption: Any
    info: Any
    candidates: Any
    keywords: Any
    regenerate_button: Any
    prompt_options: OptionControls
    prompt: Any
    controller: CaptionController = field(repr=False)

    @property
    def outputs(self) -> list[Any]:
        """What a caption updates, in the order the handlers return it."""
        return [self.caption, self.info, self.candidates, self.keywords, self.prompt]

    @property
    def prompt_inputs(self) -> list[Any]:
        return self.prompt_options.inputs()

    @property
    def template(self) -> Any:
        return self.prompt_options.template


@dataclass
class BatchPanel:
    fields: OptionControls  # the folder fields, then the BATCH and TEMPLATE options (``BatchInputs``)
    decoding: OptionControls
    start_button: Any
    stop_button: Any
    progress: Any
    results: Any
    jobs: Any
    refresh_jobs: Any
    controller: BatchController = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        fields_ = self.__dict__.get("fields")
        if fields_ is not None and name in fields_.components:
            return fields_.components[name]
        raise AttributeError(name)

    def inputs(self) -> list[Any]:
        """The Start button's inputs: the ``BatchInputs`` fields in order, then the decoding controls."""
        return self.fields.inputs() + self.decoding.inputs()


@dataclass
class IcgPanels:
    caption: CaptionPanel
    batch: BatchPanel
    service: Any = field(repr=False, default=None)


# ------------------------------------------------------------------------------------------ builders
def build_panels(service: Any, defaults: UiDefaults | None = None, registry: Any = None) -> IcgPanels:
    """The Caption and Batch tabs, inside the current ``gr.Blocks`` (or ``gr.Tabs``) context; batches run
    in ``registry`` (default: the process's job registry)."""
    import gradio as gr

    defaults = defaults or UiDefaults()
    with gr.Tab("Caption", elem_id="icg_tab_caption"):
        caption = build_caption_panel(service, defaults)
    with gr.Tab("Batch", elem_id="icg_tab_batch"):
        batch = build_batch_panel(service, defaults, registry)
    return IcgPanels(caption=caption, batch=batch, service=service)


def build_app(
    service: Any, defaults: UiDefaults | None = None, title: str = "Image Caption", registry: Any = None
):
    """A standalone ``gr.Blocks`` with both tabs and the queue on; returns ``(demo, panels)``."""
    import gradio as gr

    from icg.ui.compat import blocks_kwargs, enable_queue

    with gr.Blocks(**blocks_kwargs(title)) as demo:
        gr.Markdown(f"## {title}", elem_id="icg_title")
        panels = build_panels(service, defaults, registry)
    enable_queue(demo)
    return demo, panels


def build_caption_panel(service: Any, defaults: UiDefaults | None = None) -> CaptionPanel:
    import gradio as gr

    defaults = defaults or UiDefaults()
    controller = CaptionController(service)
    copy = copy_button_kwargs()
    with gr.Row(elem_id="icg_caption_panel"):
        with gr.Column():
            image = gr.Image(type="pil", label="Image", elem_id="icg_image")
            with gr.Row():
                model, refresh = _model_dropdown(service, defaults, "icg_model")
                caption_button = gr.Button("Caption", variant="primary", elem_id="icg_caption_button")
            with gr.Accordion("Decoding", open=False, elem_id="icg_decoding"):
                decoding = _decoding_controls(defaults, "icg_")
        with gr.Column():
            caption = gr.Textbox(label="Caption", lines=2, elem_id="icg_caption", **copy)
            info = gr.Textbox(label="Details", lines=1, interactive=False, elem_id="icg_caption_info")
            candidates = gr.Dataframe(
                value=table(CANDIDATE_HEADERS, []),
                headers=CANDIDATE_HEADERS,
                datatype=["number", "str", "number"],
                label="Candidates",
                interactive=False,
                wrap=True,
                elem_id="icg_candidates",
            )
            with gr.Row():
                keywords = gr.Textbox(
                    label="Keywords (SBG; edit them and press Regenerate)",
                    lines=2,
                    scale=4,
                    elem_id="icg_keywords",
                )
                regenerate = gr.Button("Regenerate", scale=1, elem_id="icg_regenerate_button")
            with gr.Accordion("Prompt template", open=False, elem_id="icg_prompt_template"):
                prompt_options = _template_controls(defaults, "icg_", defaults.template)
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="icg_prompt", **copy)
    panel = CaptionPanel(
        image=image,
        model=model,
        refresh_models=refresh,
        decoding=decoding,
        caption_button=caption_button,
        caption=caption,
        info=info,
        candidates=candidates,
        keywords=keywords,
        regenerate_button=regenerate,
        prompt_options=prompt_options,
        prompt=prompt,
        controller=controller,
    )
    settings = [*decoding.inputs(), *panel.prompt_inputs]
    caption_button.click(controller.caption_event, inputs=[image, model, *settings], outputs=panel.outputs)
    regenerate.click(
        controller.regenerate_event,
        inputs=[keywords, image, model, *settings],
        outputs=panel.outputs,
    )
    compose_inputs = [caption, keywords, *panel.prompt_inputs]
    for component in compose_inputs:
        component.change(controller.compose_event, inputs=compose_inputs, outputs=[prompt], queue=False)
    _wire_refresh(refresh, model, service)
    return panel


def build_batch_panel(service: Any, defaults: UiDefaults | None = None, registry: Any = None) -> BatchPanel:
    import gradio as gr

    defaults = defaults or UiDefaults()
    controller = BatchController(service, defaults, registry=registry)
    folders = bool(defaults.allow_folders)
    folder_note = "" if folders else " (fixed by the host)"
    parts: dict[str, Any] = {}

    def put(name: str) -> None:
        value = getattr(defaults, name)
        parts[name] = option_control(BATCH[name], value, f"icg_batch_{name}", EMPTY.get(name))

    with gr.Column(elem_id="icg_batch_panel"):
        with gr.Row():
            parts["folder"] = gr.Textbox(
                value=defaults.batch_folder,
                label="Folder of images" + folder_note,
                interactive=folders,
                scale=3,
                elem_id="icg_batch_folder",
            )
            parts["model"], refresh = _model_dropdown(service, defaults, "icg_batch_model")
        with gr.Row():
            for name in ("recursive", "write_sidecars", "resume"):
                put(name)
            parts["dry_run"] = gr.Checkbox(
                value=False, label="Dry run (write nothing)", elem_id="icg_batch_dry_run"
            )
        with gr.Accordion("Output", open=True, elem_id="icg_batch_output"):
            with gr.Row():
                put("sidecar_extension")
                put("policy")
                parts["separator"] = gr.Textbox(
                    value="",
                    label="Append/prepend separator (empty: a new line)",
                    elem_id="icg_batch_separator",
                )
            with gr.Row():
                parts["output_dir"] = gr.Textbox(
                    value=defaults.output_folder,
                    label="Output folder (empty: beside the images)" + folder_note,
                    interactive=folders,
                    elem_id="icg_batch_output_dir",
                )
                parts["manifest"] = gr.Textbox(
                    value=defaults.manifest,
                    label="Manifest .jsonl or .csv (empty: none)" + folder_note,
                    interactive=folders,
                    elem_id="icg_batch_manifest",
                )
            with gr.Row():
                parts["extensions"] = gr.Textbox(
                    value="",
                    label="Image extensions (empty: all readable)",
                    elem_id="icg_batch_extensions",
                )
                for name in BATCH.names:
                    if name not in parts:
                        put(name)
        with gr.Accordion("Caption file text", open=False, elem_id="icg_batch_text"):
            template = _template_controls(defaults, "icg_batch_", defaults.batch_template)
        parts.update(template.components)
        with gr.Accordion("Decoding", open=False, elem_id="icg_batch_decoding"):
            decoding = _decoding_controls(defaults, "icg_batch_")
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="icg_batch_start")
            stop = gr.Button("Stop", variant="stop", elem_id="icg_batch_stop")
        progress = gr.Textbox(label="Progress", lines=4, interactive=False, elem_id="icg_batch_progress")
        results = gr.Dataframe(
            value=table(RESULT_HEADERS, []),
            headers=RESULT_HEADERS,
            datatype=["str", "str", "str", "str"],
            label=f"Results (latest {MAX_RESULT_ROWS})",
            interactive=False,
            wrap=True,
            elem_id="icg_batch_results",
        )
        with gr.Accordion("Jobs (this tab's, the API's and auto-captioning)", open=False, elem_id="icg_jobs"):
            jobs = gr.Dataframe(
                value=controller.jobs_table(),
                headers=JOB_HEADERS,
                datatype=["str"] * len(JOB_HEADERS),
                label="Jobs (newest first)",
                interactive=False,
                wrap=True,
                elem_id="icg_jobs_table",
            )
            refresh_jobs = gr.Button("Refresh", elem_id="icg_jobs_refresh")
    panel = BatchPanel(
        fields=OptionControls(BatchInputs.NAMES, parts),
        decoding=decoding,
        start_button=start,
        stop_button=stop,
        progress=progress,
        results=results,
        jobs=jobs,
        refresh_jobs=refresh_jobs,
        controller=controller,
    )
    start.click(controller.run_event, inputs=panel.inputs(), outputs=[progress, results, start, jobs])
    # Not queued: under gradio 3.x's single worker pool a queued Stop would wait for the batch it stops.
    stop.click(controller.stop_event, inputs=[], outputs=[progress], queue=False)
    refresh_jobs.click(controller.jobs_table, inputs=[], outputs=[jobs], queue=False)
    _wire_refresh(refresh, parts["model"], service)
    return panel


# ------------------------------------------------------------------------------------------ pieces
def _model_dropdown(service: Any, defaults: UiDefaults, elem_id: str) -> tuple[Any, Any]:
    import gradio as gr

    value = defaults.model or service.default_model()
    choices = list(dict.fromkeys([value, *service.model_choices()]))
    paths = getattr(service, "allow_model_paths", True)  # a service of its own may take any path
    dropdown = gr.Dropdown(
        choices=choices,
        value=value,
        label="Model (an id, or the path of a model file or folder)" if paths else "Model",
        allow_custom_value=True,
        scale=2,
        elem_id=elem_id,
    )
    refresh = gr.Button("Refresh list", scale=0, min_width=80, elem_id=f"{elem_id}_refresh")
    watch_models_folder(dropdown, service)
    return dropdown, refresh


def model_choices_update(service: Any, current: str) -> Any:
    """The model dropdown's choices listed afresh (a model imported or copied since), keeping ``current``."""
    import gradio as gr

    return gr.update(choices=list(dict.fromkeys(c for c in (current, *service.model_choices()) if c)))


def wire_model_refresh(event: Any, dropdown: Any, service: Any) -> None:
    """Refresh ``dropdown``'s choices on ``event`` (a button's ``click``, a tab's ``select``)."""
    update = functools.partial(model_choices_update, service)
    event(update, inputs=[dropdown], outputs=[dropdown], queue=False)


def _wire_refresh(button: Any, dropdown: Any, service: Any) -> None:
    wire_model_refresh(button.click, dropdown, service)


def models_signature(service: Any) -> str:
    """``icg.models.paths.folder_signature`` of the service's models folder (as it is now: the WebUI's
    follows its settings)."""
    from icg.models.paths import folder_signature

    return folder_signature(service.manager.models_dir)


def watch_models_folder(dropdown: Any, service: Any, events: tuple[Any, ...] = ()) -> Any:
    """Refresh ``dropdown``'s choices when the models folder changed since this page listed them (a model
    imported, downloaded or copied while the server runs): checked with one directory scan when the
    dropdown gets the focus and on each of ``events`` (e.g. a tab's ``select``). Returns the page's
    ``gr.State`` holding the signature it last listed."""
    import gradio as gr

    seen = gr.State(models_signature(service))

    def check(current: str, signature: Any) -> tuple[Any, Any]:
        now = models_signature(service)
        if now == signature:
            return gr.update(), signature
        return model_choices_update(service, current), now

    for event in (dropdown.focus, *events):
        event(check, inputs=[dropdown, seen], outputs=[dropdown, seen], queue=False)
    return seen


def option_control(option: Option, value: Any, elem_id: str, empty: str | None = None) -> Any:
    """The control of one ``icg.options`` option: its label, its help as info, a dropdown of its choices,
    a checkbox, a text box, or a slider with its bounds and step. ``empty``: what an empty control means
    (e.g. "model default"); such a number is a text box (a gradio 3 ``Number`` cannot be empty) that
    states the bounds, a choice gets ``MODEL_DEFAULT`` first, and a yes/no question is a dropdown of
    ``empty``, "yes" and "no". The handlers check every value with
    ``Option.check``."""
    import gradio as gr

    common = {"label": option.label, "elem_id": elem_id}
    if option.choices:
        choices = [MODEL_DEFAULT, *option.choices] if empty else list(option.choices)
        initial = value if value is not None else (MODEL_DEFAULT if empty else option.default)
        return gr.Dropdown(choices=choices, value=initial, info=option.help, **common)
    if option.type is bool:
        if empty:  # three answers: left to the default (None), yes, no
            initial = empty if value is None else ("yes" if value else "no")
            return gr.Dropdown(choices=[empty, "yes", "no"], value=initial, info=option.help, **common)
        return gr.Checkbox(value=bool(option.default if value is None else value), info=option.help, **common)
    if option.type in (int, float) and empty is None and None not in (option.minimum, option.maximum):
        return gr.Slider(
            minimum=option.minimum,
            maximum=option.maximum,
            step=option.step or (1 if option.type is int else None),
            value=option.default if value is None else value,
            info=option.help,
            **common,
        )
    info = option.help
    if option.type in (int, float):
        info = f"{option.help}; {option.bounds_text()}"
    return gr.Textbox(
        value="" if value is None else str(value),
        placeholder=empty or "",
        info=info,
        lines=1,
        max_lines=1,
        **common,
    )


def _decoding_controls(defaults: UiDefaults, prefix: str) -> OptionControls:
    """Every option of ``DECODING`` and ``CAPTION``: the common ones in view, the rest in "More decoding
    options". Empty (or "model default") keeps the model's own value."""
    import gradio as gr

    options = {o.name: o for group in (DECODING, CAPTION) for o in group}
    parts: dict[str, Any] = {}

    def put(name: str) -> None:
        parts[name] = option_control(options[name], getattr(defaults, name), f"{prefix}{name}", MODEL_DEFAULT)

    for row in DECODING_ROWS:
        with gr.Row():
            for name in row:
                put(name)
    more = gr.Accordion("More decoding options", open=False, elem_id=f"{prefix}more_decoding")
    with more, gr.Row():
        for name in options:
            if name not in parts:
                put(name)
    return OptionControls(DecodingInputs.NAMES, parts)


def _template_controls(defaults: UiDefaults, prefix: str, template: str) -> OptionControls:
    """Every option of ``TEMPLATE``, the template box starting at ``template``."""
    import gradio as gr

    parts: dict[str, Any] = {}
    initial = {**{name: getattr(defaults, name) for name in TEMPLATE.names}, "template": template}
    parts["template"] = option_control(TEMPLATE["template"], template, f"{prefix}template")
    with gr.Row():
        for option in TEMPLATE:
            if option.name != "template":
                name = option.name
                parts[name] = option_control(option, initial[name], f"{prefix}{name}", EMPTY.get(name))
    return OptionControls(PromptInputs.NAMES, parts)
