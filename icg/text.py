"""Pure string helpers for captions."""

from __future__ import annotations

import re

CAPTION_STYLES = ("clean", "published")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # control characters but whitespace


#: transformers 4.x's ``clean_up_tokenization`` (what the predecessor's captions went through), in its
#: order. transformers 5 dropped it for GPT-2, so ICG applies it itself: the same ids give the same text on
#: every supported transformers.
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_spaces(text: str) -> str:
    """Spaces before punctuation and English contractions removed, as transformers 4.x decoded GPT-2."""
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


def decode_tokens(tokenizer, ids) -> str:
    """GPT-2 token ids -> text, special tokens hidden, cleaned up by ICG (not by the library's default,
    which differs between transformers 4 and 5)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_spaces(text)


def token_texts(tokenizer) -> list[str]:
    """The text of every token id alone, special tokens included, as ``batch_decode`` gives it without
    clean-up. A fast tokenizer's Rust decoder is asked one id at a time (about 7x quicker than
    ``batch_decode`` on GPT-2's 50257 tokens: SBG does this in every process's first caption)."""
    size = len(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [backend.decode([i], skip_special_tokens=False) for i in range(size)]
    return tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)


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
