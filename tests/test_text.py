"""Caption text helpers."""

from __future__ import annotations

import pytest

from icg.text import cut_caption, finish_caption, token_texts


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


def test_the_same_ids_give_the_same_text_on_every_transformers():
    """transformers 4.x cleaned up spaces when decoding GPT-2 ids and 5.x does not: ICG cleans up itself.
    The ids are spelled out, so this checks the text for fixed ids on each dependency set CI runs."""
    from icg.text import decode_tokens
    from icg.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode("a dog 's ball , and the man 's hat .")
    assert decode_tokens(tokenizer, ids) == "a dog's ball, and the man's hat."
    assert decode_tokens(tokenizer, [*ids, tokenizer.eos_token_id]) == "a dog's ball, and the man's hat."


def test_clean_up_follows_transformers_4():
    from icg.text import clean_up_spaces

    assert clean_up_spaces("it is n't , we 're here , I 'm sure !") == "it isn't, we're here, I'm sure!"
    assert clean_up_spaces("a dog runs .") == "a dog runs."


def test_token_texts_are_what_batch_decode_gives_each_token():
    from icg.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    tokenizer.add_tokens([" zebra-crossing"])
    ids = [[i] for i in range(len(tokenizer))]
    expected = tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
    assert token_texts(tokenizer) == expected
    assert "<|pad|>" in expected and " zebra-crossing" in expected
