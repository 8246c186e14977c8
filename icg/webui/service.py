"""The WebUI's ``CaptionService``: every piece of model work as a WebUI job, and the one service of
the process (``get_service``) with its model manager, rebuilt when the device or folder settings change.

Host etiquette, as the built-in interrogator does it: models run on ``devices.device_interrogate``
(``--use-cpu interrogate`` honoured), in fp32 under ``--no-half``; every job holds the WebUI's
``queue_lock`` (so captioning never runs beside image generation); under ``--lowvram``/``--medvram`` the
WebUI's models are moved off the GPU first (``lowvram.send_everything_to_cpu``) and ours after; our models
go to the CPU after each job unless "keep models in memory" is set; ``devices.torch_gc()`` follows. On
the CPU a job runs with fewer torch threads (``icg.threads``: all but one from 4 threads up, or the
``icg_threads`` setting), so the WebUI's server threads keep a core.
Tab and API jobs are ``shared.state`` jobs (progress bar, Interrupt and Skip) that end in ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icg.prompt import PromptTemplate
from icg.ui.service import CaptionService
from icg.webui import host
from icg.webui.host import HostLock
from icg.webui.settings import Settings

logger = logging.getLogger(__name__)


class WebUIService(CaptionService):
    """The library's ``CaptionService`` with the WebUI's job discipline around every piece of model work.
    Like the API and the app it loads only the models it lists (``CaptionService.checked_model``), before
    anything is fetched: the tab's model box takes typed text, but a typed path is refused."""

    model_paths_hint = "import it in Image Caption > Models first"

    def __init__(self, manager: Any, *, models: tuple[str, ...] = (), lock: HostLock | None = None) -> None:
        super().__init__(manager, models=models)
        self.lock = lock or HostLock()
        self._local = threading.local()

    # ---------------------------------------------------------------- settings-driven parts
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Settings]:
        """Within the block (a request, a job) this thread sees one reading of the settings."""
        outer = getattr(self._local, "settings", None)
        if outer is not None:
            yield outer
            return
        self._local.settings = Settings.read()
        try:
            yield self._local.settings
        finally:
            self._local.settings = None

    def settings(self) -> Settings:
        """The block's reading of the settings (``snapshot``), or a fresh one outside any block."""
        return getattr(self._local, "settings", None) or Settings.read()

    def default_model(self) -> str:
        return self.settings().default_model or super().default_model()

    def model_choices(self) -> list[str]:
        return list(dict.fromkeys([self.default_model(), *super().model_choices()]))

    def prompt_template(self) -> PromptTemplate:
        return self.settings().template_obj()

    def batch_defaults(self) -> dict[str, Any]:
        settings = self.settings()
        return {
            "policy": settings.sidecar_policy,
            "sidecar_extension": settings.sidecar_extension,
            "decoding": settings.decoding_overrides(),
        }

    def upload_max_pixels(self) -> int:
        """The HTTP API's limit on an image, from the settings (``mount_api`` asks on each request)."""
        return self.settings().upload_max_pixels()

    def overrides(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The settings' decoding defaults with ``given`` (a request, the panel) on top."""
        return {**self.settings().decoding_overrides(), **(given or {})}

    # ---------------------------------------------------------------- jobs
    @contextlib.contextmanager
    def job(self, name: str, *, track_state: bool = True) -> Iterator[Any]:
        """One piece of model work: the queue lock, lowvram etiquette, a ``shared.state`` job, and the
        models offloaded afterwards (unless kept in memory). Everything is undone in ``finally``."""
        with self.lock, self.snapshot(), self.webui_messages():
            state = getattr(host.shared(), "state", None) if track_state else None
            if state is not None:
                state.begin(job=f"icg-{name}")
            try:
                refresh_manager(self)
                if host.lowvram():
                    host.send_everything_to_cpu()
                with self.cpu_threads():
                    yield state
            finally:
                try:
                    self.after_job()
                finally:
                    if state is not None:
                        state.end()

    @contextlib.contextmanager
    def cpu_threads(self) -> Iterator[None]:
        """Fewer torch threads around a job whose models run on the CPU (see ``icg.threads``)."""
        if getattr(self.manager.device, "type", None) != "cpu":
            yield
            return
        import torch

        from icg.threads import caption_threads, limited_threads

        wanted = caption_threads(self.settings().checked("threads"), torch.get_num_threads())
        with limited_threads(wanted):
            yield

    def after_job(self) -> None:
        keep = self.settings().keep_models_in_memory and not host.lowvram()
        if not keep:
            try:
                self.manager.offload()
            except Exception:  # never let clean-up hide the job's own outcome
                logger.warning("could not move the caption models to RAM", exc_info=True)
        host.torch_gc()

    def install(self, model: str) -> None:
        """Fetch and convert what ``model`` needs before a job, with no WebUI lock held: a first caption
        that downloads gigabytes never blocks image generation (only loading runs in the job)."""
        with self.snapshot(), self.webui_messages():
            refresh_manager(self)
            self.manager.install_for_use(self.checked_model(model))

    @contextlib.contextmanager
    def webui_messages(self) -> Iterator[None]:
        """An ``IcgError`` leaves with the text the WebUI shows (``launcher.webui_message``: the import
        command that works from the WebUI's folder, URLs on lines of their own)."""
        from icg.errors import IcgError
        from icg.webui.launcher import webui_message

        try:
            yield
        except IcgError as err:
            if len(err.args) == 1 and isinstance(err.args[0], str):
                err.args = (webui_message(err.args[0], self.manager.models_dir),)
            raise

    def caption(self, image: Any, model: str, overrides: dict[str, Any] | None = None, options=None):
        self.install(model)
        with self.job("caption"):
            return super().caption(image, model, self.overrides(overrides), options)

    def caption_keywords(self, keywords, model, overrides=None, options=None, image=None):
        self.install(model)
        with self.job("caption"):
            return super().caption_keywords(keywords, model, self.overrides(overrides), options, image=image)

    def run_batch(self, options, *, on_progress=None, should_stop=None, on_result=None, plan=None):
        self.install(options.model)
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
                    options, on_progress=progress_cb, should_stop=stop_cb, on_result=on_result, plan=plan
                )
            finally:
                progress.close()

    def unload(self) -> None:
        with self.lock:
            self.manager.unload()
            host.torch_gc()

    def caption_in_job(self, image: Any, model: str) -> Any:
        """Caption inside a ``job()`` the caller already holds (the auto-caption worker runs several)."""
        return super().caption(image, model, self.overrides(None))


class _StateProgress:
    """Mirrors a batch's progress into ``shared.state`` (the WebUI's progress bar) and ``total_tqdm``."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.tqdm = getattr(host.shared(), "total_tqdm", None)
        self.last = 0

    def update(self, done: int, total: int, info: dict[str, Any]) -> None:
        state = self.state
        if state is not None:
            state.job_count = total
            state.job_no = done
            state.textinfo = f"Image Caption: {done}/{total} images"
        if self.tqdm is not None and not host.flag("disable_console_progressbars"):
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


def runtime_config(settings: Settings | None = None) -> Any:
    """The ``RuntimeConfig`` the WebUI's flags and ``settings`` (default: read now) ask for."""
    from icg.models.manager import RuntimeConfig

    settings = settings or Settings.read()
    devices = host.module("devices")
    device = getattr(devices, "device_interrogate", None) if devices is not None else None
    if device is None and devices is not None and hasattr(devices, "get_device_for"):
        device = devices.get_device_for("interrogate")
    dtype = settings.checked("dtype")  # "auto": the WebUI's policy (fp32 under --no-half)
    if dtype == "auto" and (host.flag("no_half") or host.flag("precision") == "full"):
        dtype = "float32"
    return RuntimeConfig(
        device=str(device) if device is not None else "auto",
        dtype=dtype,
        models_dir=str(models_root(settings)),
        allow_download=settings.allow_download and not host.offline(),
        clip_dirs=tuple(filter(None, [host.clip_models_path()])),
    )


def models_root(settings: Settings | None = None) -> Path:
    """``--icg-models-dir`` > the models folder setting > ``<WebUI models folder>/icg``."""
    settings = settings or Settings.read()
    chosen = host.flag("icg_models_dir") or settings.models_dir
    if chosen:
        return Path(chosen).expanduser()
    paths = host.module("paths_internal") or host.module("paths")
    models_path = getattr(paths, "models_path", None) or getattr(host.shared(), "models_path", None)
    return Path(models_path or os.path.join(os.getcwd(), "models")) / "icg"


def get_service() -> WebUIService:
    """The one service (and model manager) of this WebUI process."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            from icg.models.manager import ModelManager

            _SERVICE = WebUIService(ModelManager(runtime_config()))
        return _SERVICE



def refresh_manager(service: WebUIService) -> None:
    """Replace the manager when the device, dtype, models folder or download setting changed (the old
    models are freed); other runtime fields (CLIP and tokenizer overrides) carry over."""
    import dataclasses

    from icg.models.manager import ModelManager

    current = service.manager.runtime
    wanted = runtime_config(service.settings())
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


def set_service(service: WebUIService) -> None:
    """Use ``service`` (tests pass one with fixture models)."""
    global _SERVICE
    with _SERVICE_LOCK:
        _SERVICE = service



def on_script_unloaded() -> None:
    """Free the models when the WebUI reloads its scripts."""
    service = _SERVICE
    if service is not None:
        with contextlib.suppress(Exception):
            service.unload()

