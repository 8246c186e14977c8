"""Command line: ``python -m icg COMMAND ...`` (also installed as ``icg``).

``main(argv) -> exit code``. User mistakes (a missing file, not an image, an unknown model) print one
line on stderr and exit 1; argument errors exit 2; no traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from icg.__version__ import __version__
from icg.commands import COMMAND_MODULES
from icg.errors import IcgError
from icg.phases import mark


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icg", description="Image captions with CLIP-prefix and SBG.")
    parser.add_argument("--version", action="version", version=f"icg {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    mark("cli", modules=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except IcgError as err:
        if args.debug:
            raise
        print(f"icg: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("icg: interrupted", file=sys.stderr)
        return 130
