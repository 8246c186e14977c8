"""The tab's Models panel: every known model, installed or missing, Download and Unload."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.errors import ConfigError
from icg.webui import host
from icg.webui.settings import model_choices

if TYPE_CHECKING:
    from icg.webui.service import WebUIService


@dataclass
class ModelsPanel:
    table: Any
    model: Any
    refresh_button: Any
    download_button: Any
    unload_button: Any
    status: Any


MODEL_HEADERS = ["model", "kind", "installed", "on disk", "missing files", "loaded"]


def model_rows(service: WebUIService) -> list[list[Any]]:
    from icg.api import describe_models
    from icg.models.download import format_size

    rows = []
    for m in describe_models(service)["models"]:
        missing = ", ".join(m["missing"][:4]) + (" ..." if len(m["missing"]) > 4 else "")
        rows.append(
            [
                m["id"] + (" (default)" if m["default"] else ""),
                m["kind"],
                "yes" if m["installed"] else ("no (manual download)" if m["manual_only"] else "no"),
                format_size(m["size_bytes"]) if m["size_bytes"] else "-",
                missing or "-",
                "yes" if m["loaded"] else "",
            ]
        )
    return rows


def models_table(service: WebUIService) -> dict[str, Any]:
    from icg.ui.handlers import table

    return table(MODEL_HEADERS, model_rows(service))


def download_models(service: WebUIService, model: str, progress: Any = None) -> str:
    """Download ``model`` and the models it needs; the status line to show."""
    from icg.models.download import download_model
    from icg.models.registry import load_registry, with_requirements

    if host.offline():
        raise ConfigError("downloads are off (--icg-offline / ICG_OFFLINE); import the files by hand")
    registry = load_registry()
    entry = registry.get(model)
    if entry is None:
        raise ConfigError(f"{model!r} is not a registry model; local models are imported by hand")
    entries = with_requirements([entry], registry)
    root = Path(service.manager.models_dir)
    for index, item in enumerate(entries):
        if progress is not None:
            with contextlib.suppress(Exception):
                progress(index / len(entries), desc=f"Downloading {item.id}")
        download_model(item, root, offline=None, progress=True)  # None: HF_HUB_OFFLINE still applies
    return f"{model}: installed in {root}"


def build_models_panel(service: WebUIService) -> ModelsPanel:
    import gradio as gr

    from icg.ui.handlers import table, user_errors

    with gr.Column(elem_id="icg_models_panel"):
        gr.Markdown(
            f"Models live in `{service.manager.models_dir}` (one folder per model id). "
            "Files you downloaded yourself: `python -m icg import FILE --as ID` or copy them into the folder."
        )
        models = gr.Dataframe(
            value=table(MODEL_HEADERS, []),
            headers=MODEL_HEADERS,
            label="Models",
            interactive=False,
            wrap=True,
            elem_id="icg_models_table",
        )
        with gr.Row():
            choices = model_choices()
            model = gr.Dropdown(
                choices=choices,
                value=choices[0] if choices else None,
                label="Model",
                elem_id="icg_models_choice",
            )
            refresh = gr.Button("Refresh", elem_id="icg_models_refresh")
            download = gr.Button("Download", variant="primary", elem_id="icg_models_download")
            unload = gr.Button("Unload all", elem_id="icg_models_unload")
        status = gr.Textbox(label="Status", interactive=False, elem_id="icg_models_status")

    def on_refresh():
        choices = model_choices()
        return models_table(service), gr.update(choices=choices)

    def on_download(model, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's idiom
        message = download_models(service, model, progress)
        return message, models_table(service)

    def on_unload():
        service.unload()
        return "Models unloaded; memory returned.", models_table(service)

    refresh.click(user_errors(on_refresh), inputs=[], outputs=[models, model])
    download.click(user_errors(on_download), inputs=[model], outputs=[status, models])
    unload.click(user_errors(on_unload), inputs=[], outputs=[status, models])
    return ModelsPanel(models, model, refresh, download, unload, status)

