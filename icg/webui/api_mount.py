"""The HTTP API ``/icg/v1`` on the WebUI's app (``on_app_started``)."""

from __future__ import annotations

import logging
from typing import Any

from icg.errors import ConfigError
from icg.webui import host
from icg.webui.service import get_service

logger = logging.getLogger(__name__)


def on_app_started(demo: Any, app: Any) -> Any:
    """Mount ``/icg/v1`` (``on_app_started`` callback) when the WebUI serves its API (``--api`` or
    ``--nowebui``), with the same HTTP Basic credentials as the WebUI's API under ``--api-auth``."""
    if not (host.flag("api") or host.flag("nowebui")):
        logger.info("Image Caption: start the WebUI with --api to enable /icg/v1")
        return None
    from icg.api import basic_auth, mount_api, parse_credentials

    auth = None
    credentials = host.flag("api_auth")
    if credentials:
        try:
            auth = basic_auth(parse_credentials(credentials))
        except ConfigError as err:
            logger.error("Image Caption: --api-auth is malformed (%s); /icg/v1 not mounted", err)
            return None
    from icg.jobs import registry

    service = get_service()
    # The process's job registry: API batches queue with the tab's batches and auto-captioning, and
    # outlive UI reloads (the WebUI mounts the routes again on a new app).
    return mount_api(
        app,
        service,
        auth=auth,
        queue_lock=service.lock,
        hide_dirs=host.hide_dirs(),
        jobs=registry(),
        max_pixels=service.upload_max_pixels,  # the setting, read on each request
    )
