"""Options shared by several subcommands."""

from __future__ import annotations

import argparse

DECODING_OPTIONS = (
    "strategy",
    "num_beams",
    "num_samples",
    "top_k",
    "top_p",
    "temperature",
    "max_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "seed",
)


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and device")
    g.add_argument("--models-dir", help="models folder (default: $ICG_HOME or the user cache folder)")
    g.add_argument("--clip", help="CLIP to use: a folder with an open_clip config + weights, or a model id")
    g.add_argument("--tokenizer", help="GPT-2 tokenizer folder or model id")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16")
    g.add_argument("--download", action="store_true", help="download missing registry models when needed")


def add_decoding(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (defaults come from the model)")
    g.add_argument("--strategy", choices=("greedy", "beam", "sample"))
    g.add_argument("--beams", type=int, dest="num_beams")
    g.add_argument("--samples", type=int, dest="num_samples", help="candidates to sample")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--temperature", type=float)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--no-repeat-ngram", type=int, dest="no_repeat_ngram_size")
    g.add_argument("--seed", type=int)


def decoding_overrides(args: argparse.Namespace) -> dict:
    return {n: getattr(args, n) for n in DECODING_OPTIONS if getattr(args, n, None) is not None}


def make_manager(args: argparse.Namespace):
    from icg.models.manager import ModelManager, RuntimeConfig

    return ModelManager(
        RuntimeConfig(
            device=args.device,
            dtype=args.dtype,
            models_dir=args.models_dir,
            allow_download=args.download,
            clip=args.clip,
            tokenizer=args.tokenizer,
        )
    )
