"""CLIP-prefix training: a mapping network turns each CLIP feature into a GPT-2 prefix, and GPT-2 learns
to continue the prefix with the image's caption (ClipCap; the seed's Flickr8k/30k recipe).

Each training example is one (image, caption) pair: the caption is tokenised, the end-of-text token
appended, and the loss is taken on the caption tokens only (prefix positions and padding are -100).
``mapper_only`` freezes GPT-2 (ClipCap's "train only the prefix" variant). Checkpoints are the
project's CLIP-prefix folders (``config.json`` + ``model.safetensors``), loadable with ``--model``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from icg.captioners.mappers import MAPPER_KINDS, MapperConfig, build_mapper
from icg.captioners.prefix import (
    LM_KEYS,  # the GPT-2 fields a CLIP-prefix config records
    PrefixCaptionModel,
    PrefixModelConfig,
    load_prefix_model,
    save_prefix_model,
)
from icg.errors import ConfigError
from icg.train.features import FeatureRecord, FeatureStore
from icg.train.loop import trainable

log = logging.getLogger(__name__)

#: The reference decoding of the published numbers, saved as the checkpoint's default.
REFERENCE_DECODING = {"strategy": "greedy", "max_new_tokens": 67, "stop": "."}


@dataclass(frozen=True)
class PrefixOptions:
    """Model and data settings of a CLIP-prefix run (defaults: the published Flickr8k model)."""

    mapper: str = "mlp"
    prefix_length: int = 10
    hidden_dim: int | None = None  # mlp: default prefix_length * width // 2 (3840 for GPT-2)
    clip_length: int = 10  # transformer mapper
    mapper_layers: int = 8  # transformer mapper
    mapper_heads: int = 8  # transformer mapper
    normalize: bool = True  # L2-normalise the CLIP features (the published models do)
    mapper_only: bool = False  # freeze GPT-2
    lowercase: bool = True  # the seed lowercased every caption
    max_tokens: int | None = None  # caption tokens kept; None: min(mean + 10 std, max) as the seed

    def __post_init__(self) -> None:
        if self.mapper not in MAPPER_KINDS:
            raise ConfigError(f"--mapper must be one of {', '.join(MAPPER_KINDS)}, not {self.mapper!r}")
        if self.prefix_length < 1 or (self.max_tokens is not None and self.max_tokens < 1):
            raise ConfigError("--prefix-length and --max-tokens must be at least 1")


def caption_tokens(
    tokenizer, captions: list[str], lowercase: bool, max_tokens: int | None
) -> list[list[int]]:
    """Token ids of each caption with the end-of-text token appended, cut to the length limit."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no end-of-text token")
    texts = [c.lower() if lowercase else c for c in captions]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    limit = max_tokens if max_tokens is not None else seed_max_length([len(t) for t in ids])
    return [t[:limit] for t in ids]


def seed_max_length(lengths: list[int]) -> int:
    """The seed's cap on caption length: min(mean + 10 * std, max)."""
    if not lengths:
        return 1
    lens = torch.tensor(lengths, dtype=torch.float32)
    std = float(lens.std()) if len(lengths) > 1 else 0.0
    return max(1, min(int(float(lens.mean()) + std * 10), int(lens.max())))


class PrefixDataset(torch.utils.data.Dataset):
    """(feature, caption tokens) pairs, one per caption of every training image."""

    def __init__(self, features: torch.Tensor, records: list[FeatureRecord], tokens: list[list[int]]) -> None:
        pairs = [(r.row, c) for r in records for c in range(len(r.captions))]
        if len(pairs) != len(tokens):
            raise ValueError("one token list per caption expected")
        self.features = features
        self.rows = [row for row, _ in pairs]
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[int]]:
        return self.features[self.rows[index]], self.tokens[index]


def collate_prefix(items: list[tuple[torch.Tensor, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the captions; labels are the tokens with -100 on the padding."""
    width = max(len(t) for _, t in items)
    tokens = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (_, ids) in enumerate(items):
        tokens[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(ids)
    return {"features": torch.stack([f for f, _ in items]).float(), "tokens": tokens, "labels": labels}


class PrefixTask:
    """The CLIP-prefix model, its data and checkpoint format, for ``icg.train.loop.train``."""

    def __init__(
        self,
        model: PrefixCaptionModel,
        config: PrefixModelConfig,
        dataset: PrefixDataset,
        *,
        pad_id: int,
        options: PrefixOptions,
        facts: dict[str, Any],
        val_dataset: PrefixDataset | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.pad_id = pad_id
        self.options = options
        self.facts = facts
        if options.mapper_only:
            model.freeze_lm()

    def collate(self, items):
        return collate_prefix(items, self.pad_id)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["features"], batch["tokens"], batch["labels"]).loss

    def parameters(self) -> list[torch.nn.Parameter]:
        return trainable(self.model.parameters())

    def set_train_mode(self) -> None:
        if self.options.mapper_only:
            self.model.gpt.eval()  # frozen GPT-2 runs without dropout, as in ClipCap's prefix-only variant

    def save(self, folder: Path) -> None:
        save_prefix_model(self.model, self.config, folder)

    def load(self, folder: Path) -> None:
        loaded, _ = load_prefix_model(folder)
        self.model.load_state_dict(loaded.state_dict())

    def describe(self) -> dict[str, Any]:
        return {"kind": "clip-prefix", **self.facts}


def load_start_model(name: str, manager) -> tuple[PrefixCaptionModel, PrefixModelConfig]:
    """A CLIP-prefix model to continue training from (``--init``): a registry id, a folder or a ``.pt``.
    Registry facts (CLIP, normalisation) win over the stored config, as when captioning."""
    from icg.models.loading import DEFAULT_CLIP, resolve_model

    resolved = resolve_model(name, manager)
    if resolved.kind != "clip-prefix":
        raise ConfigError(f"{name}: a {resolved.kind} model; `train prefix --init` takes a CLIP-prefix model")
    model, cfg = load_prefix_model(resolved.path)
    if resolved.entry is not None:
        cfg = replace(cfg, normalize=resolved.entry.normalize, clip=dict(resolved.entry.clip or DEFAULT_CLIP))
    return model, cfg


def _check_clip(store: FeatureStore, cfg: PrefixModelConfig, name: str) -> None:
    """The features must come from the CLIP the start model was trained on."""
    if cfg.mapper.clip_dim != store.dim:
        raise ConfigError(
            f"{name} maps {cfg.mapper.clip_dim}-d CLIP features, but {store.folder} holds {store.dim}-d ones"
        )
    if not cfg.clip:
        log.warning("%s does not record its CLIP; make sure %s used the same one", name, store.folder)
        return
    ours, theirs = store.clip, dict(cfg.clip)
    same = (
        (ours.get("arch"), ours.get("pretrained")) == (theirs.get("arch"), theirs.get("pretrained"))
        if theirs.get("pretrained")
        else ours.get("weights_path") == theirs.get("weights_path")
    )
    if not same:
        trained_on = f"{theirs.get('arch')}/{theirs.get('pretrained') or theirs.get('weights_path')}"
        raise ConfigError(
            f"{name} was trained on CLIP {trained_on}, but {store.folder} holds features of "
            f"{store.clip_id}; extract features with that CLIP (--clip)"
        )


def build_prefix_task(
    store: FeatureStore,
    lm,
    tokenizer,
    *,
    tokenizer_ref: str,
    options: PrefixOptions | None = None,
    test_images: int | None = None,
    val_images: int | None = 0,
    start: tuple[PrefixCaptionModel, PrefixModelConfig] | None = None,
    start_name: str = "the start model",
) -> PrefixTask:
    """Model + data for training on the training split of ``store``: a new mapper on GPT-2 ``lm``, or
    the whole of ``start`` (a trained model and its config: its mapper, GPT-2 and normalisation).
    ``val_images`` images before the test split are held out for a validation loss after every epoch."""
    options = options or PrefixOptions()
    if start is not None:
        _check_clip(store, start[1], start_name)
        if options.normalize != start[1].normalize:
            log.info(
                "%s was trained on %snormalised features; keeping that",
                start_name,
                "" if start[1].normalize else "un",
            )
        options = replace(
            options,
            normalize=start[1].normalize,
            mapper=start[1].mapper.kind,
            prefix_length=start[1].prefix_length,
            hidden_dim=start[1].mapper.hidden_dim,
        )
        lm = start[0].gpt
    train_records, val_records = store.training_split(test_images, val_images)
    captions = [c for r in train_records + val_records for c in r.captions]
    tokens = caption_tokens(tokenizer, captions, options.lowercase, options.max_tokens)
    held_out = sum(len(r.captions) for r in val_records)
    tokens, val_tokens = tokens[: len(tokens) - held_out], tokens[len(tokens) - held_out :]
    features = store.features()
    if options.normalize:
        features = torch.nn.functional.normalize(features, dim=-1)
    width = lm.get_input_embeddings().weight.shape[1]
    mapper_cfg = (
        start[1].mapper
        if start is not None
        else MapperConfig(
            options.mapper,
            store.dim,
            width,
            options.prefix_length,
            hidden_dim=(options.hidden_dim or width * options.prefix_length // 2)
            if options.mapper == "mlp"
            else None,
            clip_length=options.clip_length if options.mapper == "transformer" else None,
            num_layers=options.mapper_layers if options.mapper == "transformer" else None,
            num_heads=options.mapper_heads,
        )
    )
    lm_cfg = {k: getattr(lm.config, k) for k in LM_KEYS}
    config = PrefixModelConfig(
        mapper=mapper_cfg,
        lm=lm_cfg,
        normalize=options.normalize,
        clip=store.clip,
        tokenizer=tokenizer_ref,
        decoding=dict(REFERENCE_DECODING),
    )
    if start is not None:
        model = start[0].train()
    else:
        model = PrefixCaptionModel(build_mapper(mapper_cfg), lm, options.prefix_length)
    facts = {
        "features": store.manifest["fingerprint"],
        "test_images": store.test_images if test_images is None else test_images,
        "mapper": asdict(mapper_cfg),
        "lm": lm_cfg,
        "tokenizer": tokenizer_ref,
        "options": asdict(options),
        "start": start_name if start is not None else None,
    }
    if val_records:  # recorded only when used, so runs made before validation existed still resume
        facts["val_images"] = len(val_records)
    log.info(
        "CLIP-prefix data: %d images, %d captions, up to %d tokens each; %d validation images",
        len(train_records),
        len(tokens),
        max((len(t) for t in tokens), default=0),
        len(val_records),
    )
    return PrefixTask(
        model,
        config,
        PrefixDataset(features, train_records, tokens),
        pad_id=tokenizer.eos_token_id,
        options=options,
        facts=facts,
        val_dataset=PrefixDataset(features, val_records, val_tokens) if val_records else None,
    )
