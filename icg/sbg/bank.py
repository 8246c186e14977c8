"""The SBG label-feature bank: every prompt the keyword selection scores, encoded once per CLIP model.

The selection (``icg.sbg.keywords``) scores fixed prompt sets built from the vocabulary: the flat
labels, the subject prompts, the sub-category names of each category, the first keywords of every
sub-category, the human groups, occupations and clothing. ``LabelBank.build`` builds those sets as
structured data (``PromptSet``: the label that goes into the keyword list and the prompt text CLIP
reads, side by side, so nothing is ever parsed back out of a prompt), encodes every distinct prompt in
one batched call and caches the features on disk as one safetensors file per CLIP model, keyed by the
sha256 of the CLIP model id and the exact prompt strings. A stale or unreadable cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from icg.sbg.vocab import Vocabulary
from icg.sinks import atomic_write_json, atomic_write_with

logger = logging.getLogger(__name__)

CACHE_FORMAT = "icg-sbg-label-bank"
CACHE_VERSION = 1

#: The five subjects of step 2, in the fixed processing order.
SUBJECTS = ("landscape", "people", "animal", "plant", "some object")
#: Subject -> encyclopedia category for the subjects scored through the hierarchy ("people" is special).
SUBJECT_CATEGORIES = {"landscape": "scenery", "animal": "animal", "plant": "plant", "some object": "object"}
#: Subjects that are active whatever the best subject prompt says.
ALWAYS_ACTIVE_SUBJECTS = ("landscape", "some object")
#: Object sub-categories left out of the "some object" step (clothing has its own step).
EXCLUDED_OBJECT_SUBCATEGORIES = ("clothing and fashion",)
#: Context categories of step 4, in order.
CONTEXT_CATEGORIES = ("time", "weather", "activity")

HUMAN_SINGLES = ("a man", "a woman", "a boy", "a girl", "an old man", "an old woman")
HUMAN_COUNTS = ("two", "three", "four")
HUMAN_PLURALS = ("men", "women", "boys", "girls", "old men", "old women")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "black")
GARMENTS = ("shirt", "suit", "cloth", "jacket")

#: How many keywords of a sub-category are scored (the first ones, in file order).
TERTIARY_LIMIT = 100
#: Default size of the in-memory cache of bare-word features (``word_features``).
WORD_CACHE_SIZE = 4096

#: A label is the keyword a set contributes; the subject set's labels are tuples of subjects.
LabelT = str | tuple[str, ...]


class TextEncoder(Protocol):
    """What the bank needs from CLIP: L2-normalised float32 text features, one row per text."""

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Encode ``texts`` to an ``(N, D)`` float32 tensor of unit rows."""
        ...


@dataclass(frozen=True)
class PromptSet:
    """One candidate set: ``labels[i]`` is what selection yields, ``prompts[i]`` the text CLIP scores."""

    name: str
    labels: tuple[LabelT, ...]
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.prompts):
            raise ValueError(
                f"prompt set {self.name!r}: {len(self.labels)} labels but {len(self.prompts)} prompts"
            )

    def __len__(self) -> int:
        return len(self.prompts)


def _picture_of(name: str, labels: Iterable[LabelT]) -> PromptSet:
    labels = tuple(labels)
    return PromptSet(name, labels, tuple(f"picture of {label}." for label in labels))


def subject_set() -> PromptSet:
    """The 25 subject prompts: singles, then pairs, then triples (``itertools.combinations`` order)."""
    groups = [combo for size in (1, 2, 3) for combo in itertools.combinations(SUBJECTS, size)]
    return PromptSet("subjects", tuple(groups), tuple(f"picture of {' and '.join(g)}." for g in groups))


def human_group_set() -> PromptSet:
    """The 28 human group prompts: 6 singles, count x plural (outer loop count), counted people, crowd."""
    labels = list(HUMAN_SINGLES)
    labels += [f"{count} {plural}" for count in HUMAN_COUNTS for plural in HUMAN_PLURALS]
    labels += [f"{count} people" for count in HUMAN_COUNTS]
    labels.append("a crowd of people")
    return _picture_of("human", labels)


def clothing_set() -> PromptSet:
    """The 40 prompts "wearing {colour} {garment}." (outer loop garment); label "{colour} {garment}"."""
    pairs = [(colour, garment) for garment in GARMENTS for colour in COLOURS]
    return PromptSet(
        "clothing",
        tuple(f"{colour} {garment}" for colour, garment in pairs),
        tuple(f"wearing {colour} {garment}." for colour, garment in pairs),
    )


def subject_subcategories(vocab: Vocabulary, category: str) -> tuple[str, ...]:
    """The sub-categories a subject step chooses from (``object`` without "clothing and fashion")."""
    excluded = EXCLUDED_OBJECT_SUBCATEGORIES if category == "object" else ()
    return tuple(sub for sub in vocab.subcategories(category) if sub not in excluded)


def tertiary_name(category: str, subcategory: str) -> str:
    """The set name of a sub-category's keywords, e.g. ``"scenery/beach"`` (categories hold no ``/``)."""
    return f"{category}/{subcategory}"


def build_prompt_sets(vocab: Vocabulary, tertiary_limit: int = TERTIARY_LIMIT) -> dict[str, PromptSet]:
    """Every prompt set the selection scores, by name, in a fixed order (the order fixes the cache key).

    Names: ``flat``, ``subjects``, ``scenery``, ``animal``, ``plant``, ``object``, ``human``,
    ``occupation``, ``clothing``, ``time``, ``weather``, ``activity`` and ``"{category}/{sub}"`` for the
    first ``tertiary_limit`` keywords of each sub-category of scenery, animal, plant, object (without
    the excluded ones) and activity. Sub-categories with an empty keyword list get no tertiary set.
    """
    flat = vocab.flat_labels()
    sets = [PromptSet("flat", flat, flat), subject_set()]
    for category in SUBJECT_CATEGORIES.values():
        sets.append(_picture_of(category, subject_subcategories(vocab, category)))
    sets += [human_group_set(), _picture_of("occupation", vocab.word_list("human")), clothing_set()]
    for category in ("time", "weather"):
        subs = vocab.subcategories(category)
        sets.append(PromptSet(category, subs, tuple(f"picture during {sub}." for sub in subs)))
    activities = vocab.subcategories("activity")
    sets.append(PromptSet("activity", activities, tuple(f"activity is {sub}." for sub in activities)))

    for category in SUBJECT_CATEGORIES.values():
        for sub in subject_subcategories(vocab, category):
            words = vocab.keywords(category, sub)[:tertiary_limit]
            if words:
                sets.append(_picture_of(tertiary_name(category, sub), words))
    for sub in activities:
        words = vocab.keywords("activity", sub)[:tertiary_limit]
        if words:
            sets.append(
                PromptSet(tertiary_name("activity", sub), words, tuple(f"activity is {w}." for w in words))
            )
    return {s.name: s for s in sets}


def cache_key(clip_id: str, prompts: Sequence[str]) -> str:
    """sha256 over the bank format, the CLIP model id and the exact prompt strings, in order."""
    payload = json.dumps(
        {"format": CACHE_FORMAT, "version": CACHE_VERSION, "clip_id": clip_id, "prompts": list(prompts)},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cache_paths(cache_dir: str | os.PathLike, clip_id: str) -> tuple[str, str]:
    """The cache file and its JSON sidecar for one CLIP model (one bank per model; rebuilt when stale)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", clip_id).strip("-.")[:60] or "clip"
    digest = hashlib.sha256(clip_id.encode("utf-8")).hexdigest()[:10]
    stem = os.path.join(os.fspath(cache_dir), f"sbg-bank-{slug}-{digest}")
    return stem + ".safetensors", stem + ".json"


class LabelBank:
    """Cached CLIP text features of every SBG prompt set, plus bare-word features for the final ordering.

    Use ``LabelBank.build``; ``features(name)`` gives a set's ``(N, D)`` matrix (rows in set order) and
    ``word_features(words)`` the features of bare keywords.
    """

    def __init__(
        self,
        sets: dict[str, PromptSet],
        prompts: Sequence[str],
        features: torch.Tensor,
        encoder: TextEncoder,
        clip_id: str,
        key: str,
        word_cache_size: int = WORD_CACHE_SIZE,
    ) -> None:
        if features.ndim != 2 or features.shape[0] != len(prompts):
            raise ValueError(f"features {tuple(features.shape)} do not match {len(prompts)} prompts")
        self.clip_id = clip_id
        self.key = key
        self.encoder = encoder
        self.prompts = tuple(prompts)
        self._sets = dict(sets)
        self._row = {prompt: i for i, prompt in enumerate(self.prompts)}
        self._all = features
        self._matrices = {
            name: features[torch.tensor([self._row[p] for p in s.prompts], dtype=torch.long)]
            for name, s in self._sets.items()
        }
        self._word_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._word_cache_size = word_cache_size
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        vocab: Vocabulary,
        encoder: TextEncoder,
        clip_id: str,
        cache_dir: str | os.PathLike | None = None,
        *,
        tertiary_limit: int = TERTIARY_LIMIT,
        word_cache_size: int = WORD_CACHE_SIZE,
    ) -> LabelBank:
        """Build every prompt set of ``vocab`` and their features, from ``cache_dir`` when it is valid.

        Distinct prompts are encoded in one ``encoder.encode_texts`` call (the encoder batches). With
        ``cache_dir=None`` nothing touches the disk.
        """
        sets = build_prompt_sets(vocab, tertiary_limit)
        prompts = list(dict.fromkeys(p for s in sets.values() for p in s.prompts))
        key = cache_key(clip_id, prompts)
        features = None
        paths = cache_paths(cache_dir, clip_id) if cache_dir is not None else None
        if paths is not None:
            features = _read_cache(*paths, key=key, prompts=prompts)
        if features is None:
            start = time.perf_counter()
            features = _encode(encoder, prompts).cpu()
            logger.info(
                "encoded %d SBG prompts with %s in %.1f s", len(prompts), clip_id, time.perf_counter() - start
            )
            if paths is not None:
                _write_cache(*paths, features=features, key=key, clip_id=clip_id, prompts=prompts)
        return cls(sets, prompts, features, encoder, clip_id, key, word_cache_size)

    # ---------------------------------------------------------------------------------- access

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self._all.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the features live (image features are moved here for scoring)."""
        return self._all.device

    def names(self) -> tuple[str, ...]:
        """Names of all prompt sets, in build order."""
        return tuple(self._sets)

    def __contains__(self, name: object) -> bool:
        return name in self._sets

    def prompt_set(self, name: str) -> PromptSet:
        """The prompt set called ``name`` (``KeyError`` when absent)."""
        return self._sets[name]

    def features(self, name: str) -> torch.Tensor:
        """The ``(N, D)`` features of set ``name``, row ``i`` for ``prompt_set(name).prompts[i]``."""
        return self._matrices[name]

    def tertiary(self, category: str, subcategory: str) -> PromptSet | None:
        """The keyword set of one sub-category, or None when it has no keywords (or is excluded)."""
        return self._sets.get(tertiary_name(category, subcategory))

    def to(self, device: torch.device | str) -> LabelBank:
        """Move all features (and cached word features) to ``device``, in place; returns ``self``."""
        with self._lock:
            self._all = self._all.to(device)
            self._matrices = {name: m.to(device) for name, m in self._matrices.items()}
            self._word_cache = OrderedDict((w, f.to(device)) for w, f in self._word_cache.items())
        return self

    def word_features(self, words: Sequence[str]) -> torch.Tensor:
        """``(len(words), D)`` features of bare keywords: bank rows where the bare word is a prompt
        (the flat labels), otherwise encoded once (one batched call for all missing words) and kept in
        a small LRU cache."""
        rows: list[torch.Tensor | None] = []
        with self._lock:
            for word in words:
                if word in self._row:
                    rows.append(self._all[self._row[word]])
                elif word in self._word_cache:
                    self._word_cache.move_to_end(word)
                    rows.append(self._word_cache[word])
                else:
                    rows.append(None)
        missing = list(dict.fromkeys(w for w, r in zip(words, rows) if r is None))
        if missing:
            encoded = dict(zip(missing, _encode(self.encoder, missing).to(self.device)))
            with self._lock:
                for word, feature in encoded.items():
                    self._word_cache[word] = feature
                    self._word_cache.move_to_end(word)
                while len(self._word_cache) > self._word_cache_size:
                    self._word_cache.popitem(last=False)
            rows = [encoded[w] if r is None else r for w, r in zip(words, rows)]
        if not rows:
            return self._all.new_zeros((0, self.dim))
        return torch.stack(rows)


# -------------------------------------------------------------------------------------- helpers


def _encode(encoder: TextEncoder, texts: list[str]) -> torch.Tensor:
    """Call the encoder and check what comes back: ``(len(texts), D)`` floats, kept as float32."""
    with torch.no_grad():
        out = encoder.encode_texts(list(texts))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(texts):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"encode_texts returned {shape} for {len(texts)} texts; expected ({len(texts)}, D)")
    return out.detach().to(dtype=torch.float32).contiguous()


def _read_cache(path: str, sidecar: str, *, key: str, prompts: list[str]) -> torch.Tensor | None:
    """The cached features if the cache exists and matches ``key`` exactly, else None (logged)."""
    if not os.path.exists(path) and not os.path.exists(sidecar):
        logger.debug("no SBG bank cache at %s", path)
        return None
    try:
        from safetensors import safe_open

        with open(sidecar, encoding="utf-8") as handle:
            info = json.load(handle)
        if not isinstance(info, dict) or info.get("key") != key:
            logger.info("SBG bank cache %s is stale (vocabulary or CLIP model changed); rebuilding", path)
            return None
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                raise ValueError("its metadata does not match its sidecar")
            if json.loads(meta.get("prompts", "null")) != prompts:
                raise ValueError("its prompt index does not match the vocabulary")
            features = handle.get_tensor("features")
        if features.dtype != torch.float32 or features.ndim != 2 or features.shape[0] != len(prompts):
            raise ValueError(f"features have dtype {features.dtype} and shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features hold non-finite values")
    except Exception as err:  # a cache: anything unreadable is rebuilt, never fatal
        logger.warning("SBG bank cache %s is unreadable (%s); rebuilding", path, err)
        return None
    logger.info("loaded %d SBG prompt features from %s", len(prompts), path)
    return features


def _write_cache(
    path: str, sidecar: str, *, features: torch.Tensor, key: str, clip_id: str, prompts: list[str]
) -> None:
    """Write the features (safetensors, prompt index in its metadata) then the sidecar, each atomically.

    A failure (read-only folder, full disk) is logged and ignored: the bank works from memory.
    """
    from safetensors.torch import save_file

    meta = {
        "format": CACHE_FORMAT,
        "version": str(CACHE_VERSION),
        "key": key,
        "clip_id": clip_id,
        "prompts": json.dumps(prompts, ensure_ascii=False),
    }
    info = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": key,
        "clip_id": clip_id,
        "prompts": len(prompts),
        "dim": int(features.shape[1]),
        "file": os.path.basename(path),
    }
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        atomic_write_with(path, lambda tmp: save_file({"features": features.cpu().contiguous()}, tmp, meta))
        atomic_write_json(sidecar, info)
    except Exception as err:  # a cache: failing to write it (read-only folder, full disk) is not fatal
        logger.warning("could not write the SBG bank cache %s (%s); continuing without it", path, err)
        return
    logger.info("cached %d SBG prompt features in %s", len(prompts), path)
