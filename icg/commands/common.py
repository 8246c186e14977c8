"""What several subcommands share: runtime arguments, and arguments rendered from ``icg.options``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from icg.errors import ConfigError
from icg.options import DECODING, RUNTIME, Option, OptionGroup


def option_type(option: Option):
    """An argparse ``type`` that converts and checks a value with the option's own rule."""

    def convert(text: str) -> Any:
        try:
            return option.check(text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None

    convert.__name__ = option.type.__name__  # argparse names the type in its "invalid ..." message
    return convert


#: Metavars of the options whose type alone says too little.
_METAVARS = {"seed": "SEED", "sidecar_extension": ".EXT", "template": "TEMPLATE", "clip": "CLIP"}


def option_metavar(option: Option) -> str | None:
    """A short placeholder for the option's value in ``--help``: ``N`` for whole numbers, ``X`` for
    numbers, ``TEXT`` for text (None for choices: argparse shows ``{a,b}``)."""
    if option.choices:
        return None
    return _METAVARS.get(option.name) or {int: "N", float: "X"}.get(option.type, "TEXT")


def option_help(option: Option, default: Any = None) -> str:
    bounds = option.bounds_text()
    shown = option.default if default is None else default
    parts = [bounds] if bounds and not option.choices else []
    if shown is not None and shown != "":
        parts.append(f"default: {shown}")
    return option.help + (f" ({'; '.join(parts)})" if parts else "")


def add_options(
    parser: argparse.ArgumentParser | Any,
    group: OptionGroup,
    *,
    names: Iterable[str] | None = None,
    title: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Arguments for ``group``'s options (or the ``names`` among them), each defaulting to None (= not
    given), so the caller can tell what the user set. ``defaults`` only changes what help shows."""
    target = parser.add_argument_group(title) if title else parser
    defaults = defaults or {}
    for option in group:
        if names is not None and option.name not in names:
            continue
        shown = defaults.get(option.name)
        if option.type is bool:
            target.add_argument(
                option.cli_flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=option_help(option, shown),
            )
            continue
        target.add_argument(
            option.cli_flag,
            *option.aliases,
            dest=option.name,
            type=option_type(option),
            choices=option.choices,
            metavar=option_metavar(option),
            default=None,
            help=option_help(option, shown),
        )


#: ``--device``'s help, for every command that takes one.
DEVICE_HELP = "auto (default: CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:1, mps, ..."


def add_models_dir(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument(
        "--models-dir", metavar="DIR", help="models folder (default: $ICG_HOME or the user cache folder)"
    )


def add_device(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and device")
    add_models_dir(g)
    g.add_argument(
        "--clip",
        metavar="CLIP",
        help="CLIP to use: a folder with an open_clip config + weights, or a model id",
    )
    g.add_argument("--tokenizer", metavar="TOK", help="GPT-2 tokenizer folder or model id")
    add_device(g)
    add_options(g, RUNTIME, names=("dtype",))  # threads: a WebUI setting (the CLI uses every core)
    g.add_argument("--download", action="store_true", help="download missing registry models when needed")


def add_decoding(p: argparse.ArgumentParser) -> None:
    add_options(p, DECODING, title="decoding (defaults come from the model)")


def decoding_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options the user gave on the command line."""
    return DECODING.pick(args)


def make_manager(args: argparse.Namespace):
    from icg.models.manager import ModelManager, RuntimeConfig

    return ModelManager(
        RuntimeConfig(
            device=args.device,
            dtype=args.dtype or RUNTIME["dtype"].default,
            models_dir=args.models_dir,
            allow_download=args.download,
            clip=args.clip,
            tokenizer=args.tokenizer,
            vocabulary=getattr(args, "vocabulary", None),
        )
    )


class ProgressBar:
    """A tqdm bar on stderr, created on the first progress report (once the total is known)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, done: int, total: int, info: dict) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if not total:
                return  # nothing to do: no bar reading "0img"
            from tqdm import tqdm

            if info.get("skipped"):
                self.write(
                    f"icg: {info['skipped']} of {info.get('found', '?')} images already done; skipping them"
                )
            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc="captioning")
        self.bar.update(done - self.bar.n)
        if info.get("failed"):
            self.bar.set_postfix(failed=info["failed"], refresh=False)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)
