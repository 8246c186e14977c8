"""Caption files written beside every generated image when the setting is on (``on_image_saved``)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from icg import jobs
from icg.errors import IcgError
from icg.webui import host
from icg.webui.service import WebUIService, get_service
from icg.webui.settings import Settings

logger = logging.getLogger(__name__)

AUTOCAPTION_QUEUE = 256
AUTOCAPTION_CHUNK = 16  # images captioned per hold of the queue lock
KIND = "autocaption"


class AutoCaptioner:
    """Writes a caption file beside each saved image, as jobs of kind "autocaption" in the process's job
    registry (``icg.jobs``), beside the Batch tab's and the API's batches.

    ``on_image_saved`` only hands the file name over (the image is already on disk), so generation is
    never slowed by more than the captioning itself, which waits for the WebUI's queue lock (that is, for
    the generation to finish). At most ``maxsize`` images wait: beyond that they are skipped with a
    warning. Each job captions up to ``AUTOCAPTION_CHUNK`` images under one hold of the lock and records
    what it wrote and what failed on itself (bounded, like every job of the registry).
    """

    def __init__(self, registry: jobs.JobRegistry | None = None, maxsize: int = AUTOCAPTION_QUEUE) -> None:
        self.feed = jobs.Feed(
            registry if registry is not None else jobs.registry(),
            KIND,
            self._caption_all,
            maxsize=maxsize,
            chunk=AUTOCAPTION_CHUNK,
            label="images the WebUI saved",
        )
        self._warned_txt = False

    def submit(self, filename: str) -> bool:
        if not self.feed.submit(filename):
            logger.warning("Image Caption: auto-caption queue full; %s not captioned", filename)
            return False
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over so far is done; True when it is."""
        return self.feed.join(timeout)

    def jobs(self) -> list[jobs.Job]:
        """The recent auto-caption jobs, oldest first."""
        return self.feed.jobs()

    def _caption_all(self, job: jobs.Job, names: Sequence[str]) -> dict[str, Any]:
        """One job (the queue lock, the settings read and the models loaded once) for ``names``."""
        written = failed = 0
        service = get_service()
        with service.snapshot() as settings:
            if self._clashes_with_parameter_files(settings):
                return {"images": len(names), "written": 0, "failed": 0, "skipped": len(names)}
            model = settings.model_for(settings.autocaption_model)
            with service.job(KIND, track_state=False):
                for done, name in enumerate(names, 1):
                    if job.should_stop():
                        break
                    try:
                        sidecar, action = self.caption(service, settings, model, name)
                    except IcgError as err:
                        failed += 1
                        job.add_result({"key": name, "action": "failed", "error": str(err)})
                        logger.warning("Image Caption: no caption for %s: %s", name, err)
                    else:
                        written += action != "skip"
                        job.add_result({"key": name, "action": action, "sidecar": sidecar})
                    job.progress(done, len(names), failed=failed, current=name)
        return {"images": len(names), "written": written, "failed": failed, "skipped": 0}

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

    def caption(
        self, service: WebUIService, settings: Settings, model: str, filename: str
    ) -> tuple[str, str]:
        """Caption ``filename`` into its caption file: ``(caption file, what was done)``."""
        from icg.sinks import sidecar_path, write_sidecar

        sidecar = sidecar_path(filename, extension=settings.sidecar_extension)
        result = service.caption_in_job(filename, model)
        text = settings.template_obj().compose(result.caption, [k.text for k in result.keywords])
        return str(sidecar), write_sidecar(sidecar, text, settings.sidecar_policy)


_AUTOCAPTIONER: AutoCaptioner | None = None
_AUTOCAPTIONER_LOCK = threading.Lock()


def autocaptioner() -> AutoCaptioner:
    global _AUTOCAPTIONER
    with _AUTOCAPTIONER_LOCK:
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

