"""``icg dataset INPUT --out DIR``: caption a dataset on a Ray cluster (the optional ``scale`` extra).

The model, decoding and caption text options are ``icg batch``'s (rendered from ``icg.options``); the
work runs on Ray Data (``icg.dataset``). Exit status: 0 when every image was captioned, 1 when some
failed (or for a bad option, input or model, or when Ray is not installed).
"""

from __future__ import annotations

import argparse
import json
import sys

from icg.commands.batch import add_caption_text, caption_from_args, template_from_args
from icg.commands.common import add_decoding, add_options, add_runtime, decoding_overrides
from icg.options import BATCH, DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser(
        "dataset",
        help="caption a dataset on a Ray cluster (needs icg[scale])",
        description="Caption a folder, a glob, a list of paths, parquet files of image bytes or WebDataset "
        "shards with Ray Data, on this machine or a Ray cluster, into parquet or JSONL shards. Re-running "
        "the same command skips the images already in --out.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a folder, a glob, a .txt/.csv/.parquet list of paths, parquet files with image bytes "
        "(--bytes-column), or WebDataset .tar shards",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="the output folder (shards of one row per image)"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id or path (default: {DEFAULT_MODEL})")
    add_options(p, BATCH, names=("recursive", "batch_size"))

    inputs = p.add_argument_group("input columns")
    inputs.add_argument(
        "--path-column",
        default="path",
        metavar="NAME",
        help="image paths in a .csv/.parquet list (default: path)",
    )
    inputs.add_argument("--bytes-column", metavar="NAME", help="read image bytes from this parquet column")
    inputs.add_argument(
        "--key-column", default="key", metavar="NAME", help="keys of parquet image bytes (default: key)"
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--format", choices=("parquet", "jsonl"), default="parquet", help="shard format (default: parquet)"
    )
    out.add_argument(
        "--shard-rows", type=int, default=10_000, metavar="N", help="rows per output shard (default: 10000)"
    )
    add_options(
        out,
        BATCH,
        names=("write_sidecars", "policy", "sidecar_extension"),
        defaults={"write_sidecars": False},
    )

    cluster = p.add_argument_group("Ray")
    cluster.add_argument(
        "--address",
        metavar="ADDR",
        help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a local one)",
    )
    cluster.add_argument(
        "--actors",
        default="1",
        metavar="MIN[:MAX]",
        help="model actors (one per GPU when the cluster has GPUs; default: 1)",
    )
    cluster.add_argument(
        "--actor-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each model actor reserves (default: 1)",
    )
    cluster.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)"
    )

    add_caption_text(p)
    run_group = p.add_argument_group("run")
    run_group.add_argument("--json", action="store_true", help="print the summary as JSON")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runtime(p)
    add_decoding(p)
    p.set_defaults(func=run)


def parse_actors(text: str) -> tuple[int, int]:
    """``"2"`` -> (2, 2); ``"1:4"`` -> (1, 4); ``ConfigError`` naming --actors otherwise."""
    from icg.errors import ConfigError

    low, _, high = text.partition(":")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise ConfigError(f"--actors must be MIN or MIN:MAX (whole numbers), not {text!r}") from None
    return pair


def options_from_args(args: argparse.Namespace):
    from icg.dataset.run import DatasetOptions

    return DatasetOptions(
        input=args.input,
        out=args.out,
        model=args.model,
        format=args.format,
        runtime={
            "device": args.device,
            "dtype": args.dtype,
            "models_dir": args.models_dir,
            "allow_download": args.download,
            "clip": args.clip,
            "tokenizer": args.tokenizer,
        },
        decoding=decoding_overrides(args),
        caption=caption_from_args(args),
        template=template_from_args(args),
        actors=parse_actors(args.actors),
        actor_cpus=args.actor_cpus,
        batch_size=args.batch_size,
        rows_per_shard=args.shard_rows,
        address=args.address,
        num_cpus=args.num_cpus,
        recursive=True if args.recursive is None else args.recursive,
        path_column=args.path_column,
        bytes_column=args.bytes_column,
        key_column=args.key_column,
        sidecars=bool(args.write_sidecars),
        **{k: v for k, v in BATCH.pick(args).items() if k in ("policy", "sidecar_extension")},
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from icg.dataset import require_ray

    require_ray()  # before anything else: one line saying how to get it
    from icg.dataset.run import format_summary, run_dataset

    options = options_from_args(args)
    summary = run_dataset(options, notify=_stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
    sys.stdout.flush()
    return summary.exit_code


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
