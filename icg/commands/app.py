"""``icg app``: the standalone web app (Caption and Batch tabs) on this machine."""

from __future__ import annotations

import argparse
import sys

from icg.commands.common import add_decoding, add_runtime, make_manager


def register(sub) -> None:
    p = sub.add_parser(
        "app",
        help="the web app: caption images and folders in a browser",
        description="Serve the Caption and Batch tabs (Gradio). There is no public sharing link: the "
        "Batch tab reads and writes folders on this machine.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        default=[],
        metavar="MODEL",
        help="model id or path to offer (repeatable; the first is preselected)",
    )
    p.add_argument(
        "--allow-model-paths",
        action="store_true",
        help="also load a model path typed into the page (default: only the listed models)",
    )
    p.add_argument("--folder", default="", help="folder preset in the Batch tab")
    p.add_argument("--template", help="prompt template preset in the Caption tab")
    p.add_argument("--open", action="store_true", dest="inbrowser", help="open the app in a web browser")
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run)


def ui_defaults(args: argparse.Namespace):
    """The panels' initial values from the command line."""
    from icg.options import DECODING
    from icg.ui import UiDefaults

    values = {
        **DECODING.pick(args),
        "model": args.models[0] if args.models else None,
        "batch_folder": args.folder or "",
    }
    if args.template:
        from icg.prompt import PromptTemplate

        values["template"] = PromptTemplate(args.template).template  # refuses a bad template now
    return UiDefaults(**values)


def run(args: argparse.Namespace) -> int:
    from icg.app import create_app, is_loopback, serve, wait

    if args.port is not None and not 0 < args.port < 65536:
        print(f"icg: error: --port must be between 1 and 65535, not {args.port}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(
            f"icg: warning: listening on {args.host}: anyone who can reach this machine can caption with "
            "it and read and write the folders its user can",
            file=sys.stderr,
        )
    manager = make_manager(args)
    demo, _ = create_app(
        manager, models=args.models, defaults=ui_defaults(args), allow_model_paths=args.allow_model_paths
    )
    url = serve(demo, args.host, args.port, inbrowser=args.inbrowser, block=False)
    print(f"ICG app running on {url} (Ctrl-C to stop)", flush=True)
    wait(demo)
    return 0
