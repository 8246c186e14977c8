"""``icg models``, ``icg download ID...`` and ``icg import FILE_OR_DIR --as ID``: the models folder from
the command line."""

from __future__ import annotations

import argparse
import json
import sys

from icg.commands.common import add_models_dir, add_options
from icg.options import IMPORT


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub) -> None:
    from icg.models.importer import import_kinds

    p = sub.add_parser("models", help="list known models and the models in the models folder")
    add_models_dir(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "download",
        help="download models (and what they need) into the models folder",
        description="Download registry models into the models folder, converting .pt checkpoints and the "
        "vocabulary pickles once (safetensors + JSON). Offline or unreachable: exits 1 and says how to "
        "fetch the files by hand and import them.",
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="registry ids (see `icg models`)")
    add_models_dir(p)
    p.add_argument("--no-deps", action="store_true", help="only the named models, not the CLIP/tokenizer/...")
    p.add_argument(
        "--keep-original", action="store_true", help="keep downloaded .pt / .pkl files after converting"
    )
    p.add_argument("--offline", action="store_true", help="use only files already on this machine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_download)

    p = sub.add_parser(
        "import",
        help="install model files you downloaded by hand or trained",
        description="Check, convert and install a model: a CLIP-prefix .pt state_dict or ICG folder, an "
        "SBG GPT-2 folder, or the SBG vocabulary pickles (the folder holding all_labels.pkl and "
        "encyclopedia.pkl, or the two files). Registry ids take the registry's facts.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="the model's file(s) or folder")
    p.add_argument("--as", dest="model_id", required=True, metavar="ID", help="the model id to install as")
    p.add_argument("--kind", choices=import_kinds(), help="what the files are (default: detected)")
    add_options(p, IMPORT)
    p.add_argument(
        "--n-head", type=_positive_int, metavar="N", help="GPT-2 attention heads (default: width / 64)"
    )
    p.add_argument(
        "--mapper-heads", type=_positive_int, metavar="N", help="heads of a transformer mapper (default: 8)"
    )
    p.add_argument(
        "--tokenizer", metavar="TOK", help="tokenizer id or folder the model uses (default: gpt2-tokenizer)"
    )
    p.add_argument(
        "--vocabulary", metavar="VOCAB", help="SBG: vocabulary id or folder (default: sbg-vocabulary)"
    )
    p.add_argument(
        "--keep-original", action="store_true", help="also copy the original file(s) into the folder"
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    add_models_dir(p)
    p.set_defaults(func=run_import)


# ------------------------------------------------------------------------------------------ models
def run_models(args: argparse.Namespace) -> int:
    from icg.models.download import format_size
    from icg.models.inventory import inventory
    from icg.models.paths import models_dir

    root = models_dir(args.models_dir)
    rows = inventory(root)
    if args.json:
        print(json.dumps({"models_dir": str(root), "models": [r.to_dict() for r in rows]}, indent=2))
        return 0
    print(f"models folder: {root}{'' if root.is_dir() else ' (does not exist yet)'}")
    width = max(len(r.id) for r in rows) if rows else 10
    for row in rows:
        state = "present" if row.installed else "missing"
        if row.size_bytes:
            size = format_size(row.size_bytes)
        elif row.expected_bytes is None:
            size = "size unknown"
        else:
            size = f"~{format_size(row.expected_bytes)} to download"
        own = "" if row.registered else "  (your model)"
        print(f"{row.id:<{width}}  {row.kind:<14} {state:<8} {size}{own}")
        print(f"{'':<{width}}  {row.path}")
        print(f"{'':<{width}}  source: {row.source}")
        if row.note:
            print(f"{'':<{width}}  {row.note}")
    return 0


# ------------------------------------------------------------------------------------------ download
def run_download(args: argparse.Namespace) -> int:
    from icg.errors import DownloadError
    from icg.models.download import download_model, forget_unreachable, plan_download
    from icg.models.paths import models_dir
    from icg.models.registry import resolve_entries, with_requirements

    root = models_dir(args.models_dir)
    entries = resolve_entries(args.ids) if args.no_deps else with_requirements(args.ids)
    offline = True if args.offline else None
    forget_unreachable()  # an explicit download probes the hosts again
    plan = plan_download(entries, root, offline=offline)
    if not plan.todo:
        print(f"already installed in {root}: {', '.join(e.id for e in entries)}")
        return 0
    print(
        f"downloading {len(plan.todo)} model(s) into {root}: {', '.join(e.id for e in plan.todo)} "
        f"({plan.total} in total)",
        flush=True,
    )
    failures = 0
    for entry in plan.todo:
        try:
            folder = download_model(
                entry, root, offline=offline, progress=not args.quiet, keep_original=args.keep_original
            )
        except DownloadError as err:
            failures += 1
            print(f"icg: error: {err}", file=sys.stderr, flush=True)
            continue
        print(f"ok: {entry.id} -> {folder}", flush=True)
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ import
def run_import(args: argparse.Namespace) -> int:
    from icg.models.importer import import_model
    from icg.models.paths import models_dir

    root = models_dir(args.models_dir)
    result = import_model(
        args.paths,
        args.model_id,
        root,
        kind=args.kind,
        clip=args.clip,
        normalize=args.normalize,
        n_head=args.n_head,
        mapper_heads=args.mapper_heads,
        tokenizer=args.tokenizer,
        vocabulary=args.vocabulary,
        keep_original=args.keep_original,
        force=args.force,
    )
    verb = "replaced" if result.replaced else "imported"
    print(f"{verb} {result.id} ({result.kind}) -> {result.folder}")
    print(f"  {result.details}")
    print(f"  files: {', '.join(result.files)}")
    from icg.captioners import kinds

    if kinds.get(result.kind).captioner:
        print(f"  caption with: python -m icg caption --model {result.id} IMAGE")
    return 0
