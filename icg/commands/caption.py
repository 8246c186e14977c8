"""``icg caption IMAGE...``"""

from __future__ import annotations

import argparse
import json

from icg.commands.common import add_decoding, add_runtime, decoding_overrides, make_manager

DEFAULT_MODEL = "clip-prefix-flickr8k"


def register(sub) -> None:
    p = sub.add_parser("caption", help="caption image files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id or path (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print full results as JSON")
    p.add_argument("--batch-size", type=int, default=8)
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from icg.pipeline import caption_images

    manager = make_manager(args)
    overrides = decoding_overrides(args)
    decoding = None
    if overrides:
        with manager.session():
            decoding = manager.captioner(args.model).decoding.replace(**overrides)
    results = caption_images(manager, args.model, args.images, decoding=decoding, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    elif len(results) == 1:
        print(results[0].caption)
    else:
        for r in results:
            print(f"{r.source}\t{r.caption}")
    return 0
