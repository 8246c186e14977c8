"""``icg caption [IMAGE...]``: caption image files, or SBG keywords typed on the command line.

    icg caption photo.jpg                                  # CLIP-prefix (the default model)
    icg caption --model sbg-flickr8k photo.jpg --json      # keywords, candidates, scores, seed
    icg caption --model sbg-flickr8k --keywords "dog, grass"          # no image: keywords in, caption out
    icg caption --model sbg-flickr8k photo.jpg --force beach --ban man

``--keywords``, ``--force``, ``--ban`` and ``--vocabulary`` belong to SBG models; without ``--model`` they
select the SBG default model.
"""

from __future__ import annotations

import argparse
import json

from icg.commands.common import (
    ProgressBar,
    add_decoding,
    add_options,
    add_runtime,
    decoding_overrides,
    make_manager,
    option_type,
)
from icg.options import BATCH, CAPTION, DEFAULT_MODEL
from icg.phases import mark

DEFAULT_SBG_MODEL = "sbg-flickr8k"
#: From this many images on, ``icg caption`` shows a progress bar.
PROGRESS_FROM = 4


def register(sub) -> None:
    p = sub.add_parser(
        "caption",
        help="caption image files (or SBG keywords)",
        description="Caption image files, or (SBG) write captions from keywords typed with --keywords.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (optional with --keywords)")
    p.add_argument(
        "--model",
        help=f"model id or path (default: {DEFAULT_MODEL}; {DEFAULT_SBG_MODEL} with the SBG options)",
    )
    p.add_argument("--json", action="store_true", help="print full results as JSON")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help=f"no progress bar (shown on stderr for more than {PROGRESS_FROM - 1} images)",
    )
    p.add_argument(
        "--batch-size",
        type=option_type(BATCH["batch_size"]),
        metavar="N",
        default=8,
        help="images per batch (default: 8)",
    )
    add_options(p, CAPTION)
    g = p.add_argument_group("SBG (selective blind guessing)")
    g.add_argument(
        "--keywords",
        metavar="'KW, KW'",
        help="caption these comma-separated keywords instead of the selected ones; with no IMAGE, "
        "candidates are ordered by the language model's own log-probability",
    )
    g.add_argument("--force", action="append", default=[], metavar="KW", help="always use keyword KW")
    g.add_argument("--ban", action="append", default=[], metavar="KW", help="never use keyword KW")
    g.add_argument("--vocabulary", metavar="FILE", help="SBG vocabulary.json (or a folder holding it)")
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run, _parser=p)


def _sbg_only(args: argparse.Namespace) -> list[str]:
    names = [("--keywords", args.keywords is not None), ("--force", args.force), ("--ban", args.ban)]
    names += [("--vocabulary", args.vocabulary)]
    return [name for name, given in names if given]


def run(args: argparse.Namespace) -> int:
    from icg.options import CaptionOptions, split_words
    from icg.pipeline import caption_images, caption_keywords

    if not args.images and args.keywords is None:
        args._parser.error("give IMAGE files, or --keywords for an SBG model")
    model = args.model or (DEFAULT_SBG_MODEL if _sbg_only(args) else DEFAULT_MODEL)
    options = CaptionOptions(
        style=args.style,
        keywords=None if args.keywords is None or not args.images else split_words(args.keywords),
        force=tuple(args.force),
        ban=tuple(args.ban),
    )
    if args.images:
        _check_files(args.images)  # every file before any model loads: a typo fails at once
    manager = make_manager(args)
    decoding = decoding_overrides(args)
    if args.images:
        results = []
        size = args.batch_size
        show = not args.no_progress and len(args.images) >= PROGRESS_FROM
        with ProgressBar(enabled=show) as bar:
            for first in range(0, len(args.images), size):
                chunk = args.images[first : first + size]
                results += caption_images(
                    manager, model, chunk, decoding=decoding, options=options, batch_size=size
                )
                bar.update(len(results), len(args.images), {})
    else:
        results = [caption_keywords(manager, model, args.keywords, decoding=decoding, options=options)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    elif len(results) == 1:
        print(results[0].caption, flush=True)
        mark("printed", modules=True)
    else:
        for r in results:
            print(f"{r.source}\t{r.caption}")
    return 0


def _check_files(paths: list[str]) -> None:
    """``ImageError`` naming the first path that is missing, a folder or empty (no image is decoded)."""
    from pathlib import Path

    from icg.imaging import check_image_file  # the reasons load_image gives, without decoding

    for path in paths:
        check_image_file(Path(path))
