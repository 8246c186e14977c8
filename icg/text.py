"""Pure string helpers for captions."""

from __future__ import annotations

import re

CAPTION_STYLES = ("clean", "published")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # control characters but whitespace


def cut_caption(text: str, stop: str | None = ".") -> str:
    """The decoded text up to the first stop string, stripped (the predecessor's rule)."""
    if stop:
        text = text.split(stop)[0]
    return text.strip()


def finish_caption(text: str, style: str = "clean") -> str:
    """``published``: ``"a dog runs ."`` exactly as the predecessor wrote it (for evaluation).
    ``clean``: whitespace collapsed, first letter capitalised, one final period."""
    if style == "published":
        return f"{text.strip()} ."
    text = _CONTROL.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
