"""SBG training: keywords for every training image, then GPT-2 fine-tuned on ``"kw, kw ### caption<eos>"``.

Keywords come from the keyword selector (``icg.sbg.keywords``) over the CLIP features of a feature
folder, with the published vocabulary by default; they are computed once and kept in
``keywords.jsonl`` in the run folder (``--keywords FILE`` gives fixed ones instead). Each (image, caption)
pair is one line; the prompt ``"kw1, kw2 ###"`` is tokenised exactly as the captioner tokenises it, and
the caption follows with a leading space and the end-of-text token. Two ways to train on the lines:

- packed (the default, the seed's notebook): the lines, shuffled once, are concatenated and cut into
  blocks of ``block_size`` (480) tokens with the loss on every token, keywords included;
- line by line (``packing=False``): one line per example, right-padded, the loss on the caption part
  only (prompt and padding are -100).

The images just before the test split can be held out (``val_images``): their lines, in the same form,
give a validation loss after every epoch.

Checkpoints are Hugging Face GPT-2 folders (``config.json`` + ``model.safetensors``) with the tokenizer
and an ``icg.json`` naming the vocabulary and CLIP, so ``--model <epoch folder>`` captions with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from icg.errors import ConfigError
from icg.sbg.keywords import SEPARATOR
from icg.train.config import SBG_BLOCK_SIZE
from icg.train.features import FeatureRecord, FeatureStore
from icg.train.loop import trainable
from icg.train.prefix import seed_max_length

log = logging.getLogger(__name__)

KEYWORDS_NAME = "keywords.jsonl"
ICG_JSON = "icg.json"


@dataclass(frozen=True)
class SbgOptions:
    lowercase: bool = True
    max_tokens: int | None = None  # line by line: caption tokens kept; None: min(mean + 10 std, max)
    packing: bool = True  # the seed's packed blocks, loss on every token
    block_size: int = SBG_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("--max-tokens must be at least 1")
        if self.packing and self.max_tokens is not None:
            raise ConfigError(
                "--max-tokens cuts captions in line-by-line training (--no-packing); packed blocks keep "
                "whole lines"
            )
        if self.block_size < 2:
            raise ConfigError(f"--block-size must be at least 2, not {self.block_size}")


def prompt_text(keywords: list[str]) -> str:
    """The generator prompt, exactly as the SBG captioner builds it."""
    return f"{', '.join(keywords)} {SEPARATOR}"


# ------------------------------------------------------------------------------------------- keywords
def read_keywords_file(path: str | Path) -> dict[str, list[str]]:
    """Fixed keywords: JSONL lines ``{"image": name, "keywords": [...]}`` or one JSON object
    ``{name: [...]}``; a keyword list may also be one comma-separated string."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: can't read the keywords file ({err.strerror or err})") from err
    try:
        stripped = text.lstrip()
        if stripped.startswith("{") and "\n{" not in stripped:
            data = json.loads(text)
            pairs = list(data.items())
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            pairs = [(row["image"], row["keywords"]) for row in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f'{path}: expected JSON lines {{"image": ..., "keywords": [...]}} ({err})') from err
    out = {}
    for image, words in pairs:
        if isinstance(words, str):
            words = words.split(",")
        out[str(image)] = [" ".join(str(w).split()) for w in words if str(w).strip()]
    return out


def select_keywords(
    store: FeatureStore,
    records: list[FeatureRecord],
    selector,
    *,
    cache: Path | None = None,
    batch_size: int = 256,
) -> dict[str, list[str]]:
    """Keywords of every record's image by ``selector`` (a ``KeywordSelector``), cached in ``cache``
    (JSONL, reused when it was made for the same features and vocabulary)."""
    key = _selection_key(store, selector)
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, key)
        if cached is not None and all(r.image in cached for r in records):
            log.info("keywords of %d images read from %s", len(records), cache)
            return cached
    features = torch.nn.functional.normalize(store.features(), dim=-1)
    out: dict[str, list[str]] = {}
    for first in range(0, len(records), batch_size):
        chunk = records[first : first + batch_size]
        rows = features[[r.row for r in chunk]]
        for record, selection in zip(chunk, selector.select(rows)):
            out[record.image] = selection.texts
        log.info("keywords: %d/%d images", min(first + batch_size, len(records)), len(records))
    if cache is not None:
        lines = [json.dumps({"key": key})] + [
            json.dumps({"image": image, "keywords": words}, ensure_ascii=False)
            for image, words in out.items()
        ]
        cache.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _selection_key(store: FeatureStore, selector) -> str:
    payload = json.dumps(
        {
            "features": store.manifest["fingerprint"],
            "bank": selector.bank.key,
            "config": asdict(selector.config),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_cache(path: Path, key: str) -> dict[str, list[str]] | None:
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if not lines or lines[0].get("key") != key:
        return None
    return {row["image"]: list(row["keywords"]) for row in lines[1:]}


# ------------------------------------------------------------------------------------------- data
def example_tokens(
    tokenizer, keywords: list[str], caption: str, *, max_caption: int | None, positions: int | None
) -> tuple[list[int], int]:
    """(token ids, prompt length) of one line ``"kw, kw ### caption<eos>"``. With ``positions``, keywords
    are dropped from the end (the least relevant) until the line fits, as the captioner does."""
    eos = tokenizer.eos_token_id
    caption_ids = tokenizer(" " + caption.strip(), add_special_tokens=False)["input_ids"] + [eos]
    if max_caption is not None:
        caption_ids = caption_ids[:max_caption]
    words = list(keywords)
    while True:
        prompt_ids = tokenizer(prompt_text(words), add_special_tokens=False)["input_ids"]
        if positions is None or len(prompt_ids) + len(caption_ids) <= positions or not words:
            break
        words.pop()
    ids = prompt_ids + caption_ids
    return (ids if positions is None else ids[:positions]), len(prompt_ids)


def pack_lines(lines: list[list[int]], block_size: int) -> list[list[int]]:
    """The seed's ``group_texts``: the lines' tokens concatenated and cut into blocks of ``block_size``; the
    remainder is dropped, except that a corpus shorter than one block is one (short) block."""
    flat = [token for line in lines for token in line]
    if len(flat) < block_size:
        return [flat] if flat else []
    end = len(flat) // block_size * block_size
    return [flat[i : i + block_size] for i in range(0, end, block_size)]


class SbgDataset(torch.utils.data.Dataset):
    """(token ids, length of the part without loss) per example: one line (its prompt length) or one
    packed block (0: the loss covers every token)."""

    def __init__(self, examples: list[tuple[list[int], int]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.examples[index]


def collate_sbg(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids; labels are the ids on the caption part and -100 on the prompt and padding."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(items):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return {"input_ids": input_ids, "labels": labels}


class SbgTask:
    """The SBG generator, its data and checkpoint format, for ``icg.train.loop.train``."""

    def __init__(
        self,
        model,
        tokenizer,
        dataset: SbgDataset,
        *,
        settings: dict[str, Any],
        facts: dict[str, Any],
        val_dataset: SbgDataset | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.settings = settings
        self.facts = facts
        self.pad_id = tokenizer.eos_token_id

    def collate(self, items):
        return collate_sbg(items, self.pad_id)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def parameters(self) -> list[torch.nn.Parameter]:
        return trainable(self.model.parameters())

    def set_train_mode(self) -> None:
        return None

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        with _quiet_transformers():
            self.model.save_pretrained(str(folder), safe_serialization=True)
            self.tokenizer.save_pretrained(str(folder))
        (folder / ICG_JSON).write_text(json.dumps(self.settings, indent=2) + "\n", encoding="utf-8")

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / "model.safetensors"))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [
            k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".masked_bias"))
        ]
        if missing or unexpected:
            raise ConfigError(
                f"{folder}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.model.tie_weights()

    def describe(self) -> dict[str, Any]:
        return {"kind": "sbg", **self.facts}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bar from ``save_pretrained`` (transformers 5 shows one per checkpoint)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def build_sbg_task(
    store: FeatureStore,
    lm,
    tokenizer,
    keywords: dict[str, list[str]],
    *,
    vocabulary: str,
    tokenizer_ref: str | None = None,
    options: SbgOptions | None = None,
    test_images: int | None = None,
    val_images: int | None = 0,
    seed: int = 0,
) -> SbgTask:
    """Model + data for the training split of ``store``; ``keywords`` maps image names to keyword lists.

    ``val_images`` images before the test split are held out for a validation loss (None: as many as the
    test split). ``seed`` orders the lines before they are packed. ``vocabulary`` is what the
    checkpoints' ``icg.json`` names for captioning: a registry id or the path of a ``vocabulary.json``.
    The tokenizer is saved into every checkpoint unless ``tokenizer_ref`` names one."""
    options = options or SbgOptions()
    train_records, val_records = store.training_split(test_images, val_images)
    missing = [r.image for r in train_records + val_records if r.image not in keywords]
    if missing:
        raise ConfigError(f"no keywords for {len(missing)} training image(s) (first: {missing[0]})")
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-text token")
    positions = int(getattr(lm.config, "n_positions", 1024) or 1024)
    if options.packing and options.block_size > positions:
        raise ConfigError(
            f"--block-size {options.block_size} is longer than the model's {positions} positions; "
            f"pass --block-size {positions} or less"
        )

    def lines_of(records: list[FeatureRecord]) -> list[tuple[list[str], str]]:
        return [
            (keywords[r.image], c.lower() if options.lowercase else c) for r in records for c in r.captions
        ]

    lines, val_lines = lines_of(train_records), lines_of(val_records)
    if options.packing:
        order = random.Random(seed)
        order.shuffle(lines)
        order.shuffle(val_lines)

        def examples_of(pairs):
            ids = [example_tokens(tokenizer, k, c, max_caption=None, positions=None)[0] for k, c in pairs]
            return [(block, 0) for block in pack_lines(ids, options.block_size)]

    else:
        max_caption = options.max_tokens
        if max_caption is None:
            lengths = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) + 1 for _, c in lines]
            max_caption = seed_max_length(lengths)

        def examples_of(pairs):
            return [
                example_tokens(tokenizer, k, c, max_caption=max_caption, positions=positions)
                for k, c in pairs
            ]

    examples, val_examples = examples_of(lines), examples_of(val_lines)
    settings = {
        "format": "icg-sbg",
        "version": 1,
        "vocabulary": vocabulary,
        "clip": store.clip,
        "decoding": {},
    }
    if tokenizer_ref is not None:
        settings["tokenizer"] = tokenizer_ref
    facts = {
        "features": store.manifest["fingerprint"],
        "test_images": store.test_images if test_images is None else test_images,
        "lm": {
            k: getattr(lm.config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        },
        "keywords": hashlib.sha256(json.dumps(keywords, sort_keys=True).encode("utf-8")).hexdigest(),
        "options": asdict(options),
        "line_order_seed": seed if options.packing else None,
    }
    if val_records:  # recorded only when used, so runs made before validation existed still resume
        facts["val_images"] = len(val_records)
    log.info(
        "SBG data: %d images, %d lines, %d %s of up to %d tokens; %d validation images (%d examples)",
        len(train_records),
        len(lines),
        len(examples),
        "packed blocks" if options.packing else "lines",
        max((len(ids) for ids, _ in examples), default=0),
        len(val_records),
        len(val_examples),
    )
    return SbgTask(
        lm,
        tokenizer,
        SbgDataset(examples),
        settings=settings,
        facts=facts,
        val_dataset=SbgDataset(val_examples) if val_examples else None,
    )
