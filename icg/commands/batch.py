"""``icg batch DIR``: caption every image in a folder into sidecar files and/or a manifest.

A progress bar (stderr) shows the ETA and images/s. Ctrl-C stops after the current batch with
everything captioned so far written; a second Ctrl-C aborts at once (sidecars are written atomically, so
even then no file is left half-written). Exit status: 0 when every image was captioned, 1 when some
failed (or for a bad option, folder or model), 3 when the manifest or the append state could not be
written (a full disk: the run stops, every row written is complete, and the same command goes on once
there is room), 130 when stopped by the user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from icg.commands.common import (
    ProgressBar,
    add_decoding,
    add_options,
    add_runtime,
    decoding_overrides,
    make_manager,
)
from icg.options import BATCH, BATCH_TEMPLATE, CAPTION, DEFAULT_MODEL, KEYWORDS_TEMPLATE, TEMPLATE


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="caption every image in a folder",
        description="Caption every image in a folder into caption files (sidecars) and/or a manifest. "
        "Re-running the same command goes on where a stopped or killed run left off.",
    )
    p.add_argument("folder", metavar="DIR", help="the image folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id or path (default: {DEFAULT_MODEL})")
    add_options(p, BATCH, names=("recursive", "batch_size"))
    p.add_argument("--ext", help="image extensions to take, comma-separated (default: all Pillow reads)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="image decoding threads (default: CPU count, at most 8)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse larger images as decompression bombs (0: Pillow's limit only)",
    )

    out = p.add_argument_group("output")
    add_options(out, BATCH, names=("sidecar_extension", "policy", "write_sidecars", "resume"))
    out.add_argument(
        "--output-dir", metavar="DIR", help="write caption files here, mirroring the folder tree"
    )
    out.add_argument(
        "--separator", help="joins the old text and the caption on append/prepend (default: a line)"
    )
    out.add_argument("--manifest", help="also write one row per image to this .jsonl or .csv file")

    add_caption_text(p)

    run_group = p.add_argument_group("run")
    run_group.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and a preview of the first captions; write nothing",
    )
    add_options(run_group, BATCH, names=("preview",))
    run_group.add_argument("--json", action="store_true", help="print the summary as JSON")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    """The ``BatchOptions`` for parsed arguments (``ConfigError`` for invalid combinations)."""
    from icg.batch.engine import BatchOptions
    from icg.imaging import DEFAULT_MAX_PIXELS

    extensions = None
    if args.ext:
        extensions = tuple(ext for ext in args.ext.split(",") if ext.strip())
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    return BatchOptions(
        root=args.folder,
        model=args.model,
        extensions=extensions,
        output_dir=args.output_dir,
        separator=args.separator,
        manifest=args.manifest,
        template=template_from_args(args),
        decoding=decoding_overrides(args),
        caption=caption_from_args(args),
        dry_run=args.dry_run,
        max_pixels=max_pixels,
        workers=args.workers,
        **BATCH.pick(args),
    )


def add_caption_text(p: argparse.ArgumentParser) -> None:
    """The options of what goes into each caption file (template, keywords, caption style); ``icg
    dataset`` takes the same ones for its ``prompt`` column."""
    prompt = p.add_argument_group("caption file text")
    add_options(prompt, TEMPLATE, defaults={"template": BATCH_TEMPLATE})
    prompt.add_argument(
        "--keywords", action="store_true", help=f"add the model's keywords (SBG): {KEYWORDS_TEMPLATE!r}"
    )
    prompt.add_argument(
        "--keep-period", dest="strip_period", action="store_false", default=None, help="= --no-strip-period"
    )
    add_options(prompt, CAPTION)


def template_from_args(args: argparse.Namespace):
    """The ``PromptTemplate`` of ``add_caption_text``'s arguments."""
    from icg.prompt import PromptTemplate

    template = TEMPLATE.pick(args)
    template.setdefault("template", KEYWORDS_TEMPLATE if args.keywords else BATCH_TEMPLATE)
    return PromptTemplate(**template)


def caption_from_args(args: argparse.Namespace):
    """The ``CaptionOptions`` of ``add_caption_text``'s arguments."""
    from icg.options import CaptionOptions

    return CaptionOptions(**CAPTION.pick(args))


#: The exit status when the run's records (manifest, append state) cannot be written.
EXIT_RECORD_WRITE = 3


def run(args: argparse.Namespace) -> int:
    from icg.batch.engine import plan_batch, run_batch
    from icg.batch.report import format_summary
    from icg.sinks import RecordWriteError

    options = options_from_args(args)
    plan = plan_batch(options)  # the folder first: a wrong one fails before any model loads
    manager = make_manager(args)
    stop = threading.Event()
    bar = ProgressBar(enabled=not args.no_progress and not options.dry_run)
    if not args.no_progress and plan.todo and (options.preview or not options.dry_run):
        bar.write(_loading_line(options.model, manager, len(plan.todo)))
    try:
        with bar, stop_on_sigint(stop, bar.write):
            summary = run_batch(manager, options, on_progress=bar.update, should_stop=stop.is_set, plan=plan)
    except RecordWriteError as err:
        if args.debug:
            raise
        print(f"icg: error: {err}", file=sys.stderr)
        return EXIT_RECORD_WRITE
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        print(format_summary(summary, options))
    return summary.exit_code


def _loading_line(model: str, manager, images: int) -> str:
    """What the run loads before its first caption (the ~20 s a user would otherwise wait in silence)."""
    return (
        f"icg: loading {model} and its CLIP on {manager.device} to caption {images} image(s) "
        "(this can take a while the first time)"
    )


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event, notify: Callable[[str], None]) -> Iterator[None]:
    """While active, the first Ctrl-C (SIGINT) sets ``stop``; the second raises ``KeyboardInterrupt``.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        notify(
            "icg: stopping after the current batch (everything captioned so far is kept); Ctrl-C again aborts"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
