"""``icg features``, ``icg train prefix|sbg`` and ``icg evaluate``: reproduce the seed's training and
evaluation, or fine-tune on your own captioned folder.

    python -m icg features DATASET --out FEATURES
    python -m icg train prefix FEATURES --out RUN
    python -m icg train sbg FEATURES --out RUN
    python -m icg evaluate --model RUN/epoch-010 DATASET
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from icg.commands.common import add_device, add_models_dir, add_runtime
from icg.train.config import (
    PREFIX_PAPER_RUN,
    PREFIX_VAL_IMAGES,
    SBG_BLOCK_SIZE,
    SBG_PAPER_RUN,
    SBG_VAL_IMAGES,
    TrainConfig,
)


def register(sub) -> None:
    _register_features(sub)
    _register_train(sub)
    _register_evaluate(sub)


# ----------------------------------------------------------------------------------------------- parsers
def _register_features(sub) -> None:
    p = sub.add_parser(
        "features",
        help="compute the CLIP image features of a caption dataset (once per image, resumable)",
        description="DATASET: a Flickr8k/30k captions file, a folder holding one (Kaggle layout), "
        "or a folder of images with sidecar .txt captions.",
    )
    p.add_argument("dataset", metavar="DATASET", help="captions file or dataset folder (see above)")
    p.add_argument("--out", required=True, help="feature folder to write (resumed when it exists)")
    _add_dataset_options(p)
    p.add_argument(
        "--test-images", type=int, metavar="N", default=1000, help="last N images form the test split (1000)"
    )
    p.add_argument("--batch-size", type=int, metavar="N", default=32, help="images per CLIP batch (32)")
    p.add_argument("--shard-size", type=int, metavar="N", default=2048, help="images per safetensors shard")
    p.add_argument("--workers", type=int, metavar="N", default=2, help="image-reading threads")
    p.add_argument(
        "--overwrite", action="store_true", help="replace features of other images or another CLIP"
    )
    _add_quiet(p)
    add_runtime(p)
    p.set_defaults(func=run_features)


def _register_train(sub) -> None:
    p = sub.add_parser("train", help="train a CLIP-prefix or SBG captioner on a feature folder")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True

    prefix = kinds.add_parser(
        "prefix",
        help="CLIP-prefix: MLP mapper + GPT-2 fine-tune (ClipCap; the seed's recipe)",
    )
    _add_train_common(prefix, PREFIX_PAPER_RUN, val_images=PREFIX_VAL_IMAGES)
    g = prefix.add_argument_group("model")
    g.add_argument("--mapper", default="mlp", choices=("mlp", "linear", "transformer"), help="(default: mlp)")
    g.add_argument(
        "--prefix-length", type=int, metavar="N", default=10, help="GPT-2 prefix tokens (default: 10)"
    )
    g.add_argument(
        "--hidden-dim", type=int, metavar="N", help="MLP hidden size (default: prefix length * width / 2)"
    )
    g.add_argument(
        "--clip-length", type=int, metavar="N", default=10, help="transformer mapper: CLIP tokens (10)"
    )
    g.add_argument("--mapper-layers", type=int, metavar="N", default=8, help="transformer mapper: layers (8)")
    g.add_argument("--mapper-only", action="store_true", help="freeze GPT-2 and train only the mapper")
    g.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="L2-normalise the CLIP features (the published models do; the original ClipCap did not)",
    )
    prefix.set_defaults(func=run_train_prefix)

    sbg = kinds.add_parser(
        "sbg",
        help="SBG: keywords per image, then GPT-2 fine-tuned on 'kw, kw ### caption'",
    )
    _add_train_common(sbg, SBG_PAPER_RUN, val_images=SBG_VAL_IMAGES)
    g = sbg.add_argument_group("lines")
    g.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack the lines into blocks of --block-size tokens with the loss on every token, as the paper "
        "did (default); --no-packing: one line per example, the loss on the caption only",
    )
    g.add_argument(
        "--block-size",
        type=int,
        metavar="N",
        default=SBG_BLOCK_SIZE,
        help=f"tokens per packed block (default: {SBG_BLOCK_SIZE})",
    )
    g = sbg.add_argument_group("keywords")
    g.add_argument("--vocabulary", help="vocabulary.json, a folder, or a model id (default: sbg-vocabulary)")
    g.add_argument(
        "--keywords",
        help='fixed keywords (JSONL: {"image": ..., "keywords": [...]}) instead of the keyword selector',
    )
    sbg.set_defaults(func=run_train_sbg)


def _add_train_common(p, paper: TrainConfig, *, val_images: int | None) -> None:
    """The arguments both kinds share; the defaults are ``paper``, the run the paper made."""
    p.add_argument("features", metavar="FEATURES", help="feature folder written by `icg features`")
    p.add_argument("--out", required=True, help="run folder: one checkpoint folder per epoch; resumed")
    g = p.add_argument_group("language model")
    g.add_argument(
        "--init",
        metavar="MODEL",
        help="continue training a model of this kind: a registry id (e.g. clip-prefix-flickr8k) or a folder",
    )
    g.add_argument("--lm", help="GPT-2 to start from: a folder, or a Hugging Face id in the cache (gpt2)")
    g.add_argument("--lm-config", metavar="CONFIG", help="random GPT-2 instead: tiny, gpt2, or a config.json")
    g.add_argument("--tokenizer", help="GPT-2 tokenizer folder or model id (default: gpt2-tokenizer)")
    g = p.add_argument_group("data")
    g.add_argument(
        "--test-images",
        type=int,
        metavar="N",
        help="last N images are held out (default: the features' split)",
    )
    g.add_argument(
        "--lowercase", action=argparse.BooleanOptionalAction, default=True, help="lower-case captions"
    )
    g.add_argument(
        "--max-tokens", type=int, metavar="N", help="caption tokens kept (default: min(mean + 10 std, max))"
    )
    val_default = val_images if val_images is not None else "as many as the test split (the paper: 1000)"
    g.add_argument(
        "--val-images",
        type=int,
        metavar="N",
        default=val_images,
        help="hold out the last N images before the test split and report their loss after every epoch "
        f"(default: {val_default})",
    )
    g = p.add_argument_group("optimisation (defaults: the paper's run)")
    schedule = paper.scheduled_epochs
    g.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help=f"epochs to run (default: {paper.epochs}"
        + (f", on a schedule sized for {schedule}, as the paper ran" if schedule != paper.epochs else "")
        + ")",
    )
    g.add_argument(
        "--schedule-epochs",
        type=int,
        metavar="N",
        help="size the linear learning-rate decay for N epochs (default: --epochs; "
        f"{schedule} when --epochs is not given)",
    )
    g.add_argument(
        "--batch-size", type=int, metavar="N", default=paper.batch_size, help=f"(default: {paper.batch_size})"
    )
    g.add_argument(
        "--lr", type=float, metavar="X", default=paper.lr, help=f"AdamW learning rate (default: {paper.lr:g})"
    )
    g.add_argument(
        "--warmup",
        type=int,
        metavar="N",
        default=paper.warmup_steps,
        help=f"linear warm-up steps (default: {paper.warmup_steps})",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        metavar="X",
        default=paper.weight_decay,
        help=f"AdamW weight decay (default: {paper.weight_decay:g})",
    )
    g.add_argument(
        "--adam-eps",
        type=float,
        metavar="X",
        default=paper.adam_eps,
        help=f"AdamW epsilon (default: {paper.adam_eps:g})",
    )
    g.add_argument(
        "--clip-grad",
        type=float,
        metavar="X",
        default=paper.max_grad_norm,
        help=f"max gradient norm; 0: no clipping (default: {paper.max_grad_norm:g})",
    )
    g.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=paper.drop_last,
        help=f"drop each epoch's last partial batch (default: {'yes' if paper.drop_last else 'no'})",
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="autocast on CUDA (auto: bf16 where supported, else fp16); fp32 on the CPU",
    )
    g.add_argument(
        "--seed", type=int, metavar="SEED", default=0, help="initialisation and shuffling seed (default: 0)"
    )
    g.add_argument(
        "--log-every", type=int, metavar="N", default=50, help="steps between progress lines (default: 50)"
    )
    g.add_argument("--keep", type=int, metavar="N", default=0, help="epoch folders to keep (0: all)")
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest checkpoint in --out",
    )
    g = p.add_argument_group("runtime")
    add_device(g)
    add_models_dir(g)
    g.add_argument("--download", action="store_true", help="download missing models (GPT-2, tokenizer, ...)")
    _add_quiet(p)
    p.set_defaults(clip=None, dtype="auto", paper=paper)


def _register_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="caption a dataset's test split and score BLEU-1..4, METEOR, ROUGE-L, CIDEr",
        description="DATASET: a captions file or dataset folder (as for `features`), or a feature folder "
        "computed with the model's CLIP.",
    )
    p.add_argument("dataset", metavar="DATASET", help="captions file, dataset folder or feature folder")
    p.add_argument("--model", required=True, help="model id or checkpoint folder")
    p.add_argument("--split", default="test", choices=("test", "train", "all"),
                   help="the images to caption and score (default: test)")
    p.add_argument(
        "--test-images", type=int, metavar="N", help="last N images are the test split (default 1000)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N images of the split")
    _add_dataset_options(p)
    p.add_argument("--out", help="report path (default: eval-<model>-<split>.json); captions go beside it")
    p.add_argument("--batch-size", type=int, metavar="N", default=32, help="images per batch (32)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="image-reading threads (default: CPU cores, at most 8)"
    )
    p.add_argument("--top", default="1,2,5", help="SBG: candidate counts, one table row each (1,2,5)")
    p.add_argument("--seed", type=int, metavar="SEED", default=0, help="sampling seed (SBG)")
    p.add_argument(
        "--metric-tokenizer",
        default="seed",
        choices=("seed", "ptb"),
        help="seed: lower-cased, whitespace-split, as the seed's table; ptb: the COCO PTB tokenizer (Java)",
    )
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (its JVM takes a while to start)")
    _add_quiet(p)
    add_runtime(p)
    p.set_defaults(func=run_evaluate)


def _add_dataset_options(p) -> None:
    p.add_argument("--images", help="images folder of a captions file (default: found beside it)")
    p.add_argument("--format", default="auto", choices=("auto", "flickr", "folder"), dest="dataset_format",
                   help="the dataset's layout (default: auto, detected)")
    p.add_argument(
        "--caption-ext", default=".txt", metavar=".EXT", help="sidecar caption extension of a folder dataset"
    )


def _add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _workers(value: int | None) -> int:
    import os

    return value if value else min(8, os.cpu_count() or 2)


def _verbose(args) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "debug", False):
        logging.getLogger("icg").setLevel(logging.INFO)


# ----------------------------------------------------------------------------------------------- commands
def run_features(args: argparse.Namespace) -> int:
    from icg.commands.common import make_manager
    from icg.models.loading import resolve_clip
    from icg.train.datasets import load_dataset
    from icg.train.features import extract_features, portable_clip

    _verbose(args)
    dataset = load_dataset(
        args.dataset, images_dir=args.images, fmt=args.dataset_format, caption_ext=args.caption_ext
    )
    manager = make_manager(args)
    spec = resolve_clip(None, manager)
    with manager.session():
        encoder = manager.clip(spec)
        store = extract_features(
            dataset,
            encoder,
            args.out,
            clip=portable_clip(spec),
            test_images=args.test_images,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            workers=_workers(args.workers),
            overwrite=args.overwrite,
        )
    train, test = store.split()
    print(
        f"{store.folder}: {len(store.records)} images ({len(train)} train, {len(test)} test), "
        f"{store.dim}-d features of {store.clip_id}"
    )
    return 0


def _train_setup(args, kind: str):
    """Manager, feature store, tokenizer (+ its reference), the starting GPT-2 and (``prefix --init``) the
    starting CLIP-prefix model with its config."""
    from icg.errors import ConfigError
    from icg.models.loading import load_tokenizer, resolve_model
    from icg.models.manager import ModelManager, RuntimeConfig
    from icg.train.features import FeatureStore
    from icg.train.lm import load_lm, tokenizer_reference
    from icg.train.prefix import load_start_model

    _verbose(args)
    store = FeatureStore.open(args.features)
    manager = ModelManager(
        RuntimeConfig(
            device=args.device,
            models_dir=args.models_dir,
            allow_download=args.download,
            tokenizer=args.tokenizer,
        )
    )
    tokenizer_name, lm_source, start = args.tokenizer, args.lm, None
    if args.init:
        if args.lm or args.lm_config:
            raise ConfigError("--init starts from a trained model; leave out --lm and --lm-config")
        if kind == "prefix":
            start = load_start_model(args.init, manager)
            tokenizer_name = tokenizer_name or start[1].tokenizer
        else:
            resolved = resolve_model(args.init, manager)
            if resolved.kind != "sbg":
                raise ConfigError(
                    f"{args.init}: a {resolved.kind} model; `train sbg --init` takes an SBG model"
                )
            lm_source = str(resolved.path)
            tokenizer_name = tokenizer_name or resolved.meta.get("tokenizer")
    if tokenizer_name is None and lm_source and (Path(lm_source) / "tokenizer_config.json").is_file():
        tokenizer_name = lm_source
    tokenizer = load_tokenizer(tokenizer_name, manager)
    lm = None
    if start is None:
        lm = load_lm(
            tokenizer, lm=lm_source, lm_config=args.lm_config, allow_download=args.download, seed=args.seed
        )
    return manager, store, tokenizer, tokenizer_reference(tokenizer_name), lm, start


def _train_config(args) -> TrainConfig:
    """The run asked for: without --epochs the paper's epochs on the paper's schedule; with it, a schedule
    sized for the epochs given unless --schedule-epochs says otherwise."""
    paper: TrainConfig = args.paper
    if args.epochs is None:
        epochs, schedule = paper.epochs, args.schedule_epochs or paper.schedule_epochs
    else:
        epochs, schedule = args.epochs, args.schedule_epochs
    return TrainConfig(
        epochs=epochs,
        schedule_epochs=schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        max_grad_norm=args.clip_grad,
        adam_eps=args.adam_eps,
        drop_last=args.drop_last,
        precision=args.precision,
        seed=args.seed,
        log_every=args.log_every,
        keep=args.keep,
    )


def _report_training(result) -> None:
    loss = result.final_loss
    print(
        f"trained {result.epochs_done} epoch{'' if result.epochs_done == 1 else 's'} ({result.steps} steps)"
        + (f", final loss {loss:.4f}" if loss is not None else "")
    )
    if result.history:
        last = result.history[-1]
        print(f"throughput: {last['samples_per_s']:.1f} samples/s (last epoch)")
        if "val_loss" in last:
            print(f"validation loss: {last['val_loss']:.4f} (last epoch)")
    print(f"checkpoint: {result.checkpoint}")
    print(f"caption with: python -m icg caption --model {result.checkpoint} IMAGE")


def run_train_prefix(args: argparse.Namespace) -> int:
    from icg.train.loop import train
    from icg.train.prefix import PrefixOptions, build_prefix_task

    cfg = _train_config(args)  # validate before loading anything
    manager, store, tokenizer, tokenizer_ref, lm, start = _train_setup(args, "prefix")
    options = PrefixOptions(
        mapper=args.mapper,
        prefix_length=args.prefix_length,
        hidden_dim=args.hidden_dim,
        clip_length=args.clip_length,
        mapper_layers=args.mapper_layers,
        normalize=args.normalize,
        mapper_only=args.mapper_only,
        lowercase=args.lowercase,
        max_tokens=args.max_tokens,
    )
    task = build_prefix_task(
        store,
        lm,
        tokenizer,
        tokenizer_ref=tokenizer_ref,
        options=options,
        test_images=args.test_images,
        val_images=args.val_images,
        start=start,
        start_name=args.init or "the start model",
    )
    result = train(task, cfg, args.out, device=manager.device, resume=args.resume)
    _report_training(result)
    return 0


def run_train_sbg(args: argparse.Namespace) -> int:
    import shutil

    from icg.errors import ModelNotFound
    from icg.models.loading import DEFAULT_VOCABULARY, resolve_clip, resolve_vocabulary
    from icg.sbg.keywords import KeywordSelector
    from icg.sbg.vocab import Vocabulary
    from icg.train.loop import train
    from icg.train.sbg import KEYWORDS_NAME, SbgOptions, build_sbg_task, read_keywords_file, select_keywords

    cfg = _train_config(args)
    SbgOptions(  # validate before loading anything
        lowercase=args.lowercase, max_tokens=args.max_tokens, packing=args.packing, block_size=args.block_size
    )
    manager, store, tokenizer, _, lm, _ = _train_setup(
        args, "sbg"
    )  # the tokenizer goes into every checkpoint
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The vocabulary the checkpoints name: the registry id as is, a user's file copied into the run folder.
    try:
        vocab_path = resolve_vocabulary(args.vocabulary, manager)
    except ModelNotFound:
        if not args.keywords or args.vocabulary:
            raise
        vocab_path = None
        logging.getLogger(__name__).warning(
            "no SBG vocabulary installed: the checkpoints name %s, which captioning images needs",
            DEFAULT_VOCABULARY,
        )
    vocabulary = DEFAULT_VOCABULARY
    if args.vocabulary and vocab_path is not None:
        copy = out / "vocabulary.json"
        if vocab_path.resolve() != copy.resolve():
            shutil.copyfile(vocab_path, copy)
        vocabulary = str(copy.resolve())
    train_records, _ = store.split(args.test_images)
    if args.keywords:
        keywords = read_keywords_file(args.keywords)
    else:
        from icg.sbg.bank import LabelBank

        vocab = Vocabulary.from_json(vocab_path)
        with manager.session():
            encoder = manager.clip(resolve_clip(store.clip, manager))
            bank = LabelBank.build(vocab, encoder, encoder.model_id, manager.models_dir / "cache")
            keywords = select_keywords(store, train_records, KeywordSelector(bank), cache=out / KEYWORDS_NAME)
        manager.unload()
    task = build_sbg_task(
        store,
        lm,
        tokenizer,
        keywords,
        vocabulary=vocabulary,
        options=SbgOptions(
            lowercase=args.lowercase,
            max_tokens=args.max_tokens,
            packing=args.packing,
            block_size=args.block_size,
        ),
        test_images=args.test_images,
        val_images=args.val_images,
        seed=args.seed,
    )
    result = train(task, cfg, out, device=manager.device, resume=args.resume)
    _report_training(result)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from icg.commands.common import make_manager
    from icg.errors import ConfigError
    from icg.eval.evaluate import EvalOptions, evaluate, format_report, write_report
    from icg.eval.metrics import METRICS

    _verbose(args)
    try:
        top = tuple(int(t) for t in args.top.split(",") if t.strip())
    except ValueError as err:
        raise ConfigError(f"--top takes comma-separated counts, like 1,2,5 (got {args.top!r})") from err
    options = EvalOptions(
        split=args.split,
        test_images=args.test_images,
        limit=args.limit,
        batch_size=args.batch_size,
        tokenization=args.metric_tokenizer,
        sbg_top=top,
        seed=args.seed,
        metrics=tuple(m for m in METRICS if not (args.no_meteor and m == "METEOR")),
        workers=_workers(args.workers),
    )
    manager = make_manager(args)
    report = evaluate(manager, args.model, args.dataset, options=options, images_dir=args.images)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.model).name or args.model).strip("-.") or "model"
    out = Path(args.out) if args.out else Path(f"eval-{slug}-{args.split}.json")
    path, captions = write_report(report, out)
    print(format_report(report))
    print(f"report: {path} (captions: {captions})")
    return 0
