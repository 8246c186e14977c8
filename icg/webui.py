"""The WebUI adapter: the only ``icg`` module that imports the Stable Diffusion WebUI's ``modules``.

``scripts/icg_tab.py`` and ``scripts/icg_img2img.py`` register the callbacks defined here; everything else
is the library. What this module adds to the WebUI (AUTOMATIC1111 1.10.x; Forge):

* a tab "Image Caption" (``on_ui_tabs``): the Caption and Batch panels of ``icg.ui``, a Models panel
  (installed or missing, size, Download, Unload) and Send-to buttons (txt2img, img2img, inpaint) that
  go through the WebUI's own ``infotext_utils`` (``generation_parameters_copypaste`` before 1.7), plus
  Append buttons that add the prompt to the txt2img/img2img prompt instead of replacing it;
* a caption button beside img2img's built-in interrogate buttons (``Img2ImgCaptionScript``);
* a settings section "Image Caption" (``on_ui_settings``, keys ``icg_*``);
* the HTTP API ``/icg/v1`` (``on_app_started``; needs ``--api`` like the WebUI's own API);
* captions written beside every generated image when the setting is on (``on_image_saved``).

Host etiquette, as the built-in interrogator does it: models run on ``devices.device_interrogate``
(``--use-cpu interrogate`` honoured), in fp32 under ``--no-half``; every job holds the WebUI's
``queue_lock`` (so captioning never runs beside image generation); under ``--lowvram``/``--medvram`` the
WebUI's models are moved off the GPU first (``lowvram.send_everything_to_cpu``) and ours after; our models
go to the CPU after each job unless "keep models in memory" is set; ``devices.torch_gc()`` follows.
Tab and API jobs are ``shared.state`` jobs (progress bar, Interrupt and Skip) that end in ``finally``.

Every WebUI module is imported when it is used, through ``_webui`` (missing modules -> ``None``), so
Forge's differences degrade to fallbacks instead of import errors.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.errors import ConfigError, IcgError
from icg.options import DEFAULT_MODEL, DEFAULT_TEMPLATE
from icg.prompt import MERGE_MODES, PromptTemplate, merge_prompt
from icg.sinks import SIDECAR_POLICIES
from icg.ui.service import CaptionService, UiDefaults

logger = logging.getLogger(__name__)

TAB_TITLE = "Image Caption"
TAB_ID = "icg"
SECTION = ("icg", "Image Caption")
SETTINGS_CATEGORY = "postprocessing"  # where the WebUI files its own "Interrogate" section
DEFAULT_CHOICE = "default"  # the img2img / auto-caption model setting: "use the default model"
STRATEGY_DEFAULT = "model default"
STRATEGIES = (STRATEGY_DEFAULT, "greedy", "beam", "sample")
IMG2IMG_BUTTON_ID = "icg_img2img_caption"
#: img2img's image inputs, in the order of its mode tabs (img2img, Sketch, Inpaint, Inpaint sketch,
#: Inpaint upload); the built-in interrogate buttons read the same ones.
IMG2IMG_IMAGE_IDS = ("img2img_image", "img2img_sketch", "img2maskimg", "inpaint_sketch", "img_inpaint_base")
PROMPT_IDS = ("txt2img_prompt", "img2img_prompt")
SEND_LABELS = {
    "txt2img": "Send prompt to txt2img",
    "img2img": "Send image and prompt to img2img",
    "inpaint": "Send image and prompt to inpaint",
}
AUTOCAPTION_QUEUE = 256
AUTOCAPTION_CHUNK = 16  # images captioned per hold of the queue lock


# ------------------------------------------------------------------------------------------ host access
def _webui(name: str) -> Any:
    """``modules.<name>``, or None where this WebUI (Forge, an older release) does not have it."""
    try:
        return importlib.import_module(f"modules.{name}")
    except ImportError:
        return None
    except Exception:  # a module that fails at import for its own reasons
        logger.debug("modules.%s could not be imported", name, exc_info=True)
        return None


def _shared() -> Any:
    return importlib.import_module("modules.shared")


def _flag(name: str, default: Any = None) -> Any:
    return getattr(getattr(_shared(), "cmd_opts", None), name, default)


def _opt(name: str, default: Any = None) -> Any:
    opts = getattr(_shared(), "opts", None)
    if opts is None:
        return default
    try:
        value = getattr(opts, name)
    except AttributeError:
        return default
    return default if value is None else value


def _lowvram() -> bool:
    return bool(_flag("lowvram") or _flag("medvram"))


def _hide_dirs() -> bool:
    return bool(_flag("hide_ui_dir_config"))


def _offline() -> bool:
    return bool(_flag("icg_offline")) or _env_true("ICG_OFFLINE")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _torch_gc() -> None:
    devices = _webui("devices")
    if devices is not None and hasattr(devices, "torch_gc"):
        devices.torch_gc()


def _send_everything_to_cpu() -> None:
    """Move the WebUI's own models off the GPU (``--lowvram``/``--medvram``). Forge has no
    ``modules.lowvram`` (it manages memory itself): there only the cache is emptied."""
    lowvram = _webui("lowvram")
    if lowvram is not None and hasattr(lowvram, "send_everything_to_cpu"):
        lowvram.send_everything_to_cpu()
    _torch_gc()


class HostLock:
    """The WebUI's ``queue_lock`` (a plain ``threading.Lock``) made safe to take again in the thread that
    holds it: the API takes it around a request and the service around its job, without deadlocking.
    Other threads (image generation) still wait for it. Without a WebUI queue lock it is a private one."""

    def __init__(self, provider: Callable[[], Any] | None = None) -> None:
        self._provider = provider or _queue_lock
        self._local = threading.local()

    def __enter__(self) -> HostLock:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            lock = self._provider()
            lock.acquire()
            self._local.lock = lock
        self._local.depth = depth + 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            lock, self._local.lock = self._local.lock, None
            lock.release()

    @property
    def held_here(self) -> bool:
        return getattr(self._local, "depth", 0) > 0


_PRIVATE_LOCK = threading.Lock()


def _queue_lock() -> Any:
    call_queue = _webui("call_queue")
    return getattr(call_queue, "queue_lock", None) or _PRIVATE_LOCK


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """The ``icg_*`` settings, read from ``shared.opts`` at the moment of use."""

    default_model: str = DEFAULT_MODEL
    img2img_model: str = DEFAULT_CHOICE
    strategy: str = STRATEGY_DEFAULT
    num_beams: int = 5
    max_new_tokens: int = 0
    num_candidates: int = 5
    seed: int = -1
    template: str = DEFAULT_TEMPLATE
    prefix: str = ""
    suffix: str = ""
    prompt_mode: str = "replace"
    sidecar_policy: str = "skip"
    sidecar_extension: str = ".txt"
    keep_models_in_memory: bool = False
    models_dir: str = ""
    allow_download: bool = True
    autocaption: bool = False
    autocaption_model: str = DEFAULT_CHOICE

    @classmethod
    def read(cls) -> Settings:
        import dataclasses

        values = {}
        for f in dataclasses.fields(cls):
            value = _opt(f"icg_{f.name}", f.default)
            if isinstance(f.default, bool):
                value = bool(value)
            elif isinstance(f.default, int):
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    value = f.default
            else:
                value = str(value).strip() if value is not None else f.default
            values[f.name] = value
        return cls(**values)

    def model_for(self, choice: str) -> str:
        return self.default_model if not choice or choice == DEFAULT_CHOICE else choice

    def decoding_overrides(self) -> dict[str, Any]:
        """Decoding defaults from the settings (empty where the model's own defaults apply)."""
        out: dict[str, Any] = {"num_samples": max(1, self.num_candidates)}
        if self.strategy in STRATEGIES[1:]:
            out["strategy"] = self.strategy
            if self.strategy == "beam":
                out["num_beams"] = max(1, self.num_beams)
        if self.max_new_tokens > 0:
            out["max_new_tokens"] = self.max_new_tokens
        if self.seed >= 0:
            out["seed"] = self.seed
        return out

    def template_obj(self) -> PromptTemplate:
        try:
            return PromptTemplate(
                template=self.template or "{caption}", prefix=self.prefix, suffix=self.suffix
            )
        except ConfigError as err:
            logger.warning("the prompt template setting is invalid (%s); using the default", err)
            return PromptTemplate(prefix=self.prefix, suffix=self.suffix)


def _model_choices() -> list[str]:
    try:
        return get_service().model_choices()
    except Exception:  # settings must render even when the models folder is unreadable
        logger.warning("could not list the models", exc_info=True)
        return [DEFAULT_MODEL]


def on_ui_settings() -> None:
    """The "Image Caption" settings section (``on_ui_settings`` callback)."""
    import gradio as gr

    shared = _shared()
    option = shared.OptionInfo
    takes_category = "category_id" in inspect.signature(option.__init__).parameters

    def info(default, label, component=None, component_args=None, **kwargs):
        item = option(default, label, component, component_args, section=SECTION, **kwargs)
        if takes_category:
            item.category_id = SETTINGS_CATEGORY
        return item

    def model_args():
        return {"choices": _model_choices()}

    def model_or_default_args():
        return {"choices": [DEFAULT_CHOICE, *_model_choices()]}

    hide_dirs = dict(getattr(shared, "hide_dirs", None) or {"visible": not _hide_dirs()})
    items = {
        "icg_default_model": info(
            DEFAULT_MODEL, "Default captioning model", gr.Dropdown, model_args, refresh=_refresh_models
        ),
        "icg_img2img_model": info(
            DEFAULT_CHOICE, "Model of the img2img caption button", gr.Dropdown, model_or_default_args
        ),
        "icg_strategy": info(STRATEGY_DEFAULT, "Decoding strategy", gr.Radio, {"choices": list(STRATEGIES)}),
        "icg_num_beams": info(5, "Beams (beam search)", gr.Slider, {"minimum": 1, "maximum": 10, "step": 1}),
        "icg_max_new_tokens": info(
            0,
            "Longest caption in tokens (0: the model's default)",
            gr.Slider,
            {"minimum": 0, "maximum": 128, "step": 1},
        ),
        "icg_num_candidates": info(
            5, "Candidates to write and re-rank (SBG)", gr.Slider, {"minimum": 1, "maximum": 16, "step": 1}
        ),
        "icg_seed": info(-1, "Seed for sampling (-1: random)", gr.Number, {"precision": 0}),
        "icg_template": info(DEFAULT_TEMPLATE, "Prompt template: {prefix} {caption} {keywords} {suffix}"),
        "icg_prefix": info("", "Prompt prefix (e.g. a LoRA trigger word)"),
        "icg_suffix": info("", "Prompt suffix"),
        "icg_prompt_mode": info(
            "replace", "img2img caption button: the prompt box is", gr.Radio, {"choices": list(MERGE_MODES)}
        ),
        "icg_sidecar_policy": info(
            "skip",
            "Existing caption files (batch, auto-caption)",
            gr.Radio,
            {"choices": list(SIDECAR_POLICIES)},
        ),
        "icg_sidecar_extension": info(".txt", "Caption file extension"),
        "icg_keep_models_in_memory": info(
            False, "Keep the models on the GPU between jobs (else moved to RAM after each, like Interrogate)"
        ),
        "icg_models_dir": info(
            "", "Models folder (empty: <models>/icg; --icg-models-dir wins)", component_args=hide_dirs
        ),
        "icg_allow_download": info(True, "Download missing models when they are first used"),
        "icg_autocaption": info(False, "Write a caption file beside every generated image"),
        "icg_autocaption_model": info(
            DEFAULT_CHOICE, "Model for those caption files", gr.Dropdown, model_or_default_args
        ),
    }
    if callable(getattr(items["icg_autocaption"], "info", None)):
        items["icg_autocaption"].info(
            "after each generation, in the background; uses the caption file settings"
        )
        items["icg_models_dir"].info("one folder per model id; files can be copied there by hand")
    restricted = getattr(shared, "restricted_opts", None)
    if isinstance(restricted, set):
        restricted.add(
            "icg_models_dir"
        )  # a folder setting, locked like the WebUI's own by --hide-ui-dir-config
    for key, item in items.items():
        shared.opts.add_option(key, item)


def _refresh_models() -> None:
    """The settings' refresh button: the choices are listed afresh from the folder each time."""


# ------------------------------------------------------------------------------------------ the service
class WebUIService(CaptionService):
    """The library's ``CaptionService`` with the WebUI's job discipline around every piece of model work."""

    def __init__(self, manager: Any, *, models: tuple[str, ...] = (), lock: HostLock | None = None) -> None:
        super().__init__(manager, models=models)
        self.lock = lock or HostLock()

    # ---------------------------------------------------------------- settings-driven parts
    def default_model(self) -> str:
        return Settings.read().default_model or super().default_model()

    def model_choices(self) -> list[str]:
        return list(dict.fromkeys([self.default_model(), *super().model_choices()]))

    def prompt_template(self) -> PromptTemplate:
        return Settings.read().template_obj()

    def batch_defaults(self) -> dict[str, Any]:
        settings = Settings.read()
        return {
            "policy": settings.sidecar_policy,
            "sidecar_extension": settings.sidecar_extension,
            "decoding": settings.decoding_overrides(),
        }

    def overrides(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The settings' decoding defaults with ``given`` (a request, the panel) on top."""
        return {**Settings.read().decoding_overrides(), **(given or {})}

    # ---------------------------------------------------------------- jobs
    @contextlib.contextmanager
    def job(self, name: str, *, track_state: bool = True) -> Iterator[Any]:
        """One piece of model work: the queue lock, lowvram etiquette, a ``shared.state`` job, and the
        models offloaded afterwards (unless kept in memory). Everything is undone in ``finally``."""
        with self.lock:
            state = getattr(_shared(), "state", None) if track_state else None
            if state is not None:
                state.begin(job=f"icg-{name}")
            try:
                refresh_manager(self)
                if _lowvram():
                    _send_everything_to_cpu()
                yield state
            finally:
                try:
                    self.after_job()
                finally:
                    if state is not None:
                        state.end()

    def after_job(self) -> None:
        keep = Settings.read().keep_models_in_memory and not _lowvram()
        if not keep:
            try:
                self.manager.offload()
            except Exception:  # never let clean-up hide the job's own outcome
                logger.warning("could not move the caption models to RAM", exc_info=True)
        _torch_gc()

    def caption(self, image: Any, model: str, overrides: dict[str, Any] | None = None, options=None):
        with self.job("caption"):
            return super().caption(image, model, self.overrides(overrides), options)

    def caption_keywords(self, keywords, model, overrides=None, options=None, image=None):
        with self.job("caption"):
            return super().caption_keywords(keywords, model, self.overrides(overrides), options, image=image)

    def run_batch(self, options, *, on_progress=None, should_stop=None, on_result=None):
        with self.job("batch") as state:
            progress = _StateProgress(state)

            def progress_cb(done: int, total: int, info: dict[str, Any] | None = None) -> None:
                progress.update(done, total, info or {})
                if on_progress is not None:
                    on_progress(done, total, info or {})

            def stop_cb() -> bool:
                return bool((should_stop is not None and should_stop()) or progress.stop_requested())

            try:
                return super().run_batch(
                    options, on_progress=progress_cb, should_stop=stop_cb, on_result=on_result
                )
            finally:
                progress.close()

    def unload(self) -> None:
        with self.lock:
            self.manager.unload()
            _torch_gc()

    def caption_in_job(self, image: Any, model: str) -> Any:
        """Caption inside a ``job()`` the caller already holds (the auto-caption worker runs several)."""
        return super().caption(image, model, self.overrides(None))


class _StateProgress:
    """Mirrors a batch's progress into ``shared.state`` (the WebUI's progress bar) and ``total_tqdm``."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.tqdm = getattr(_shared(), "total_tqdm", None)
        self.last = 0

    def update(self, done: int, total: int, info: dict[str, Any]) -> None:
        state = self.state
        if state is not None:
            state.job_count = total
            state.job_no = done
            state.textinfo = f"Image Caption: {done}/{total} images"
        if self.tqdm is not None and not _flag("disable_console_progressbars"):
            with contextlib.suppress(Exception):
                if self.last == 0 and hasattr(self.tqdm, "updateTotal"):
                    self.tqdm.updateTotal(total)
                for _ in range(max(0, done - self.last)):
                    self.tqdm.update()
        self.last = max(self.last, done)

    def stop_requested(self) -> bool:
        """Interrupt stops the batch; Skip skips the rest of this job (a batch has no "current image"
        to skip: its images are captioned together)."""
        state = self.state
        if state is None:
            return False
        return bool(state.interrupted or state.skipped or getattr(state, "stopping_generation", False))

    def close(self) -> None:
        if self.tqdm is not None:
            with contextlib.suppress(Exception):
                self.tqdm.clear()


_SERVICE: WebUIService | None = None
_SERVICE_LOCK = threading.Lock()


def runtime_config() -> Any:
    """The ``RuntimeConfig`` the WebUI's flags and settings ask for."""
    from icg.models.manager import RuntimeConfig

    settings = Settings.read()
    devices = _webui("devices")
    device = getattr(devices, "device_interrogate", None) if devices is not None else None
    if device is None and devices is not None and hasattr(devices, "get_device_for"):
        device = devices.get_device_for("interrogate")
    dtype = "float32" if (_flag("no_half") or _flag("precision") == "full") else "auto"
    return RuntimeConfig(
        device=str(device) if device is not None else "auto",
        dtype=dtype,
        models_dir=str(models_root(settings)),
        allow_download=settings.allow_download and not _offline(),
    )


def models_root(settings: Settings | None = None) -> Path:
    """``--icg-models-dir`` > the models folder setting > ``<WebUI models folder>/icg``."""
    settings = settings or Settings.read()
    chosen = _flag("icg_models_dir") or settings.models_dir
    if chosen:
        return Path(chosen).expanduser()
    paths = _webui("paths_internal") or _webui("paths")
    models_path = getattr(paths, "models_path", None) or getattr(_shared(), "models_path", None)
    return Path(models_path or os.path.join(os.getcwd(), "models")) / "icg"


def get_service() -> WebUIService:
    """The one service (and model manager) of this WebUI process."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            from icg.models.manager import ModelManager

            _SERVICE = WebUIService(ModelManager(runtime_config()))
        return _SERVICE


def get_manager() -> Any:
    return get_service().manager


def refresh_manager(service: WebUIService) -> None:
    """Replace the manager when the device, dtype, models folder or download setting changed (the old
    models are freed); other runtime fields (CLIP and tokenizer overrides) carry over."""
    import dataclasses

    from icg.models.manager import ModelManager

    current = service.manager.runtime
    wanted = runtime_config()
    changes = {
        name: getattr(wanted, name)
        for name in _HOST_RUNTIME_FIELDS
        if getattr(wanted, name) != getattr(current, name)
    }
    if not changes:
        return
    logger.info("Image Caption: %s changed; models reload on next use", ", ".join(sorted(changes)))
    old = service.manager
    with old.lock:
        old.unload()
    service.manager = ModelManager(dataclasses.replace(current, **changes), old.factories)


_HOST_RUNTIME_FIELDS = ("device", "dtype", "models_dir", "allow_download")


def reset_service() -> None:
    """Forget the service (tests; the WebUI's script reload keeps it)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is not None:
            with contextlib.suppress(Exception):
                _SERVICE.manager.unload()
        _SERVICE = None
    _COMPONENTS.clear()


def set_service(service: WebUIService) -> None:
    """Use ``service`` (tests pass one with fixture models)."""
    global _SERVICE
    with _SERVICE_LOCK:
        _SERVICE = service


# ------------------------------------------------------------------------------------------ components
_COMPONENTS: dict[str, Any] = {}


def on_after_component(component: Any, **kwargs: Any) -> None:
    """Remember the txt2img and img2img prompt boxes as the WebUI builds them (``on_after_component``)."""
    elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
    if elem_id in PROMPT_IDS:
        _COMPONENTS[elem_id] = component


def _js_kwargs(event: Callable[..., Any], code: str | None) -> dict[str, Any]:
    """``_js=`` on gradio 3.x, ``js=`` on 4+ (Forge maps one to the other; plain gradio does not)."""
    if code is None:
        return {}
    try:
        params = inspect.signature(event).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {"_js": code}
    if "js" in params:
        return {"js": code}
    if "_js" in params:
        return {"_js": code}
    return {}


def _guarded_js(function: str, *args: str, fallback: str) -> str:
    """JavaScript that calls ``function`` when javascript/icg.js (or the WebUI's ui.js) defined it, and
    otherwise returns ``fallback``: the page keeps working without the script."""
    call_args = ", ".join(args)
    return f"(...a) => (typeof {function} === 'function' ? {function}({call_args}) : {fallback})"


# ------------------------------------------------------------------------------------------ tab
def default_output_folder() -> str:
    """The WebUI's output folder: the samples folder when set, else the folder above txt2img's."""
    samples = str(_opt("outdir_samples", "") or "").strip()
    if samples:
        return samples
    folders = [str(_opt(k, "") or "") for k in ("outdir_txt2img_samples", "outdir_img2img_samples")]
    folders = [f for f in folders if f]
    if len(folders) == 2:
        with contextlib.suppress(ValueError):
            common = os.path.commonpath([os.path.abspath(f) for f in folders])
            if common and common != os.path.abspath(os.sep):
                return common
    if folders:
        return folders[0]
    return os.path.join(getattr(_webui("paths_internal"), "data_path", os.getcwd()), "outputs")


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
        sidecar_policy=settings.sidecar_policy,
        recursive=True,
        allow_folders=not _hide_dirs(),
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

    from icg.ui.panels import IcgPanels, build_batch_panel, build_caption_panel

    service = service or get_service()
    defaults = ui_defaults()
    with gr.Blocks(analytics_enabled=False) as blocks, gr.Tabs(elem_id="icg_tabs"):
        with gr.Tab("Caption", elem_id="icg_tab_caption"):
            caption = build_caption_panel(service, defaults)
            with gr.Row(elem_id="icg_send_row"):
                send = add_send_buttons(caption)
                append = add_append_buttons(caption)
        with gr.Tab("Batch", elem_id="icg_tab_batch"):
            batch = build_batch_panel(service, defaults)
        with gr.Tab("Models", elem_id="icg_tab_models"):
            models = build_models_panel(service)
    panels = IcgPanels(caption=caption, batch=batch, service=service)
    return TabParts(blocks=blocks, panels=panels, models=models, send_buttons=send, append_buttons=append)


def _paste_module() -> Any:
    return _webui("infotext_utils") or _webui("generation_parameters_copypaste")


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
        insert = _guarded_js("icgInsertAtCursor", f"'{tab}'", "a[0]", "a[1]", fallback="a")
        button.click(
            append_prompt,
            inputs=[target, caption.prompt],
            outputs=[target],
            **_js_kwargs(button.click, insert),
        )
        switch = _guarded_js(f"switch_to_{tab}", fallback="[]")
        button.click(None, inputs=[], outputs=[], **_js_kwargs(button.click, switch))
        buttons[tab] = button
    return buttons


# ------------------------------------------------------------------------------------------ models panel
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

    if _offline():
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
            choices = _model_choices()
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
        choices = _model_choices()
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


# ------------------------------------------------------------------------------------------ img2img button
def pick_image(tab_index: Any, *images: Any) -> Any:
    """The init image of img2img's current mode tab (the others as fallbacks), as a PIL image or None.

    Sketch and inpaint editors hand over dicts (gradio 3: ``{"image", "mask"}``; gradio 4:
    ``{"background", "layers", "composite"}``)."""
    try:
        index = int(tab_index)
    except (TypeError, ValueError):
        index = 0
    ordered = list(images)
    if 0 <= index < len(ordered):
        ordered = [ordered[index]] + ordered[:index] + ordered[index + 1 :]
    for image in ordered:
        if isinstance(image, dict):
            image = image.get("image") or image.get("composite") or image.get("background")
        if hasattr(image, "shape") and hasattr(image, "dtype"):  # a numpy image
            from PIL import Image

            image = Image.fromarray(image)
        if image is not None and not isinstance(image, str):
            return image
    return None


def img2img_caption(tab_index: Any, prompt: str, *images: Any) -> str:
    """The img2img button: caption the init image, merge the prompt into img2img's prompt box."""
    image = pick_image(tab_index, *images)
    if image is None:
        raise ConfigError("no init image: add one to img2img first")
    settings = Settings.read()
    service = get_service()
    model = settings.model_for(settings.img2img_model)
    result = service.caption(image, model)
    composed = settings.template_obj().compose(result.caption, [k.text for k in result.keywords])
    mode = settings.prompt_mode if settings.prompt_mode in MERGE_MODES else "replace"
    return merge_prompt(prompt or "", composed, mode)


def wire_img2img_button(button: Any, prompt: Any, images: list[Any]) -> None:
    """Connect the caption button: inputs (mode tab index, prompt, image components), output the prompt."""
    import gradio as gr

    from icg.ui.handlers import user_errors

    tab_index = gr.Number(value=0, visible=False, elem_id="icg_img2img_tab_index")
    js = (
        "(...a) => { a[0] = (typeof get_tab_index === 'function') ? get_tab_index('mode_img2img') : 0; "
        "return a; }"
    )
    button.click(
        user_errors(img2img_caption),
        inputs=[tab_index, prompt, *images],
        outputs=[prompt],
        **_js_kwargs(button.click, js),
    )


def img2img_script_class() -> type:
    """The ``scripts.Script`` that puts a caption button beside img2img's interrogate buttons.

    It watches img2img's components as they are built (``after_component``): right after the DeepBooru
    button it adds its own in the same tool row, and it collects the prompt box and the image inputs.
    In ``ui()`` (after all of them exist) it connects the button. Where the tool row was not found (a
    changed layout, Forge), the button goes into an "Image Caption" accordion among img2img's scripts.
    """
    import gradio as gr

    scripts = importlib.import_module("modules.scripts")

    class Img2ImgCaptionScript(scripts.Script):
        def __init__(self) -> None:
            super().__init__()
            self.button = None
            self.prompt = None
            self.images: dict[str, Any] = {}
            self.last_image_id: str | None = None
            self.wired = False

        def title(self) -> str:
            return "Image Caption"

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible if is_img2img else False

        def after_component(self, component: Any, **kwargs: Any) -> None:
            elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
            if not elem_id or elem_id == IMG2IMG_BUTTON_ID:
                return
            classes = kwargs.get("elem_classes") or getattr(component, "elem_classes", None) or []
            classes = [classes] if isinstance(classes, str) else list(classes)
            if elem_id == "img2img_prompt":
                self.prompt = component
            elif elem_id in IMG2IMG_IMAGE_IDS:
                self.images[elem_id] = component
                self.last_image_id = elem_id
            elif "logical_image_background" in classes and self.last_image_id:
                # Forge's canvas: the id names an HTML block; the picture is its "background" component
                self.images[self.last_image_id] = component
            elif elem_id == "deepbooru" and self.button is None:
                self.button = _tool_button()

        def ui(self, is_img2img: bool) -> list[Any]:
            if self.wired or not is_img2img:
                return []
            if self.prompt is None:  # no page being built (an API call) or an unknown layout
                return []
            if self.button is None:
                with gr.Accordion(TAB_TITLE, open=False, elem_id="icg_img2img_accordion"):
                    self.button = gr.Button(
                        "Caption the init image into the prompt", elem_id=IMG2IMG_BUTTON_ID
                    )
            images = [self.images[i] for i in IMG2IMG_IMAGE_IDS if i in self.images]
            if not images:
                logger.warning("Image Caption: img2img's image inputs were not found; the button is inactive")
                return []
            wire_img2img_button(self.button, self.prompt, images)
            self.wired = True
            return []

    return Img2ImgCaptionScript


def _tool_button() -> Any:
    import gradio as gr

    components = _webui("ui_components")
    tool = getattr(components, "ToolButton", None)
    if tool is not None:
        return tool("\U0001f58b", elem_id=IMG2IMG_BUTTON_ID)  # lower-left fountain pen
    return gr.Button("\U0001f58b", elem_id=IMG2IMG_BUTTON_ID, elem_classes=["tool"])


# ------------------------------------------------------------------------------------------ API
def on_app_started(demo: Any, app: Any) -> Any:
    """Mount ``/icg/v1`` (``on_app_started`` callback) when the WebUI serves its API (``--api`` or
    ``--nowebui``), with the same HTTP Basic credentials as the WebUI's API under ``--api-auth``."""
    if not (_flag("api") or _flag("nowebui")):
        logger.info("Image Caption: start the WebUI with --api to enable /icg/v1")
        return None
    from icg.api import basic_auth, mount_api, parse_credentials

    auth = None
    credentials = _flag("api_auth")
    if credentials:
        try:
            auth = basic_auth(parse_credentials(credentials))
        except ConfigError as err:
            logger.error("Image Caption: --api-auth is malformed (%s); /icg/v1 not mounted", err)
            return None
    service = get_service()
    return mount_api(
        app, service, auth=auth, queue_lock=service.lock, hide_dirs=_hide_dirs(), jobs=api_jobs()
    )


_JOBS: Any = None


def api_jobs() -> Any:
    """The API's batch jobs; kept across UI reloads (the WebUI mounts the routes again on a new app)."""
    global _JOBS
    if _JOBS is None:
        from icg.jobs import JobRegistry

        _JOBS = JobRegistry()
    return _JOBS


# ------------------------------------------------------------------------------------------ auto-caption
class AutoCaptioner:
    """Writes a caption file beside each saved image in one background thread.

    ``on_image_saved`` only queues the file name (the image is already on disk), so generation is never
    slowed by more than the captioning itself, which waits for the WebUI's queue lock (that is, for the
    generation to finish). The queue is bounded: when it is full, images are skipped with a warning.
    """

    def __init__(self, maxsize: int = AUTOCAPTION_QUEUE) -> None:
        self.queue: queue.Queue[str] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.written: list[str] = []
        self.errors: list[str] = []
        self._warned_txt = False

    def submit(self, filename: str) -> bool:
        try:
            self.queue.put_nowait(filename)
        except queue.Full:
            logger.warning("Image Caption: auto-caption queue full; %s not captioned", filename)
            return False
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="icg-autocaption", daemon=True)
                self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is done (tests); True when it is."""
        done = threading.Event()

        def wait() -> None:
            self.queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            names = [self.queue.get()]
            while len(names) < AUTOCAPTION_CHUNK:
                try:
                    names.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._caption_all(names)
            except Exception as err:  # the job itself failed (e.g. the model): report, keep the worker
                self.errors.extend(f"{name}: {err}" for name in names)
                logger.warning(
                    "Image Caption: auto-caption failed: %s", err, exc_info=not isinstance(err, IcgError)
                )
            finally:
                for _ in names:
                    self.queue.task_done()

    def _caption_all(self, names: list[str]) -> None:
        """One job (the queue lock, the models loaded once) for up to ``AUTOCAPTION_CHUNK`` images."""
        settings = Settings.read()
        if self._clashes_with_parameter_files(settings):
            return
        service = get_service()
        model = settings.model_for(settings.autocaption_model)
        with service.job("autocaption", track_state=False):
            for name in names:
                try:
                    self.caption(service, settings, model, name)
                except IcgError as err:
                    self.errors.append(f"{name}: {err}")
                    logger.warning("Image Caption: no caption for %s: %s", name, err)

    def _clashes_with_parameter_files(self, settings: Settings) -> bool:
        from icg.sinks import normalise_extension

        clash = normalise_extension(settings.sidecar_extension) == ".txt" and bool(_opt("save_txt", False))
        if clash and not self._warned_txt:
            logger.warning(
                "Image Caption: the WebUI writes generation parameters to .txt files beside images "
                "(setting save_txt); choose another caption file extension for auto-captions"
            )
            self._warned_txt = True
        return clash

    def caption(self, service: WebUIService, settings: Settings, model: str, filename: str) -> str:
        from icg.sinks import sidecar_path, write_sidecar

        sidecar = sidecar_path(filename, extension=settings.sidecar_extension)
        result = service.caption_in_job(filename, model)
        text = settings.template_obj().compose(result.caption, [k.text for k in result.keywords])
        action = write_sidecar(sidecar, text, settings.sidecar_policy)
        if action != "skip":
            self.written.append(str(sidecar))
        return action


_AUTOCAPTIONER: AutoCaptioner | None = None


def autocaptioner() -> AutoCaptioner:
    global _AUTOCAPTIONER
    if _AUTOCAPTIONER is None:
        _AUTOCAPTIONER = AutoCaptioner()
    return _AUTOCAPTIONER


def _is_grid(filename: str) -> bool:
    folder = os.path.abspath(os.path.dirname(filename))
    grids = [_opt(k, "") for k in ("outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids")]
    in_grid_folder = any(g and os.path.abspath(str(g)) == folder for g in grids)
    return in_grid_folder or os.path.basename(filename).startswith("grid-")


def on_image_saved(params: Any) -> None:
    """``on_image_saved`` callback: queue a caption file for the saved image when the setting is on."""
    if not Settings.read().autocaption:
        return
    filename = getattr(params, "filename", None)
    if not filename or _is_grid(str(filename)):
        return
    autocaptioner().submit(os.path.abspath(str(filename)))


def on_script_unloaded() -> None:
    """Free the models when the WebUI reloads its scripts."""
    service = _SERVICE
    if service is not None:
        with contextlib.suppress(Exception):
            service.unload()
