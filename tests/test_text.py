"""Caption text helpers."""

from __future__ import annotations

import pytest

from icg.text import cut_caption, finish_caption


@pytest.mark.parametrize(
    ("raw", "cut"),
    [(" a dog runs. on grass.", "a dog runs"), ("no stop here ", "no stop here"), (".", ""), ("", "")],
)
def test_cut_at_the_first_stop(raw, cut):
    assert cut_caption(raw) == cut


def test_no_stop_keeps_everything():
    assert cut_caption(" a. b ", stop=None) == "a. b"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("a dog runs on the grass", "A dog runs on the grass."),
        ("  two   dogs ,  playing ", "Two dogs, playing."),
        ("is it a dog?", "Is it a dog?"),
        ("a\x05 dog\x00 runs", "A dog runs."),
        ("", ""),
        ("\x01\x02", ""),
    ],
)
def test_clean_style(text, clean):
    assert finish_caption(text) == clean


def test_published_style_is_the_predecessors():
    assert finish_caption(" a dog runs ", style="published") == "a dog runs ."
