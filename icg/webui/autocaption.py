"""Caption files written beside every generated image when the setting is on (``on_image_saved``)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from icg.errors import IcgError
from icg.webui import host
from icg.webui.service import WebUIService, get_service
from icg.webui.settings import Settings

logger = logging.getLogger(__name__)

AUTOCAPTION_QUEUE = 256
AUTOCAPTION_CHUNK = 16  # images captioned per hold of the queue lock


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
        service = get_service()
        with service.snapshot() as settings:
            if self._clashes_with_parameter_files(settings):
                return
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

        txt = normalise_extension(settings.sidecar_extension) == ".txt"
        clash = txt and bool(host.opt("save_txt", False))
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
    grids = [host.opt(k, "") for k in ("outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids")]
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

