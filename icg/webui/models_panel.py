"""The tab's Models panel: every known model, installed or missing, Download and Unload."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.errors import ConfigError
from icg.webui import host
from icg.webui.launcher import import_command
from icg.webui.settings import model_choices

if TYPE_CHECKING:
    from icg.webui.service import WebUIService

logger = logging.getLogger(__name__)


@dataclass
class ModelsPanel:
    table: Any
    model: Any
    refresh_button: Any
    download_button: Any
    unload_button: Any
    status: Any
    import_path: Any
    import_id: Any
    import_button: Any


MODEL_HEADERS = ["model", "kind", "installed", "on disk", "missing files", "loaded", "source"]


def model_rows(service: WebUIService) -> list[list[Any]]:
    from icg.api import describe_models
    from icg.models.download import format_size
    from icg.models.inventory import manager_inventory

    known = {row.id: row for row in manager_inventory(service.manager)}
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
                _source(m, known),
            ]
        )
    return rows


def _source(model: dict[str, Any], known: dict[str, Any]) -> str:
    """Where an installed model's weights came from, and its CLIP's (a copy another tool keeps, e.g. the
    WebUI's Interrogate CLIP, or the download address)."""
    if not model["installed"]:
        return "-"
    clips = [known[r].source for r in model["requires"] if r in known and known[r].kind == "clip"]
    return "; ".join([model["source"], *(f"CLIP: {c}" for c in clips)])


def models_table(service: WebUIService) -> dict[str, Any]:
    from icg.ui.handlers import table

    return table(MODEL_HEADERS, model_rows(service))


def download_models(service: WebUIService, model: str, progress: Any = None) -> str:
    """Download ``model`` and the models it needs (no WebUI lock held, so generation goes on; the
    manager's install lock keeps a caption of the same model from fetching it twice); the status line."""
    from icg.models.registry import load_registry

    if host.offline():
        raise ConfigError("downloads are off (--icg-offline / ICG_OFFLINE); import the files by hand")
    if load_registry().get(model) is None:
        raise ConfigError(f"{model!r} is not a registry model; local models are imported by hand")

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            with contextlib.suppress(Exception):
                progress(fraction, desc=text)

    service.manager.install(model, report, explicit=True)  # explicit: unreachable hosts are tried again
    return f"{model}: installed in {service.manager.models_dir}"


def import_files(service: WebUIService, path: str, model_id: str) -> str:
    """Import the file or folder at ``path`` as ``model_id`` into the WebUI's models folder (what
    ``icg_import.py`` does from the command line); the status line."""
    from icg.models.importer import import_model

    if host.hide_dirs():
        raise ConfigError(
            "Import: paths on the server cannot be typed under --hide-ui-dir-config; "
            "run icg_import.py on the server instead"
        )
    path, model_id = (path or "").strip().strip('"'), (model_id or "").strip()
    if not path:
        raise ConfigError("Import: give the path of the file or folder to import")
    if not model_id:
        raise ConfigError("Import: give the model id to install it as")
    if not Path(path).expanduser().exists():
        raise ConfigError(f"Import: {path}: no such file or folder")
    result = import_model([path], model_id, service.manager.models_dir)
    verb = "replaced" if result.replaced else "imported"
    return f"{verb} {result.id} ({result.kind}) -> {result.folder}; {result.details}"


def initial_table(service: WebUIService) -> dict[str, Any]:
    """The table as the page opens (never an empty one waiting for Refresh); the tab's ``select`` lists
    the models afresh. An unreadable models folder leaves it empty and is logged, not fatal."""
    try:
        return models_table(service)
    except Exception:
        logger.warning("Image Caption: could not list the models", exc_info=True)
        from icg.ui.handlers import table

        return table(MODEL_HEADERS, [])


def build_models_panel(service: WebUIService, tab: Any = None) -> ModelsPanel:
    """The panel inside the current block; ``tab``: the tab holding it, whose ``select`` refreshes it."""
    import gradio as gr

    from icg.ui.handlers import user_errors

    with gr.Column(elem_id="icg_models_panel"):
        gr.Markdown(
            f"Models live in `{service.manager.models_dir}` (one folder per model id). Files you "
            "downloaded yourself: **Import** below, or from the WebUI's folder "
            f"`{import_command('ID', service.manager.models_dir)}`, or copy them into the folder.",
            elem_id="icg_models_help",
        )
        models = gr.Dataframe(
            value=initial_table(service),
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
        with gr.Row():
            import_path = gr.Textbox(
                label="Import: the file or folder you downloaded (a path on this machine)",
                interactive=not host.hide_dirs(),
                scale=3,
                elem_id="icg_models_import_path",
            )
            import_id = gr.Textbox(label="as model id", scale=1, elem_id="icg_models_import_id")
            import_button = gr.Button("Import", elem_id="icg_models_import")
        status = gr.Textbox(label="Status", interactive=False, elem_id="icg_models_status")

    def on_refresh():
        choices = model_choices()
        return models_table(service), gr.update(choices=choices)

    def on_download(model, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's idiom
        message = download_models(service, model, progress)
        return message, models_table(service)

    def on_import(path, model_id):
        message = import_files(service, path, model_id)
        return (message, *on_refresh())

    def on_unload():
        service.unload()
        return "Models unloaded; memory returned.", models_table(service)

    refresh.click(user_errors(on_refresh), inputs=[], outputs=[models, model])
    if tab is not None:
        tab.select(user_errors(on_refresh), inputs=[], outputs=[models, model])
    download.click(user_errors(on_download), inputs=[model], outputs=[status, models])
    unload.click(user_errors(on_unload), inputs=[], outputs=[status, models])
    import_button.click(
        user_errors(on_import), inputs=[import_path, import_id], outputs=[status, models, model]
    )
    return ModelsPanel(
        models, model, refresh, download, unload, status, import_path, import_id, import_button
    )

