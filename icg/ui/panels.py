"""The Caption and Batch panels, built inside the caller's ``gr.Blocks`` (the standalone app or the WebUI
tab), with only the gradio API that 3.41, 4.x and current releases share (see ``icg.ui.compat``).

The builders return dataclasses of the components so a host can wire more to them (the WebUI's Send-to
buttons read ``CaptionPanel.prompt`` and ``CaptionPanel.image``). Every ``elem_id`` starts with ``icg_``.
The work behind the buttons is in ``icg.ui.handlers`` and calls only the service it is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from icg.sinks import SIDECAR_POLICIES
from icg.ui.compat import copy_button_kwargs
from icg.ui.handlers import (
    BATCH_TEMPLATE,
    CANDIDATE_HEADERS,
    RESULT_HEADERS,
    STRATEGY_CHOICES,
    BatchController,
    CaptionController,
    DecodingInputs,
    table,
)
from icg.ui.service import UiDefaults

logger = logging.getLogger(__name__)


@dataclass
class DecodingControls:
    """The decoding inputs, in the order of ``icg.ui.handlers.DecodingInputs``."""

    strategy: Any
    num_beams: Any
    temperature: Any
    top_k: Any
    top_p: Any
    max_new_tokens: Any
    seed: Any
    num_samples: Any

    def inputs(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(DecodingInputs)]


@dataclass
class CaptionPanel:
    image: Any
    model: Any
    refresh_models: Any
    decoding: DecodingControls
    caption_button: Any
    caption: Any
    info: Any
    candidates: Any
    keywords: Any
    regenerate_button: Any
    template: Any
    prefix: Any
    suffix: Any
    lowercase: Any
    prompt: Any
    controller: CaptionController = field(repr=False)

    @property
    def outputs(self) -> list[Any]:
        """What a caption updates, in the order the handlers return it."""
        return [self.caption, self.info, self.candidates, self.keywords, self.prompt]

    @property
    def prompt_inputs(self) -> list[Any]:
        return [self.template, self.prefix, self.suffix, self.lowercase]


@dataclass
class BatchPanel:
    folder: Any
    model: Any
    recursive: Any
    extensions: Any
    sidecar_extension: Any
    output_dir: Any
    policy: Any
    separator: Any
    write_sidecars: Any
    manifest: Any
    resume: Any
    batch_size: Any
    template: Any
    prefix: Any
    suffix: Any
    lowercase: Any
    max_keywords: Any
    keep_period: Any
    dry_run: Any
    preview: Any
    decoding: DecodingControls
    start_button: Any
    stop_button: Any
    progress: Any
    results: Any
    controller: BatchController = field(repr=False)

    def inputs(self) -> list[Any]:
        """The Start button's inputs: the ``BatchInputs`` fields in order, then the decoding controls."""
        from icg.ui.handlers import BatchInputs

        return [getattr(self, f.name) for f in fields(BatchInputs)] + self.decoding.inputs()


@dataclass
class IcgPanels:
    caption: CaptionPanel
    batch: BatchPanel
    service: Any = field(repr=False, default=None)


# ------------------------------------------------------------------------------------------ builders
def build_panels(service: Any, defaults: UiDefaults | None = None) -> IcgPanels:
    """The Caption and Batch tabs, inside the current ``gr.Blocks`` (or ``gr.Tabs``) context."""
    import gradio as gr

    defaults = defaults or UiDefaults()
    with gr.Tab("Caption", elem_id="icg_tab_caption"):
        caption = build_caption_panel(service, defaults)
    with gr.Tab("Batch", elem_id="icg_tab_batch"):
        batch = build_batch_panel(service, defaults)
    return IcgPanels(caption=caption, batch=batch, service=service)


def build_app(service: Any, defaults: UiDefaults | None = None, title: str = "Image Caption"):
    """A standalone ``gr.Blocks`` with both tabs and the queue on; returns ``(demo, panels)``."""
    import gradio as gr

    from icg.ui.compat import blocks_kwargs, enable_queue

    with gr.Blocks(**blocks_kwargs(title)) as demo:
        gr.Markdown(f"## {title}", elem_id="icg_title")
        panels = build_panels(service, defaults)
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
                template = gr.Textbox(
                    value=defaults.template,
                    label="Template: {prefix} {caption} {keywords} {suffix}",
                    elem_id="icg_template",
                )
                with gr.Row():
                    prefix = gr.Textbox(value=defaults.prefix, label="Prefix", elem_id="icg_prefix")
                    suffix = gr.Textbox(value=defaults.suffix, label="Suffix", elem_id="icg_suffix")
                    lowercase = gr.Checkbox(
                        value=defaults.lowercase, label="Lower case", elem_id="icg_lowercase"
                    )
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
        template=template,
        prefix=prefix,
        suffix=suffix,
        lowercase=lowercase,
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


def build_batch_panel(service: Any, defaults: UiDefaults | None = None) -> BatchPanel:
    import gradio as gr

    defaults = defaults or UiDefaults()
    controller = BatchController(service, defaults)
    folders = bool(defaults.allow_folders)
    folder_note = "" if folders else " (fixed by the host)"
    with gr.Column(elem_id="icg_batch_panel"):
        with gr.Row():
            folder = gr.Textbox(
                value=defaults.batch_folder,
                label="Folder of images" + folder_note,
                interactive=folders,
                scale=3,
                elem_id="icg_batch_folder",
            )
            model, _refresh = _model_dropdown(service, defaults, "icg_batch_model")
        with gr.Row():
            recursive = gr.Checkbox(
                value=defaults.recursive, label="Sub-folders too", elem_id="icg_batch_recursive"
            )
            write_sidecars = gr.Checkbox(
                value=True, label="Write caption files", elem_id="icg_batch_sidecars"
            )
            resume = gr.Checkbox(value=True, label="Resume (keep the manifest)", elem_id="icg_batch_resume")
            dry_run = gr.Checkbox(value=False, label="Dry run (write nothing)", elem_id="icg_batch_dry_run")
        with gr.Accordion("Output", open=True, elem_id="icg_batch_output"):
            with gr.Row():
                sidecar_extension = gr.Textbox(
                    value=defaults.sidecar_extension,
                    label="Caption file extension",
                    elem_id="icg_batch_extension",
                )
                policy = gr.Radio(
                    choices=list(SIDECAR_POLICIES),
                    value=defaults.sidecar_policy,
                    label="Existing caption files",
                    elem_id="icg_batch_policy",
                )
                separator = gr.Textbox(
                    value="",
                    label="Append/prepend separator (empty: a new line)",
                    elem_id="icg_batch_separator",
                )
            with gr.Row():
                output_dir = gr.Textbox(
                    value=defaults.output_folder,
                    label="Output folder (empty: beside the images)" + folder_note,
                    interactive=folders,
                    elem_id="icg_batch_output_dir",
                )
                manifest = gr.Textbox(
                    value=defaults.manifest,
                    label="Manifest .jsonl or .csv (empty: none)" + folder_note,
                    interactive=folders,
                    elem_id="icg_batch_manifest",
                )
            with gr.Row():
                extensions = gr.Textbox(
                    value="",
                    label="Image extensions (empty: all readable)",
                    elem_id="icg_batch_image_extensions",
                )
                batch_size = gr.Number(
                    value=defaults.batch_size,
                    precision=0,
                    label="Batch size (0: automatic)",
                    elem_id="icg_batch_size",
                )
                preview = gr.Number(
                    value=3, precision=0, label="Dry-run preview", elem_id="icg_batch_preview"
                )
        with gr.Accordion("Caption file text", open=False, elem_id="icg_batch_text"):
            template = gr.Textbox(
                value=BATCH_TEMPLATE,
                label="Template: {prefix} {caption} {keywords} {suffix}",
                elem_id="icg_batch_template",
            )
            with gr.Row():
                prefix = gr.Textbox(value=defaults.prefix, label="Prefix", elem_id="icg_batch_prefix")
                suffix = gr.Textbox(value=defaults.suffix, label="Suffix", elem_id="icg_batch_suffix")
                lowercase = gr.Checkbox(
                    value=defaults.lowercase, label="Lower case", elem_id="icg_batch_lowercase"
                )
            with gr.Row():
                max_keywords = gr.Textbox(
                    value="",
                    label="Max keywords (empty: all)",
                    lines=1,
                    max_lines=1,
                    elem_id="icg_batch_max_keywords",
                )
                keep_period = gr.Checkbox(
                    value=False, label="Keep the final period", elem_id="icg_batch_keep_period"
                )
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
            label="Results (latest 500)",
            interactive=False,
            wrap=True,
            elem_id="icg_batch_results",
        )
    panel = BatchPanel(
        folder=folder,
        model=model,
        recursive=recursive,
        extensions=extensions,
        sidecar_extension=sidecar_extension,
        output_dir=output_dir,
        policy=policy,
        separator=separator,
        write_sidecars=write_sidecars,
        manifest=manifest,
        resume=resume,
        batch_size=batch_size,
        template=template,
        prefix=prefix,
        suffix=suffix,
        lowercase=lowercase,
        max_keywords=max_keywords,
        keep_period=keep_period,
        dry_run=dry_run,
        preview=preview,
        decoding=decoding,
        start_button=start,
        stop_button=stop,
        progress=progress,
        results=results,
        controller=controller,
    )
    start.click(controller.run_event, inputs=panel.inputs(), outputs=[progress, results, start])
    # Not queued: under gradio 3.x's single worker pool a queued Stop would wait for the batch it stops.
    stop.click(controller.stop_event, inputs=[], outputs=[progress], queue=False)
    _wire_refresh(_refresh, model, service)
    return panel


# ------------------------------------------------------------------------------------------ pieces
def _model_dropdown(service: Any, defaults: UiDefaults, elem_id: str) -> tuple[Any, Any]:
    import gradio as gr

    value = defaults.model or service.default_model()
    choices = list(dict.fromkeys([value, *service.model_choices()]))
    dropdown = gr.Dropdown(
        choices=choices,
        value=value,
        label="Model (an id, or the path of a model file or folder)",
        allow_custom_value=True,
        scale=2,
        elem_id=elem_id,
    )
    refresh = gr.Button("Refresh list", scale=0, min_width=80, elem_id=f"{elem_id}_refresh")
    return dropdown, refresh


def _wire_refresh(button: Any, dropdown: Any, service: Any) -> None:
    import gradio as gr

    def refresh(current: str) -> Any:
        return gr.update(choices=list(dict.fromkeys(c for c in (current, *service.model_choices()) if c)))

    button.click(refresh, inputs=[dropdown], outputs=[dropdown], queue=False)


def _decoding_controls(defaults: UiDefaults, prefix: str) -> DecodingControls:
    """Number fields are text boxes: empty means "the model's default" (a gradio 3 ``Number`` cannot be
    empty: it sends 0, which is a real value for top-k)."""
    import gradio as gr

    def number(name: str, label: str, value: Any, placeholder: str = "model default") -> Any:
        return gr.Textbox(
            value="" if value is None else str(value),
            label=label,
            placeholder=placeholder,
            lines=1,
            max_lines=1,
            elem_id=f"{prefix}{name}",
        )

    with gr.Row():
        strategy = gr.Dropdown(
            choices=list(STRATEGY_CHOICES),
            value=defaults.strategy or STRATEGY_CHOICES[0],
            label="Strategy",
            elem_id=f"{prefix}strategy",
        )
        num_samples = number("num_samples", "Candidates (samples; SBG)", defaults.num_samples)
        num_beams = number("num_beams", "Beams", defaults.num_beams)
        seed = number("seed", "Seed (-1: a new random one)", defaults.seed, placeholder="model default")
    with gr.Row():
        temperature = number("temperature", "Temperature", defaults.temperature)
        top_k = number("top_k", "Top-k (0: off)", defaults.top_k)
        top_p = number("top_p", "Top-p", defaults.top_p)
        max_new_tokens = number("max_new_tokens", "Max new tokens", defaults.max_new_tokens)
    return DecodingControls(
        strategy=strategy,
        num_beams=num_beams,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        num_samples=num_samples,
    )
