"""``icg doctor``"""

from __future__ import annotations

import argparse
import sys

from icg.commands.common import add_runtime


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check the installation and run a smoke caption on tiny models")
    add_runtime(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from icg.doctor import run_doctor

    return run_doctor(args, out=sys.stdout)
