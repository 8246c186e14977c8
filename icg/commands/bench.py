"""``icg bench``"""

from __future__ import annotations

import argparse
import json

from icg.bench import SUITES  # a light module: building the parser imports no torch


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the library against the predecessor's code paths")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--size", choices=("tiny", "real"), default="tiny", help="random weights at tiny or real sizes"
    )
    p.add_argument("--batch", type=int, metavar="N", default=8, help="images per batch (default: 8)")
    p.add_argument("--tokens", type=int, metavar="N", default=20, help="forced new tokens per caption")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (under a minute on a CPU)")
    p.add_argument("--suite", action="append", choices=tuple(SUITES), help="run only these (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from icg.bench.core import format_report, run_bench

    report = run_bench(
        device=args.device,
        size=args.size,
        batch=args.batch,
        tokens=args.tokens,
        quick=args.quick,
        suites=args.suite,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
