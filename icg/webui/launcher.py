"""Commands a WebUI user can run as printed: ``icg import`` through the extension's ``icg_import.py``.

From the WebUI's folder ``python -m icg`` finds no ``icg`` (the extension's folder is not on the path)
and would install into the user cache, where the WebUI does not look. ``icg_import.py`` in the
extension's folder puts that folder on ``sys.path`` and runs ``icg import`` with ``--models-dir``
defaulting to ``models/icg`` of the WebUI it is installed in; the messages the WebUI shows name it with
this install's Python and models folder (``webui_message``), URLs each on a line of their own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

LAUNCHER = "icg_import.py"
EXTENSION_DIR = Path(__file__).resolve().parents[2]
DOWNLOAD = re.compile(r"`?python -m icg download ([\w.-]+)`?")
URL = re.compile(r"https?://[^\s()<>`]+[^\s()<>`.,;:]")


def default_models_dir(extension_dir: str | os.PathLike[str] = EXTENSION_DIR) -> Path | None:
    """``<WebUI>/models/icg`` when the extension sits in ``<WebUI>/extensions``, else None."""
    folder = Path(extension_dir).resolve()
    if folder.parent.name != "extensions":
        return None
    return folder.parent.parent / "models" / "icg"


def import_main(argv: Sequence[str], extension_dir: str | os.PathLike[str] = EXTENSION_DIR) -> int:
    """``icg import ARGV`` with ``--models-dir`` defaulting to the WebUI's ``models/icg``."""
    from icg.cli import main

    args = list(argv)
    given = any(a == "--models-dir" or a.startswith("--models-dir=") for a in args)
    default = default_models_dir(extension_dir)
    if not given and default is not None and not {"-h", "--help"} & set(args):
        args = ["--models-dir", str(default), *args]
    return main(["import", *args])


def _shown(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working folder (the WebUI's) when inside it, quoted for a shell."""
    text = os.path.abspath(path)
    with_cwd = os.path.commonpath([text, os.getcwd()]) == os.getcwd() if os.path.isabs(text) else False
    if with_cwd:
        text = os.path.relpath(text)
    return subprocess.list2cmdline([text]) if os.name == "nt" else shlex.quote(text)


def import_prefix(models_dir: str | os.PathLike[str]) -> str:
    """The start of the import command for this install, up to (not including) ``FILE --as ID``."""
    launcher = EXTENSION_DIR / LAUNCHER
    return f"{_shown(sys.executable)} {_shown(launcher)} --models-dir {_shown(models_dir)}"


def import_command(model_id: str, models_dir: str | os.PathLike[str], source: str = "FILE") -> str:
    return f"{import_prefix(models_dir)} {source} --as {model_id}"


def webui_message(message: str, models_dir: str | os.PathLike[str]) -> str:
    """A library message as the WebUI shows it: ``python -m icg import`` becomes the command that works
    from the WebUI's folder, ``python -m icg download`` the Models panel's button, and every URL stands
    on a line of its own (a long unbroken address must not run off the screen)."""
    from icg.models.download import IMPORT_COMMAND

    library_prefix = IMPORT_COMMAND.split(" FILE", 1)[0]
    text = message.replace(library_prefix, import_prefix(models_dir))
    text = DOWNLOAD.sub(r"the Download button of Image Caption > Models (model \1)", text)
    text = URL.sub(lambda m: f"\n  {m.group(0)}\n", text)
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(line if line.startswith("  http") else line.strip() for line in lines if line.strip())
