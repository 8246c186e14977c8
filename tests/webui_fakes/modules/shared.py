"""Fake ``modules.shared`` (1.10): ``opts``, ``cmd_opts``, ``state``, ``total_tqdm`` and the re-exports.

``reset(**flags)`` rebuilds them; ``flags`` use the attribute names of ``cmd_opts`` (``no_half=True``,
``api_auth="u:p"``, ``hide_ui_dir_config=True``, ``use_cpu=["interrogate"]``, ``icg_models_dir=...``).
"""

from __future__ import annotations

import argparse
import os

from modules import options, shared_state, shared_total_tqdm
from modules.paths_internal import data_path, default_output_dir, models_path, script_path  # noqa: F401

OptionInfo = options.OptionInfo
options_section = options.options_section

DEFAULT_FLAGS = {
    "no_half": False,
    "no_half_vae": False,
    "precision": "autocast",
    "lowvram": False,
    "medvram": False,
    "medvram_sdxl": False,
    "use_cpu": [],
    "api": False,
    "nowebui": False,
    "api_auth": None,
    "api_log": False,
    "hide_ui_dir_config": False,
    "freeze_settings": False,
    "disable_console_progressbars": False,
    "device_id": None,
    "data_dir": data_path,
    "clip_models_path": None,  # where Interrogate CLIP keeps ViT-L-14.pt (None: ~/.cache/clip)
    # preload.py of the extension adds these
    "icg_models_dir": None,
    "icg_offline": False,
}

cmd_opts = argparse.Namespace(**DEFAULT_FLAGS)
hide_dirs = {"visible": True}
demo = None
state = shared_state.State()
total_tqdm = shared_total_tqdm.TotalTQDM()
restricted_opts: set[str] = set()
opts = None
sd_model = None


def _builtin_options() -> dict:
    return {
        "outdir_samples": OptionInfo("", "Output directory for images"),
        "outdir_txt2img_samples": OptionInfo(os.path.join(default_output_dir, "txt2img-images"), "txt2img"),
        "outdir_img2img_samples": OptionInfo(os.path.join(default_output_dir, "img2img-images"), "img2img"),
        "outdir_extras_samples": OptionInfo(os.path.join(default_output_dir, "extras-images"), "extras"),
        "interrogate_keep_models_in_memory": OptionInfo(False, "Keep models in VRAM"),
        "multiple_tqdm": OptionInfo(True, "Add a second progress bar to the console"),
        "send_size": OptionInfo(True, "Send size when sending prompt or image to another interface"),
    }


def reset(**flags) -> None:
    global cmd_opts, hide_dirs, state, total_tqdm, restricted_opts, opts, demo
    unknown = set(flags) - set(DEFAULT_FLAGS)
    if unknown:
        raise TypeError(f"unknown WebUI flags: {sorted(unknown)}")
    cmd_opts = argparse.Namespace(**{**DEFAULT_FLAGS, **flags})
    hide_dirs = {"visible": not cmd_opts.hide_ui_dir_config}
    state = shared_state.State()
    total_tqdm = shared_total_tqdm.TotalTQDM()
    restricted_opts = {"outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples"}
    opts = options.Options(_builtin_options(), restricted_opts)
    demo = None


reset()
