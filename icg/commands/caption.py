"""``icg caption [IMAGE...]``: caption image files, or SBG keywords typed on the command line.

    icg caption photo.jpg                                  # CLIP-prefix (the default model)
    icg caption --model sbg-flickr8k photo.jpg --json      # keywords, candidates, scores, seed
    icg caption --model sbg-flickr8k --keywords "dog, grass"          # no image: keywords in, caption out
    icg caption --model sbg-flickr8k photo.jpg --force beach --ban man

``--keywords``, ``--force``, ``--ban``, ``--candidates`` and ``--vocabulary`` belong to SBG models; without
``--model`` they select the SBG default model.
"""

from __future__ import annotations

import argparse
import contextlib
import json

from icg.commands.common import add_decoding, add_runtime, decoding_overrides, make_manager

DEFAULT_MODEL = "clip-prefix-flickr8k"
DEFAULT_SBG_MODEL = "sbg-flickr8k"
STYLES = ("clean", "published")  # icg.text.CAPTION_STYLES, named here so --help imports nothing heavy


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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--style",
        choices=STYLES,
        help="clean: a tidy sentence (default); published: exactly as the published code wrote it "
        "(text + ' .'), for evaluation",
    )
    g = p.add_argument_group("SBG (selective blind guessing)")
    g.add_argument(
        "--keywords",
        metavar="'KW, KW'",
        help="caption these comma-separated keywords instead of the selected ones; with no IMAGE, "
        "candidates are ordered by the language model's own log-probability",
    )
    g.add_argument("--force", action="append", default=[], metavar="KW", help="always use keyword KW")
    g.add_argument("--ban", action="append", default=[], metavar="KW", help="never use keyword KW")
    g.add_argument("--candidates", type=int, metavar="N", help="captions to sample and re-rank (default 5)")
    g.add_argument("--vocabulary", metavar="FILE", help="SBG vocabulary.json (or a folder holding it)")
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run, _parser=p)


def _sbg_only(args: argparse.Namespace) -> list[str]:
    names = [("--keywords", args.keywords is not None), ("--force", args.force), ("--ban", args.ban)]
    names += [("--vocabulary", args.vocabulary), ("--candidates", args.candidates is not None)]
    return [name for name, given in names if given]


def run(args: argparse.Namespace) -> int:
    from icg.errors import ConfigError

    if not args.images and args.keywords is None:
        args._parser.error("give IMAGE files, or --keywords for an SBG model")
    if args.candidates is not None and args.candidates < 1:
        args._parser.error("--candidates must be at least 1")
    model = args.model or (DEFAULT_SBG_MODEL if _sbg_only(args) else DEFAULT_MODEL)

    manager = make_manager(args)
    if args.vocabulary:
        manager.factories.captioner = _captioner_factory(args.vocabulary)
    overrides = decoding_overrides(args)
    if args.candidates is not None:
        overrides["num_samples"] = args.candidates
    with manager.session():
        captioner = manager.captioner(model)
        if not hasattr(captioner, "caption_keywords") and _sbg_only(args):
            raise ConfigError(
                f"{', '.join(_sbg_only(args))}: only for SBG models; {model!r} is a {captioner.kind} model"
            )
        decoding = captioner.decoding.replace(**overrides) if overrides else None
        if args.images:
            results = _caption_images(args, manager, model, captioner, decoding)
        else:
            results = [
                captioner.caption_keywords(
                    args.keywords, decoding, force=args.force, ban=args.ban, style=args.style
                )
            ]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    elif len(results) == 1:
        print(results[0].caption)
    else:
        for r in results:
            print(f"{r.source}\t{r.caption}")
    return 0


def _caption_images(args, manager, model, captioner, decoding):
    """Through the one pipeline; SBG options ride along in ``sbg_options``, the prefix captioner's style
    is switched for the job (the manager's lock is held throughout, so no other job sees it)."""
    from icg.pipeline import caption_images

    with contextlib.ExitStack() as stack:
        if hasattr(captioner, "caption_keywords"):  # an SBG captioner
            from icg.sbg.captioner import sbg_options

            stack.enter_context(
                sbg_options(keywords=args.keywords, force=args.force, ban=args.ban, style=args.style)
            )
        elif args.style is not None and hasattr(captioner, "style"):
            previous = captioner.style
            captioner.style = args.style
            stack.callback(setattr, captioner, "style", previous)
        return caption_images(manager, model, args.images, decoding=decoding, batch_size=args.batch_size)


def _captioner_factory(vocabulary: str):
    """The default captioner factory, with SBG models reading ``vocabulary``."""

    def load(name: str, manager):
        from icg.models.loading import load_captioner, resolve_model
        from icg.sbg.captioner import load_sbg_captioner
        from icg.sbg.kind import KIND as SBG

        resolved = resolve_model(name, manager)
        if resolved.kind != SBG.name:
            return load_captioner(name, manager)

        return load_sbg_captioner(name, resolved, manager, vocabulary=vocabulary)

    return load
