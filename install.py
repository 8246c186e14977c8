"""Install ICG's missing dependencies and fetch its default weights.

Runs inside the Stable Diffusion WebUI (which executes it with ``import launch`` available) and
standalone (``python install.py``). It does nothing under ``--skip-install``; set ``ICG_SKIP_WEIGHTS=1``
to skip the weights. The weights are fetched and converted exactly as ``python -m icg download`` does
(``.pt`` checkpoints and the vocabulary pickles become safetensors + JSON; ``--icg-keep-original`` keeps
the originals; ``--icg-offline`` uses only files already on the machine). A CLIP another tool already
keeps (the WebUI's Interrogate CLIP in ``--clip-models-path`` or ``~/.cache/clip``, the Hugging Face
cache) is used instead of a second download, offline too. It never fails the WebUI's
startup: the exit status is 0, and default models that cannot be fetched (an offline machine, at every
start) get one short line naming them, with the hint to set ``ICG_SKIP_WEIGHTS=1`` or ``--icg-offline``.
The decisions live in ``icg.deps`` and ``icg.models.download``; this file only glues them together.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import traceback

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_MODELS = (
    "clip-prefix-flickr8k",
    "sbg-flickr8k",
    "sbg-vocabulary",
    "gpt2-tokenizer",
    "clip-vit-l-14-openai",
)
PREFIX = "[ICG]"


def say(message: str) -> None:
    """Print one line to the console (this is a script; the library only logs)."""
    print(f"{PREFIX} {message}", flush=True)  # noqa: T201


def get_launch():
    """The WebUI's ``launch`` module, or None when running standalone."""
    try:
        import launch
    except Exception:
        return None
    return launch


def skip_install(launch) -> bool:
    """True under ``--skip-install`` (command line or the WebUI's parsed arguments)."""
    if "--skip-install" in sys.argv:
        return True
    args = getattr(launch, "args", None) if launch is not None else None
    return bool(getattr(args, "skip_install", False))


def _flag_value(flag: str) -> str | None:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def install_dependencies(launch) -> None:
    """pip-install what ``icg.deps.plan`` reports missing; print its warnings."""
    from icg import deps

    installed = deps.installed_versions()
    if launch is not None and hasattr(launch, "is_installed"):
        for name, version in installed.items():  # metadata can miss what the WebUI sees: ask it too
            if version is None and launch.is_installed(deps.REQUIREMENTS[name].pip_name):
                installed[name] = ""
    plan = deps.plan(installed)
    for warning in plan.warnings:
        say(f"warning: {warning}")
    if plan.nothing_to_install:
        return
    say(f"installing {', '.join(plan.install)}")
    if launch is not None and hasattr(launch, "run_pip"):
        launch.run_pip(deps.run_pip_command(plan.install), "requirements for ICG (image caption)")
    else:
        subprocess.check_call(deps.pip_install_args(plan.install))
    importlib.invalidate_caches()  # let this process import what pip just installed


def webui_models_root(launch) -> str | None:
    """``<webui models path>/icg`` inside the WebUI (``--icg-models-dir`` wins); None standalone."""
    chosen = _flag_value("--icg-models-dir")
    if chosen:
        return chosen
    if launch is None:
        return None
    try:
        from modules.paths_internal import models_path
    except Exception:
        models_path = os.path.join(os.getcwd(), "models")
    return os.path.join(models_path, "icg")


def clip_dirs(launch) -> list[str]:
    """The WebUI's ``--clip-models-path`` (where its Interrogate CLIP keeps ``ViT-L-14.pt``), searched for
    a CLIP already on this machine before one is downloaded; [] when not set (``~/.cache/clip`` and the
    Hugging Face cache are always searched)."""
    chosen = _flag_value("--clip-models-path")
    if not chosen and launch is not None:
        chosen = getattr(getattr(launch, "args", None), "clip_models_path", None)
    return [chosen] if chosen else []


def fetch_weights(launch) -> None:
    """Download the default models unless ``ICG_SKIP_WEIGHTS=1``; print manual steps on failure."""
    if os.environ.get("ICG_SKIP_WEIGHTS", "").strip().lower() in ("1", "true", "yes", "on"):
        say("ICG_SKIP_WEIGHTS is set: not fetching model weights")
        return
    from icg.errors import IcgError
    from icg.models import download, paths

    root = paths.models_dir(webui_models_root(launch))
    offline = True if "--icg-offline" in sys.argv else None
    keep = "--icg-keep-original" in sys.argv
    try:
        download.download_models(
            DEFAULT_MODELS,
            root,
            offline=offline,
            progress=sys.stderr.isatty(),
            keep_original=keep,
            clip_dirs=clip_dirs(launch),
        )
    except IcgError as err:
        logging.getLogger("icg.install").debug("%s", err)  # the per-file details: on use, or --debug
        say(not_fetched_message(root, offline is True))
        return
    say(f"default models are in {root}")


def not_fetched_message(root, offline_flag: bool) -> str:
    """One short line for a start without the default models (an offline machine sees it every start):
    which models are missing, what happens now, and how to stop the attempt."""
    from icg.models import download, registry

    entries = registry.resolve_entries(DEFAULT_MODELS)
    missing = [e.id for e in entries if not download.present(e, root)] or list(DEFAULT_MODELS)
    skip = "set ICG_SKIP_WEIGHTS=1" if offline_flag else "set ICG_SKIP_WEIGHTS=1 or add --icg-offline"
    return (
        f"could not fetch {len(missing)} default model(s) into {root} (offline?): {', '.join(missing)}. "
        "They are fetched on first use, or import them by hand (Image Caption > Models > Import, or "
        f"{os.path.basename(ROOT)}/icg_import.py; see the README). To skip this at start: {skip}."
    )


def main() -> int:
    """Install dependencies, then weights. Always returns 0."""
    logging.basicConfig(level=logging.INFO, format=f"{PREFIX} %(message)s")
    launch = get_launch()
    if skip_install(launch):
        return 0
    try:
        install_dependencies(launch)
    except Exception as err:
        say(f"could not install dependencies ({err}); install them with: pip install -e {ROOT}")
        traceback.print_exc()
    try:
        fetch_weights(launch)
    except Exception as err:
        say(f"could not fetch model weights ({type(err).__name__}: {err})")
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == "builtins":  # a host that exec()s this file: run, but never raise SystemExit into it
    main()
