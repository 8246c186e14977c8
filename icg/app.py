"""The standalone app: the Caption and Batch panels of ``icg.ui`` in one Gradio page.

``create_app(manager, ...)`` builds the page (queue on) and ``serve(demo, host, port)`` starts gradio's
server and returns the local URL. ``python -m icg app`` (``icg.commands.app``) is the command line around
them. Public sharing links are deliberately not offered: the Batch tab reads and writes folders on this
machine, so the app is for the loopback interface or a trusted network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from icg.errors import ConfigError, IcgError
from icg.ui.service import CaptionService

logger = logging.getLogger(__name__)

TITLE = "Image Caption"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def require_gradio() -> Any:
    """The gradio module, or an ``IcgError`` that says how to install it."""
    try:
        import gradio
    except ImportError as err:
        raise IcgError(
            f"the app needs gradio, which is not installed here ({err}); install it with "
            "`pip install 'icg[app]'` (or `pip install gradio`)"
        ) from None
    return gradio


class AppService(CaptionService):
    """The app's ``CaptionService``: like the API, it loads only the models its lists offer (the
    ``--model`` ones, the registry's, the local model folders), whatever model name or path a client
    sends (``CaptionService.checked_model``); ``allow_model_paths`` (``icg app --allow-model-paths``) lets
    a typed path through as well."""

    model_paths_hint = "to load other paths, start the app with --allow-model-paths"


def create_app(
    manager: Any,
    *,
    models: Sequence[str] = (),
    default_model: str | None = None,
    defaults: Any = None,
    service: Any = None,
    title: str = TITLE,
    registry: Any = None,
    allow_model_paths: bool = False,
) -> tuple[Any, Any]:
    """``(demo, panels)``: a ``gr.Blocks`` with the Caption and Batch tabs for ``manager``'s models.

    ``models`` are offered first in the model lists (paths or ids); only listed models are loaded unless
    ``allow_model_paths`` (``AppService``); ``service`` replaces the default ``AppService(manager, ...)``;
    batches run in ``registry`` (default: the process's job registry, the one ``icg.api.mount_api`` uses
    too).
    """
    require_gradio()
    from icg.ui import build_app

    service = service or AppService(
        manager, models=models, default_model=default_model, allow_model_paths=allow_model_paths
    )
    return build_app(service, defaults, title=title, registry=registry)


def serve(
    demo: Any,
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    inbrowser: bool = False,
    block: bool = True,
) -> str:
    """Start the server of ``demo`` on ``host``:``port`` (None: the first free port from 7860) and
    return its local URL; with ``block`` wait until Ctrl-C, then close it."""
    from icg.ui.compat import launch_kwargs

    kwargs = launch_kwargs(
        demo,
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=inbrowser,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
    )
    try:
        launched = demo.launch(**kwargs)
    except OSError as err:
        where = f"{host}:{port}" if port else host
        raise ConfigError(f"cannot serve the app on {where}: {err}") from None
    url = launched[1] if isinstance(launched, tuple) and len(launched) > 1 else None
    url = url or getattr(demo, "local_url", None) or f"http://{host}:{port}/"
    if block:
        wait(demo)
    return url


def wait(demo: Any) -> None:
    """Block until Ctrl-C, then close the server."""
    try:
        demo.block_thread()
    except KeyboardInterrupt:  # pragma: no cover - block_thread handles it on current gradio
        pass
    finally:
        demo.close()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")
