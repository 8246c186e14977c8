"""Command-line flags ICG adds to the Stable Diffusion WebUI (the WebUI calls ``preload(parser)`` while
it builds its argument parser, before any extension script runs).

``--icg-models-dir DIR``: where ICG keeps its models (default ``<WebUI models folder>/icg``); wins over
the "models folder" setting. ``--icg-offline``: never download; missing models must be imported by hand.
``install.py`` reads the same two flags from the command line.
"""

from __future__ import annotations


def preload(parser) -> None:
    group = (
        parser.add_argument_group("Image Caption (ICG)") if hasattr(parser, "add_argument_group") else parser
    )
    group.add_argument(
        "--icg-models-dir",
        type=str,
        default=None,
        help="Image Caption: folder for its models (default: <models folder>/icg)",
    )
    group.add_argument(
        "--icg-offline",
        action="store_true",
        default=False,
        help="Image Caption: never download models (import them by hand instead)",
    )
