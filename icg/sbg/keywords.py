"""SBG keyword selection: CLIP zero-shot scoring over the cached prompt sets of a ``LabelBank``.

For one image (features ``x``, L2-normalised), every candidate set is scored as
``softmax(logit_scale * x @ T.T)`` and ranked by descending probability (stable: ties keep set order;
a label that occurs twice in a set counts once, at its first position, as in the published code).

1. ``flat``: labels in descending probability until the running sum first exceeds ``flat_threshold``
   (the label that crosses it is included).
2. ``subjects``: the subjects named by the best subject prompt are active; landscape and some object
   always are.
3. For each active subject in the order landscape, people, animal, plant, some object: the best
   sub-category name, then the best ``animal_top`` (animal) or ``tertiary_top`` (others) of its first
   keywords; for people the best human group, occupation and clothing ("{colour} {garment}").
4. Context: time and weather add their best sub-category name (weather not when "indoor" was chosen);
   activity, only when people or animal is active, adds the best keyword of its best sub-category.
5. The chosen keywords are ordered by their own (bare-word) score against the image.

``ban`` removes keywords wherever a step would add them (the next best is taken); ``force`` adds
keywords before the final ordering.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from icg.sbg.bank import (
    ALWAYS_ACTIVE_SUBJECTS,
    CONTEXT_CATEGORIES,
    SUBJECT_CATEGORIES,
    SUBJECTS,
    LabelBank,
    LabelT,
)

logger = logging.getLogger(__name__)

#: Separator between the keywords and the caption in the generator's training lines.
SEPARATOR = "###"
#: The scenery keyword that suppresses the weather step.
INDOOR = "indoor"
#: Sets scored for every image (tertiary sets depend on the image's choices).
_FIXED_SETS = (
    "flat",
    "subjects",
    "human",
    "occupation",
    "clothing",
    *SUBJECT_CATEGORIES.values(),
    *CONTEXT_CATEGORIES,
)
_PEOPLE_STEPS = (
    ("human", "people:group"),
    ("occupation", "people:occupation"),
    ("clothing", "people:clothing"),
)


@dataclass(frozen=True)
class KeywordConfig:
    """Knobs of the selection; the defaults reproduce the published behaviour."""

    logit_scale: float = 100.0
    flat_threshold: float = 0.5
    tertiary_top: int = 3
    animal_top: int = 1
    #: Drop later repeats of a keyword before the final ordering. The published code ranks the final
    #: keywords through a dict keyed by keyword, so its prompts never repeat a word: True is published.
    dedupe: bool = True


@dataclass(frozen=True)
class Keyword:
    """A chosen keyword: ``score`` is its final (step 5) probability, ``step`` the step that chose it
    (``flat``, ``scenery:sub``, ``scenery:keyword``, ``people:group``, ``time``, ``forced``, ...) and
    ``step_score`` its probability within that step's set (None for forced keywords)."""

    text: str
    score: float
    step: str
    step_score: float | None = None


@dataclass(frozen=True)
class KeywordSelection:
    """The keywords of one image, best first, and the subjects that were active."""

    keywords: list[Keyword]
    subjects: tuple[str, ...] = field(default=())

    @property
    def texts(self) -> list[str]:
        """The keyword strings, in order."""
        return [k.text for k in self.keywords]

    @property
    def prompt(self) -> str:
        """The generator prompt: ``"kw1, kw2, ... ###"``."""
        return f"{', '.join(self.texts)} {SEPARATOR}"


@dataclass
class _Choice:
    text: str
    step: str
    step_score: float | None


def _norm(text: str) -> str:
    return text.strip().casefold()


def _drop_repeats(choices: list[_Choice]) -> list[_Choice]:
    """Keep the first occurrence of each keyword text."""
    seen: set[str] = set()
    kept = []
    for choice in choices:
        if choice.text not in seen:
            seen.add(choice.text)
            kept.append(choice)
    return kept


def _rank(labels: Sequence[LabelT], probs: Sequence[float]) -> list[tuple[LabelT, float]]:
    """Labels by descending probability, ties in set order; a repeated label counts once (first place)."""
    first: dict[LabelT, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    order = sorted(first.values(), key=lambda i: -probs[i])
    return [(labels[i], probs[i]) for i in order]


class KeywordSelector:
    """Selects SBG keywords for image features using the precomputed features of a ``LabelBank``."""

    def __init__(self, bank: LabelBank, config: KeywordConfig | None = None) -> None:
        self.bank = bank
        self.config = config or KeywordConfig()

    @torch.no_grad()
    def select(
        self, image_features: torch.Tensor, *, force: Iterable[str] = (), ban: Iterable[str] = ()
    ) -> list[KeywordSelection]:
        """Keywords for each image of ``image_features`` (``(D,)`` or ``(B, D)``, L2-normalised).

        ``ban``: keywords never added (case-insensitive; a step that picks a best takes the next one;
        a banned flat label still counts toward the flat threshold). ``force``: keywords always
        included (added before the final ordering, counted as chosen for the "indoor" rule).
        """
        images = self._as_batch(image_features)
        forced = list(dict.fromkeys(t.strip() for t in force if t.strip()))
        banned = {_norm(t) for t in ban}
        fixed = self._score_fixed(images)
        chosen: list[tuple[list[_Choice], tuple[str, ...]]] = []
        for b in range(images.shape[0]):
            probs = {name: rows[b] for name, rows in fixed.items()}
            chosen.append(self._choose(images[b], probs, forced, banned))
        selections = self._order(images, chosen)
        logger.debug("selected keywords for %d image(s): %s", len(selections), [s.prompt for s in selections])
        return selections

    # ------------------------------------------------------------------------------------- steps

    def _choose(
        self, image: torch.Tensor, probs: dict[str, list[float]], forced: list[str], banned: set[str]
    ) -> tuple[list[_Choice], tuple[str, ...]]:
        """Steps 1-4 for one image: the chosen keywords (in step order) and the active subjects."""
        cfg = self.config
        choices: list[_Choice] = []

        def ranked(name: str) -> list[tuple[LabelT, float]]:
            return _rank(self.bank.prompt_set(name).labels, probs[name])

        def add_best(ranking: list[tuple[LabelT, float]], step: str, k: int = 1) -> list[str]:
            allowed = ((str(label), p) for label, p in ranking if _norm(str(label)) not in banned)
            picked = list(itertools.islice(allowed, k))
            choices.extend(_Choice(text, step, p) for text, p in picked)
            return [text for text, _ in picked]

        # 1. flat labels up to the probability mass threshold
        total = 0.0
        for label, p in ranked("flat"):
            total += p
            if _norm(str(label)) not in banned:
                choices.append(_Choice(str(label), "flat", p))
            if total > cfg.flat_threshold:
                break

        # 2. subjects
        best_subjects = ranked("subjects")[0][0]
        active = set(best_subjects) | set(ALWAYS_ACTIVE_SUBJECTS)
        subjects = tuple(s for s in SUBJECTS if s in active)

        # 3. per subject
        for subject in subjects:
            if subject == "people":
                for name, step in _PEOPLE_STEPS:
                    add_best(ranked(name), step)
                continue
            category = SUBJECT_CATEGORIES[subject]
            picked = add_best(ranked(category), f"{category}:sub")
            tertiary = self.bank.tertiary(category, picked[0]) if picked else None
            if tertiary is not None:
                k = cfg.animal_top if category == "animal" else cfg.tertiary_top
                add_best(self._rank_set(image, tertiary.name), f"{category}:keyword", k)

        # 4. context
        indoor = any(_norm(t) == INDOOR for t in [c.text for c in choices] + forced)
        for context in CONTEXT_CATEGORIES:
            if context == "weather" and indoor:
                continue
            if context == "activity":
                if not active & {"people", "animal"}:
                    continue
                activity = str(ranked("activity")[0][0])  # the sub-category itself is not a keyword
                tertiary = self.bank.tertiary("activity", activity)
                if tertiary is not None:
                    add_best(self._rank_set(image, tertiary.name), "activity")
            else:
                add_best(ranked(context), context)

        present = {_norm(c.text) for c in choices}
        for text in forced:
            if _norm(text) not in present:
                choices.append(_Choice(text, "forced", None))
        return choices, subjects

    def _order(
        self, images: torch.Tensor, chosen: list[tuple[list[_Choice], tuple[str, ...]]]
    ) -> list[KeywordSelection]:
        """Step 5 for every image: order its keywords by their bare-word score (one encode for all)."""
        if self.config.dedupe:
            chosen = [(_drop_repeats(choices), subjects) for choices, subjects in chosen]
        words = list(dict.fromkeys(c.text for cs, _ in chosen for c in cs))
        word_row = {w: i for i, w in enumerate(words)}
        features = self.bank.word_features(words)
        results = []
        for b, (choices, subjects) in enumerate(chosen):
            if not choices:
                results.append(KeywordSelection([], subjects))
                continue
            rows = features[torch.tensor([word_row[c.text] for c in choices], device=features.device)]
            probs = self._softmax(images[b], rows).tolist()
            order = sorted(range(len(choices)), key=lambda i: -probs[i])
            keywords = [
                Keyword(choices[i].text, probs[i], choices[i].step, choices[i].step_score) for i in order
            ]
            results.append(KeywordSelection(keywords, subjects))
        return results

    # ----------------------------------------------------------------------------------- scoring

    def _as_batch(self, image_features: torch.Tensor) -> torch.Tensor:
        if not isinstance(image_features, torch.Tensor) or image_features.ndim not in (1, 2):
            raise ValueError("image_features must be a (D,) or (B, D) tensor")
        images = image_features.reshape(-1, image_features.shape[-1])
        if images.shape[1] != self.bank.dim:
            raise ValueError(f"image features have dimension {images.shape[1]}, the bank {self.bank.dim}")
        return images.detach().to(device=self.bank.device, dtype=torch.float32)

    def _softmax(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return (self.config.logit_scale * images @ features.T).softmax(dim=-1)

    def _score_fixed(self, images: torch.Tensor) -> dict[str, list[list[float]]]:
        """Probabilities of every image over every fixed set (one matmul per set for the whole batch)."""
        return {name: self._softmax(images, self.bank.features(name)).tolist() for name in _FIXED_SETS}

    def _rank_set(self, image: torch.Tensor, name: str) -> list[tuple[LabelT, float]]:
        probs = self._softmax(image, self.bank.features(name)).tolist()
        return _rank(self.bank.prompt_set(name).labels, probs)
