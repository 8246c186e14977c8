"""The tab's Models panel: every known model, installed or missing, Download and Unload."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.errors import ConfigError, IcgError
from icg.options import AS_THE_FILES_SAY, IMPORT
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
    upload: Any = None
    upload_button: Any = None
    import_clip: Any = None
    import_normalize: Any = None


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


def import_files(
    service: WebUIService, path: str, model_id: str, clip: Any = None, normalize: Any = None
) -> str:
    """Import the file or folder at ``path`` as ``model_id`` into the WebUI's models folder (what
    ``icg_import.py`` does from the command line); the status line. ``clip``/``normalize``: the
    ``icg.options.IMPORT`` answers (``import_options``)."""
    if host.hide_dirs():
        raise ConfigError(
            "Import: paths on the server cannot be typed under --hide-ui-dir-config; "
            "run icg_import.py on the server, or upload the files"
        )
    path, model_id = (path or "").strip().strip('"'), _model_id(model_id)
    if not path:
        raise ConfigError("Import: give the path of the file or folder to import")
    if not Path(path).expanduser().exists():
        raise ConfigError(f"Import: {path}: no such file or folder")
    return _install(service, [path], model_id, import_options(clip, normalize))


def import_options(clip: Any, normalize: Any) -> dict[str, Any]:
    """The Import rows' "trained on" answers as ``import_model`` keywords, checked by ``IMPORT``: an empty
    CLIP box or ``AS_THE_FILES_SAY`` leaves it to the files. Under ``--hide-ui-dir-config`` a CLIP folder
    on the server cannot be named (ARCH/PRETRAINED and model ids still can)."""
    clip = (clip or "").strip() if isinstance(clip, str) else clip
    values = {
        "clip": clip or None,
        "normalize": None if normalize in (None, "", AS_THE_FILES_SAY) else normalize,
    }
    options = IMPORT.check(values, "Import")
    named = options.get("clip")
    if named and host.hide_dirs() and Path(named).expanduser().is_dir():  # what --clip takes as a folder
        raise ConfigError(
            "Import: CLIP folders on the server cannot be named under --hide-ui-dir-config; "
            "give ARCH/PRETRAINED or a CLIP model id"
        )
    return options


#: The most an upload may hold in all: the largest model file ICG knows (CLIP ViT-L/14 in fp32, 1.7 GB)
#: with room to spare.
MAX_UPLOAD_BYTES = 8 * 1024**3


def upload_suffixes() -> tuple[str, ...]:
    """The file types an upload may have: what the kinds import (checkpoints and weights, configs and
    tokenizer files, the SBG vocabulary's pickles)."""
    from icg.captioners.prefix_kind import STATE_SUFFIXES

    return tuple(dict.fromkeys((*STATE_SUFFIXES, ".json", ".pkl", ".txt")))


def import_uploads(
    service: WebUIService, uploads: Any, model_id: str, clip: Any = None, normalize: Any = None
) -> str:
    """Import files uploaded through the panel (a ``gr.File`` value) as ``model_id``, through the same
    importer as ``icg import``; the status line. One file is imported as it is, several together as one
    folder (an SBG generator's config.json and model.safetensors, the vocabulary's two pickles). The
    uploads are checked first (type, size, free space), each problem one line; an existing model is
    never replaced. Works under ``--hide-ui-dir-config`` (nothing on the server is named)."""
    import shutil
    import tempfile

    from icg.models.download import format_size

    model_id = _model_id(model_id)
    options = import_options(clip, normalize)
    files = uploaded_files(uploads)
    if not files:
        raise ConfigError("Import: choose the file(s) to upload first")
    allowed = upload_suffixes()
    total = 0
    for path, name in files:
        if Path(name).suffix.lower() not in allowed:
            raise ConfigError(f"Import: {name}: not a model file (expected {', '.join(allowed)})")
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            raise ConfigError(f"Import: {name}: the upload is empty (or did not finish)")
        total += size
    if total > MAX_UPLOAD_BYTES:
        raise ConfigError(
            f"Import: the upload holds {format_size(total)}, more than an upload may hold "
            f"({format_size(MAX_UPLOAD_BYTES)}); copy the files into the models folder instead"
        )
    root = Path(service.manager.models_dir)
    free = shutil.disk_usage(_existing_parent(root)).free
    if free < total:
        raise ConfigError(
            f"Import: {root} has {format_size(free)} free; the model needs about {format_size(total)}"
        )
    with tempfile.TemporaryDirectory(prefix="icg-upload-") as staging:
        folder = Path(staging) / "upload"
        folder.mkdir()
        for path, name in files:
            _link_or_copy(path, folder / name)
        sources = [folder / files[0][1]] if len(files) == 1 else [folder]
        return _install(service, sources, model_id, options, staging=folder)


def uploaded_files(value: Any) -> list[tuple[Path, str]]:
    """``(path on the server, the file's own name)`` of each file of a ``gr.File`` value: gradio 3.41
    passes temporary files (``.name`` the path, ``.orig_name`` the user's name), gradio 4+ paths (str,
    named as the user's file), some releases dicts with ``path`` and ``orig_name``."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict):
            path, name = item.get("path") or item.get("name"), item.get("orig_name")
        elif isinstance(item, (str, Path)):
            path, name = item, None
        else:
            path, name = getattr(item, "name", None), getattr(item, "orig_name", None)
        if not path:
            continue
        name = Path(str(name or path)).name  # the name only: never a folder the client names
        if not name or name.startswith("."):
            raise ConfigError(f"Import: {name or path!r} is not a file name an import takes")
        out.append((Path(str(path)), name))
    names = [name for _, name in out]
    if len(set(names)) != len(names):
        raise ConfigError("Import: two uploaded files have the same name; upload each file once")
    return out


def _model_id(value: str | None) -> str:
    model_id = (value or "").strip()
    if not model_id:
        raise ConfigError("Import: give the model id to install it as")
    return model_id


def _install(
    service: WebUIService,
    sources: list[Any],
    model_id: str,
    options: dict[str, Any] | None = None,
    staging: Path | None = None,
) -> str:
    """``icg.models.importer.import_model`` into the service's models folder, never over a model."""
    from icg.models.importer import import_model
    from icg.models.paths import model_dir

    root = service.manager.models_dir
    dest = model_dir(model_id, root)
    if dest.is_dir() and any(dest.iterdir()):
        raise ConfigError(
            f"Import: {model_id} already exists in {root}; choose another id (nothing was replaced)"
        )
    try:
        result = import_model(sources, model_id, root, **(options or {}))
    except IcgError as err:
        worded = in_panel_words(str(err), staging)
        if worded == str(err):
            raise
        raise type(err)(worded) from None
    return f"imported {result.id} ({result.kind}) -> {result.folder}; {result.details}"


def in_panel_words(message: str, staging: Path | None = None) -> str:
    """The importer's message as the panel's user reads it: an uploaded file by its own name (not the
    server's staging folder), ``icg import``'s flags for the ``IMPORT`` options (``--clip``,
    ``--no-normalize``) as the Import row's fields."""
    if staging is not None:
        message = message.replace(f"{staging}{os.sep}", "").replace(str(staging), "the upload")
    for option in IMPORT:
        field = f'"{option.label}"'
        if option.type is bool:  # argparse's --no-FLAG first: it contains --FLAG
            message = message.replace(f"--no-{option.cli_flag[2:]}", f"{field}: no")
            message = message.replace(option.cli_flag, f"{field}: yes")
        else:
            message = message.replace(option.cli_flag, field)
    return message


def _link_or_copy(src: Path, dest: Path) -> None:
    import shutil

    try:
        os.link(src, dest)  # no second copy of gigabytes where the upload folder is on the same disk
    except OSError:
        shutil.copyfile(src, dest)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


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

    from icg.ui.handlers import listen
    from icg.ui.panels import option_control, watch_models_folder

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
        with gr.Row():
            upload = gr.File(
                label="Or upload the file(s) (several: imported together as one folder)",
                file_count="multiple",
                file_types=list(upload_suffixes()),
                scale=3,
                elem_id="icg_models_upload",
            )
            upload_button = gr.Button("Import upload", elem_id="icg_models_upload_import")
        with gr.Row():  # for a model of your own (a registry id brings its own facts)
            import_clip = option_control(IMPORT["clip"], None, "icg_models_import_clip", AS_THE_FILES_SAY)
            import_normalize = option_control(
                IMPORT["normalize"], None, "icg_models_import_normalize", AS_THE_FILES_SAY
            )
        status = gr.Textbox(label="Status", interactive=False, elem_id="icg_models_status")
        watch_models_folder(model, service)  # a model added while the WebUI runs shows up in the list

    def on_refresh():
        choices = model_choices()
        return models_table(service), gr.update(choices=choices)

    def on_download(model, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's idiom
        message = download_models(service, model, progress)
        return message, models_table(service)

    def on_import(path, model_id, clip, normalize):
        message = import_files(service, path, model_id, clip, normalize)
        return (message, *on_refresh())

    def on_upload(uploads, model_id, clip, normalize):
        message = import_uploads(service, uploads, model_id, clip, normalize)
        return (message, *on_refresh())

    def on_unload():
        service.unload()
        return "Models unloaded; memory returned.", models_table(service)

    listen(refresh.click, on_refresh, [], [models, model])
    if tab is not None:
        listen(tab.select, on_refresh, [], [models, model])
    listen(download.click, on_download, [model], [status, models])
    listen(unload.click, on_unload, [], [status, models])
    trained_on = [import_clip, import_normalize]
    listen(import_button.click, on_import, [import_path, import_id, *trained_on], [status, models, model])
    listen(upload_button.click, on_upload, [upload, import_id, *trained_on], [status, models, model])
    return ModelsPanel(
        models, model, refresh, download, unload, status, import_path, import_id, import_button,
        upload, upload_button, import_clip, import_normalize,
    )

