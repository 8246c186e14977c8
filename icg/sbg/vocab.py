"""The SBG keyword vocabulary and category hierarchy ("encyclopedia").

The published data are two pickles: ``all_labels.pkl`` (a list of ``(keyword, pos, frequency)``, most
frequent first) and ``encyclopedia.pkl`` (categories ``scenery``, ``animal``, ``plant``, ``object``,
``activity``, ``weather``, ``time`` mapping sub-category names to keyword lists, and flat word lists
``human``, ``number``, ``adverb``, ``adjective``). ``convert_pickles`` reads them once with an unpickler
that refuses every global and writes one ``vocabulary.json``; the library only ever loads that JSON::

    {"format": "icg-sbg-vocabulary", "version": 1,
     "labels": [[keyword, pos, frequency], ...],
     "encyclopedia": {"scenery": {"sky": ["cloud", ...], ...}, "human": ["man", ...], ...}}

Validation rejects structural problems only (wrong types, unknown or missing categories, empty
categories, duplicate names); it keeps the published content as it is, including the sub-categories
whose keyword list is empty (``scenery/grassland``, ``weather/thunder``, ...).

This module imports no torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from icg.errors import VocabularyError
from icg.sinks import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT = "icg-sbg-vocabulary"
VERSION = 1

#: Categories that map sub-category names to keyword lists, in the published order.
HIERARCHY_CATEGORIES = ("scenery", "animal", "plant", "object", "activity", "weather", "time")
#: Categories that are flat word lists.
WORD_LIST_CATEGORIES = ("human", "number", "adverb", "adjective")
CATEGORIES = HIERARCHY_CATEGORIES + WORD_LIST_CATEGORIES

DEFAULT_FLAT_POS = ("NOUN", "ADV", "ADJ")
DEFAULT_FLAT_COUNT = 1000


@dataclass(frozen=True)
class Label:
    """One vocabulary entry: the keyword, its part of speech (spaCy tag) and its corpus frequency."""

    keyword: str
    pos: str
    frequency: int


@dataclass(frozen=True)
class Vocabulary:
    """The validated vocabulary: labels in file order plus the category hierarchy (read-only)."""

    labels: tuple[Label, ...]
    hierarchy: Mapping[str, Mapping[str, tuple[str, ...]]]
    word_lists: Mapping[str, tuple[str, ...]]
    source: str = "<memory>"

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Vocabulary:
        """Load and validate a ``vocabulary.json``; every problem raises ``VocabularyError`` naming it."""
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise VocabularyError(f"{source}: can't read the vocabulary: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise VocabularyError(f"{source}: the vocabulary is not UTF-8 text ({err})") from err
        try:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except _DuplicateKey as err:
            raise VocabularyError(f"{source}: duplicate key {err.key!r} in a JSON object") from None
        except json.JSONDecodeError as err:
            raise VocabularyError(
                f"{source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
            ) from err
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<memory>") -> Vocabulary:
        """Validate the JSON structure (``format``, ``version``, ``labels``, ``encyclopedia``)."""
        if not isinstance(data, Mapping):
            raise VocabularyError(f"{source}: the vocabulary must be a JSON object, got {_kind(data)}")
        expected = {"format", "version", "labels", "encyclopedia"}
        unknown = sorted(set(data) - expected)
        if unknown:
            raise VocabularyError(
                f"{source}: unknown top-level key(s) {unknown}; expected {sorted(expected)}"
            )
        missing = sorted(expected - set(data))
        if missing:
            raise VocabularyError(f"{source}: missing top-level key(s) {missing}")
        if data["format"] != FORMAT:
            raise VocabularyError(f"{source}: 'format' must be {FORMAT!r}, got {data['format']!r}")
        if data["version"] != VERSION or isinstance(data["version"], bool):
            raise VocabularyError(
                f"{source}: unsupported vocabulary version {data['version']!r} "
                f"(this ICG reads version {VERSION})"
            )
        labels = _validate_labels(data["labels"], source)
        hierarchy, word_lists = _validate_encyclopedia(data["encyclopedia"], source)
        return cls(labels=labels, hierarchy=hierarchy, word_lists=word_lists, source=source)

    @classmethod
    def from_published(
        cls,
        labels: Any,
        encyclopedia: Any,
        labels_source: str = "<labels>",
        encyclopedia_source: str = "<encyclopedia>",
    ) -> Vocabulary:
        """Validate the two published objects (as unpickled) and build a vocabulary from them."""
        checked_labels = _validate_labels(labels, labels_source)
        hierarchy, word_lists = _validate_encyclopedia(encyclopedia, encyclopedia_source)
        return cls(
            labels=checked_labels, hierarchy=hierarchy, word_lists=word_lists, source=encyclopedia_source
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure (``from_dict(to_dict())`` round-trips)."""
        encyclopedia: dict[str, Any] = {}
        for name in CATEGORIES:
            if name in self.hierarchy:
                encyclopedia[name] = {sub: list(words) for sub, words in self.hierarchy[name].items()}
            else:
                encyclopedia[name] = list(self.word_lists[name])
        return {
            "format": FORMAT,
            "version": VERSION,
            "labels": [[label.keyword, label.pos, label.frequency] for label in self.labels],
            "encyclopedia": encyclopedia,
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as UTF-8 JSON, atomically (temporary file + ``os.replace``)."""
        atomic_write_json(path, self.to_dict(), indent=None)

    # ----------------------------------------------------------------------------------- access

    def flat_labels(
        self, n: int = DEFAULT_FLAT_COUNT, pos: Iterable[str] = DEFAULT_FLAT_POS
    ) -> tuple[str, ...]:
        """The first ``n`` keywords (in file order, i.e. most frequent first) whose POS is in ``pos``."""
        wanted = frozenset(pos)
        chosen: list[str] = []
        for label in self.labels:
            if len(chosen) >= n:
                break
            if label.pos in wanted:
                chosen.append(label.keyword)
        return tuple(chosen)

    def subcategories(self, category: str) -> tuple[str, ...]:
        """Sub-category names of a hierarchy category (``scenery``, ``animal``, ...), in file order."""
        return tuple(self._category(category))

    def keywords(self, category: str, subcategory: str) -> tuple[str, ...]:
        """The keyword list of one sub-category (may be empty: the published data has empty ones)."""
        subs = self._category(category)
        try:
            return subs[subcategory]
        except KeyError:
            raise KeyError(f"{self.source}: no sub-category {subcategory!r} in {category!r}") from None

    def word_list(self, category: str) -> tuple[str, ...]:
        """A flat word list: ``human``, ``number``, ``adverb`` or ``adjective``."""
        try:
            return self.word_lists[category]
        except KeyError:
            raise KeyError(
                f"{self.source}: {category!r} is not a word list (one of {', '.join(WORD_LIST_CATEGORIES)})"
            ) from None

    def _category(self, category: str) -> Mapping[str, tuple[str, ...]]:
        try:
            return self.hierarchy[category]
        except KeyError:
            raise KeyError(
                f"{self.source}: {category!r} is not a hierarchy category "
                f"(one of {', '.join(HIERARCHY_CATEGORIES)})"
            ) from None


def convert_pickles(
    all_labels_pkl: str | os.PathLike, encyclopedia_pkl: str | os.PathLike, out_json: str | os.PathLike
) -> Vocabulary:
    """Convert the two published pickles to one validated ``vocabulary.json`` (written atomically).

    The pickles are read with ``icg.models.safe_pickle.safe_load`` (no global is ever resolved); a
    pickle that tries one raises ``UnsafePickleError``, a malformed structure ``VocabularyError``.
    """
    from icg.models.safe_pickle import safe_load  # lazy: keeps ``import icg.sbg.vocab`` minimal

    labels_source, encyclopedia_source = os.fspath(all_labels_pkl), os.fspath(encyclopedia_pkl)
    vocab = Vocabulary.from_published(
        safe_load(labels_source), safe_load(encyclopedia_source), labels_source, encyclopedia_source
    )
    vocab.save_json(out_json)
    vocab = Vocabulary.from_json(out_json)  # prove what was written reads back
    logger.info(
        "converted %s + %s -> %s (%d labels, %d sub-categories)",
        labels_source,
        encyclopedia_source,
        os.fspath(out_json),
        len(vocab.labels),
        sum(len(subs) for subs in vocab.hierarchy.values()),
    )
    return vocab


# --------------------------------------------------------------------------------------- validation


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` hook: a repeated key (e.g. a sub-category twice) would silently drop data; refuse it."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _kind(value: Any) -> str:
    return type(value).__name__


def _check_name(value: Any, where: str, source: str) -> str:
    if not isinstance(value, str):
        raise VocabularyError(f"{source}: {where} must be a string, got {_kind(value)} {value!r}")
    if not value or value != value.strip():
        raise VocabularyError(
            f"{source}: {where} must be non-empty with no surrounding spaces, got {value!r}"
        )
    return value


def _check_word_list(value: Any, where: str, source: str, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise VocabularyError(f"{source}: {where} must be a list of strings, got {_kind(value)}")
    if not value and not allow_empty:
        raise VocabularyError(f"{source}: {where} is empty")
    return tuple(_check_name(word, f"{where}[{i}]", source) for i, word in enumerate(value))


def _validate_labels(value: Any, source: str) -> tuple[Label, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise VocabularyError(
            f"{source}: the labels must be a list of [keyword, pos, frequency], got {_kind(value)}"
        )
    if not value:
        raise VocabularyError(f"{source}: the label list is empty")
    labels = []
    for i, entry in enumerate(value):
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise VocabularyError(f"{source}: label {i} must be [keyword, pos, frequency], got {entry!r}")
        keyword, pos, frequency = entry
        _check_name(keyword, f"label {i} keyword", source)
        _check_name(pos, f"label {i} ({keyword!r}) part of speech", source)
        if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 0:
            raise VocabularyError(
                f"{source}: label {i} ({keyword!r}) frequency must be a non-negative integer, "
                f"got {frequency!r}"
            )
        labels.append(Label(keyword, pos, frequency))
    return tuple(labels)


def _validate_encyclopedia(
    value: Any, source: str
) -> tuple[Mapping[str, Mapping[str, tuple[str, ...]]], Mapping[str, tuple[str, ...]]]:
    if not isinstance(value, Mapping):
        raise VocabularyError(
            f"{source}: the encyclopedia must be a mapping of categories, got {_kind(value)}"
        )
    unknown = [name for name in value if name not in CATEGORIES]
    if unknown:
        raise VocabularyError(
            f"{source}: unknown encyclopedia categories {unknown}; expected {', '.join(CATEGORIES)}"
        )
    missing = [name for name in CATEGORIES if name not in value]
    if missing:
        raise VocabularyError(f"{source}: the encyclopedia lacks the required categories {missing}")

    hierarchy: dict[str, Mapping[str, tuple[str, ...]]] = {}
    for name in HIERARCHY_CATEGORIES:
        subs = value[name]
        if not isinstance(subs, Mapping):
            raise VocabularyError(
                f"{source}: encyclopedia[{name!r}] must map sub-category names to keyword lists, "
                f"got {_kind(subs)}"
            )
        if not subs:
            raise VocabularyError(f"{source}: encyclopedia[{name!r}] has no sub-categories")
        checked: dict[str, tuple[str, ...]] = {}
        for sub, words in subs.items():
            _check_name(sub, f"a sub-category name in encyclopedia[{name!r}]", source)
            # Empty keyword lists are part of the published data: the sub-category name still counts.
            where = f"encyclopedia[{name!r}][{sub!r}]"
            checked[sub] = _check_word_list(words, where, source, allow_empty=True)
        hierarchy[name] = MappingProxyType(checked)

    word_lists = {
        name: _check_word_list(value[name], f"encyclopedia[{name!r}]", source, allow_empty=False)
        for name in WORD_LIST_CATEGORIES
    }
    return MappingProxyType(hierarchy), MappingProxyType(word_lists)


