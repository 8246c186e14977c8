"""Turning a caption (and keywords) into a Stable Diffusion prompt, and merging it into an existing prompt.

A prompt is treated as comma-separated parts. ``tidy_prompt`` collapses whitespace, removes the space
before ``, . ; : ! ?`` (SBG captions end in " ."), drops empty parts (so an empty placeholder leaves no
dangling comma), optionally removes the final period of each part (prompts rarely want one) and
optionally drops repeated parts (case-insensitively, keeping the first). Everything here is pure.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from icg.errors import ConfigError
from icg.options import TEMPLATE

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("prefix", "caption", "keywords", "suffix")
MERGE_MODES = ("replace", "append", "prepend")

_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.;:!?])")
_ONLY_PUNCTUATION = re.compile(r"[.;:!?]+")


@dataclass(frozen=True)
class PromptTemplate:
    """How to build a prompt from a caption and keywords.

    ``template`` may use ``{prefix}``, ``{caption}``, ``{keywords}`` and ``{suffix}`` (``{{``/``}}`` for
    literal braces). A non-empty ``prefix`` or ``suffix`` (say a LoRA trigger word) is always used: where
    the template has no placeholder for it, it is joined to the start or end with ", ". ``lowercase``
    applies to the caption and keywords, not to the user's prefix and suffix. ``{keywords}`` holds the
    keywords without repeats, at most ``max_keywords`` of them, joined with ", ".
    """

    template: str = TEMPLATE["template"].default
    prefix: str = TEMPLATE["prefix"].default
    suffix: str = TEMPLATE["suffix"].default
    lowercase: bool = TEMPLATE["lowercase"].default
    dedupe: bool = TEMPLATE["dedupe"].default
    max_keywords: int | None = TEMPLATE["max_keywords"].default
    strip_period: bool = TEMPLATE["strip_period"].default

    def __post_init__(self) -> None:
        for option in TEMPLATE:
            object.__setattr__(self, option.name, option.check(getattr(self, option.name), "prompt"))
        _parse_template(self.template)

    def compose(self, caption: str, keywords: Iterable[str] = ()) -> str:
        """The tidy prompt for ``caption`` and ``keywords``."""
        if self.lowercase:
            caption = caption.lower()
            keywords = (keyword.lower() for keyword in keywords)
        kept = unique_parts(split_parts(", ".join(keywords)))[: self.max_keywords]
        values = dict(prefix=self.prefix, suffix=self.suffix, caption=caption, keywords=", ".join(kept))
        pieces = _parse_template(self.template)
        text = "".join(literal + (values[name] if name else "") for literal, name in pieces)
        used = {name for _, name in pieces}
        if "prefix" not in used:
            text = f"{self.prefix}, {text}"
        if "suffix" not in used:
            text = f"{text}, {self.suffix}"
        return tidy_prompt(text, strip_period=self.strip_period, dedupe=self.dedupe)


def tidy_prompt(text: str, strip_period: bool = True, dedupe: bool = False) -> str:
    """Normalise spacing and commas in ``text`` (see the module docstring)."""
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", _WHITESPACE.sub(" ", text))
    parts: list[str] = []
    for part in split_parts(text):
        if strip_period:
            part = part.rstrip(". ")
        if _ONLY_PUNCTUATION.fullmatch(part):
            if parts:
                parts[-1] += part  # "a cat, ." -> "a cat."
        elif part:
            parts.append(part)
    return ", ".join(unique_parts(parts) if dedupe else parts)


def split_parts(text: str) -> list[str]:
    """The non-empty comma-separated parts of ``text``, stripped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def unique_parts(parts: Iterable[str]) -> list[str]:
    """``parts`` without repeats (compared case-insensitively, ignoring spacing and a final period)."""
    seen: set[str] = set()
    kept = []
    for part in parts:
        key = _part_key(part)
        if key not in seen:
            seen.add(key)
            kept.append(part)
    return kept


def merge_prompt(existing: str, new: str, mode: str = "append") -> str:
    """Put ``new`` into the prompt ``existing``: "replace" it, or "append"/"prepend" with ", ".

    ``existing`` is kept as written apart from the separators at the join. Parts of ``new`` already in
    ``existing`` are not added again; an empty ``new`` leaves ``existing`` unchanged in every mode.
    """
    if mode not in MERGE_MODES:
        raise ConfigError(f"unknown prompt merge mode {mode!r}; expected one of {', '.join(MERGE_MODES)}")
    new_parts = unique_parts(split_parts(tidy_prompt(new, strip_period=False)))
    if not new_parts:
        return existing
    if mode == "replace":
        return ", ".join(new_parts)
    present = {_part_key(part) for part in split_parts(existing)}
    added = ", ".join(part for part in new_parts if _part_key(part) not in present)
    if not added:
        return existing
    if mode == "append":
        body = existing.rstrip(", \t\r\n")
        return f"{body}, {added}" if body.strip() else added
    body = existing.lstrip(", \t\r\n")
    return f"{added}, {body}" if body.strip() else added


def _part_key(part: str) -> str:
    return " ".join(part.split()).rstrip(" .").casefold()


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """``[(literal text, placeholder name or None), ...]``; anything but our bare placeholders is refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"prompt template {template!r} is malformed: {exc}") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and name not in PLACEHOLDERS:
            raise ConfigError(
                f"unknown placeholder {{{name}}} in prompt template {template!r}; "
                f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        if spec or conversion:
            raise ConfigError(f"placeholder {{{name}}} in prompt template {template!r} takes no format or !x")
        pieces.append((literal, name))
    return pieces
