"""Host access: the only module of ICG that imports the Stable Diffusion WebUI's ``modules``.

Every WebUI module is imported when it is used, through ``module`` (a missing module -> ``None``), so
Forge's differences and older releases degrade to fallbacks instead of import errors. Also here: the
WebUI's queue lock made re-entrant (``HostLock``), its flags and settings, its memory etiquette, and
the small JavaScript bridges of gradio events.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from icg.ui.compat import parameters

logger = logging.getLogger(__name__)


def module(name: str) -> Any:
    """``modules.<name>``, or None where this WebUI (Forge, an older release) does not have it."""
    try:
        return importlib.import_module(f"modules.{name}")
    except ImportError:
        return None
    except Exception:  # a module that fails at import for its own reasons
        logger.debug("modules.%s could not be imported", name, exc_info=True)
        return None


def shared() -> Any:
    return required("shared")


def required(name: str) -> Any:
    """``modules.<name>`` where the WebUI must have it (an ImportError outside the WebUI)."""
    return importlib.import_module(f"modules.{name}")


def flag(name: str, default: Any = None) -> Any:
    return getattr(getattr(shared(), "cmd_opts", None), name, default)


def opt(name: str, default: Any = None) -> Any:
    opts = getattr(shared(), "opts", None)
    if opts is None:
        return default
    try:
        value = getattr(opts, name)
    except AttributeError:
        return default
    return default if value is None else value


def lowvram() -> bool:
    return bool(flag("lowvram") or flag("medvram"))


def hide_dirs() -> bool:
    return bool(flag("hide_ui_dir_config"))


def offline() -> bool:
    return bool(flag("icg_offline")) or env_true("ICG_OFFLINE")


def clip_models_path() -> str | None:
    """The WebUI's ``--clip-models-path`` (where Interrogate CLIP keeps ``ViT-L-14.pt``), or None."""
    value = flag("clip_models_path")
    return str(value) if value else None


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def torch_gc() -> None:
    devices = module("devices")
    if devices is not None and hasattr(devices, "torch_gc"):
        devices.torch_gc()


def send_everything_to_cpu() -> None:
    """Move the WebUI's own models off the GPU (``--lowvram``/``--medvram``). Forge has no
    ``modules.lowvram`` (it manages memory itself): there only the cache is emptied."""
    lowvram = module("lowvram")
    if lowvram is not None and hasattr(lowvram, "send_everything_to_cpu"):
        lowvram.send_everything_to_cpu()
    torch_gc()


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
    call_queue = module("call_queue")
    return getattr(call_queue, "queue_lock", None) or _PRIVATE_LOCK



def js_kwargs(event: Callable[..., Any], code: str | None) -> dict[str, Any]:
    """``_js=`` on gradio 3.x, ``js=`` on 4+, whichever the listener ``event`` takes.

    Forge wraps every listener of every component in an ``EventWrapper`` (modules/gradio_extensions.py)
    whose ``__call__(*args, **kwargs)`` names neither and maps ``_js`` to ``js``: the listener it wraps
    (``replaced_event``, or a ``functools.wraps`` ``__wrapped__``) is asked instead. Without that, every
    JavaScript of ICG's buttons was dropped on Forge (the Append buttons did not switch tabs)."""
    if code is None:
        return {}
    for _ in range(8):  # a wrapper of a wrapper at most a few levels deep
        params = parameters(event)
        if "js" in params:
            return {"js": code}
        if "_js" in params:
            return {"_js": code}
        event = getattr(event, "replaced_event", None) or getattr(event, "__wrapped__", None)
        if event is None:
            break
    logger.debug("this gradio's event listeners take no JavaScript; the buttons work without it")
    return {}


def guarded_js(function: str, *args: str, fallback: str) -> str:
    """JavaScript that calls ``function`` when javascript/icg.js (or the WebUI's ui.js) defined it, and
    otherwise returns ``fallback``: the page keeps working without the script."""
    call_args = ", ".join(args)
    return f"(...a) => (typeof {function} === 'function' ? {function}({call_args}) : {fallback})"

