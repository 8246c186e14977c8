"""A test double of the Stable Diffusion WebUI's ``modules`` package (see tests/webui_fakes/README.md)."""

from __future__ import annotations


def reset(**cmd_opts) -> None:
    """A fresh WebUI: no callbacks, default settings, idle state, ``cmd_opts`` overriding the defaults."""
    from modules import call_queue, devices, infotext_utils, lowvram, script_callbacks, scripts, shared

    script_callbacks.clear_callbacks()
    infotext_utils.reset()
    shared.reset(**cmd_opts)
    devices.reset()
    lowvram.reset()
    call_queue.reset()
    scripts.reset()
