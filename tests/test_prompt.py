"""The caption -> prompt composer and prompt merging: pure functions, table-driven."""

from __future__ import annotations

import dataclasses

import pytest

from icg.errors import ConfigError
from icg.options import DEFAULT_TEMPLATE
from icg.prompt import (
    MERGE_MODES,
    PromptTemplate,
    merge_prompt,
    split_parts,
    tidy_prompt,
    unique_parts,
)

T = PromptTemplate


@pytest.mark.parametrize(
    ("text", "strip_period", "dedupe", "expected"),
    [
        ("a dog on the grass .", True, False, "a dog on the grass"),
        ("a dog on the grass .", False, False, "a dog on the grass."),
        ("  a \n dog\t ", True, False, "a dog"),
        ("a dog ,, , cat", True, False, "a dog, cat"),
        (", a dog, ", True, False, "a dog"),
        (",,,", True, False, ""),
        ("", True, False, ""),
        ("a dog , cat ; bird : fish ! ok ?", False, False, "a dog, cat; bird: fish! ok?"),
        ("a cat, .", False, False, "a cat."),
        ("a cat , !", True, False, "a cat!"),
        (". , a cat", False, False, "a cat"),
        ("a cat.,tree", True, False, "a cat, tree"),
        ("a cat.,tree", False, False, "a cat., tree"),
        ("a cat. a dog.", True, False, "a cat. a dog"),
        ("dog, Dog, DOG., cat", True, True, "dog, cat"),
        ("dog, Dog, cat", True, False, "dog, Dog, cat"),
        ("(a dog:1.2), <lora:foo:0.8>, [cat:dog:5]", True, True, "(a dog:1.2), <lora:foo:0.8>, [cat:dog:5]"),
        ("version 1.5", True, False, "version 1.5"),
        ("wait...", True, False, "wait"),
    ],
)
def test_tidy_prompt(text, strip_period, dedupe, expected):
    assert tidy_prompt(text, strip_period=strip_period, dedupe=dedupe) == expected


@pytest.mark.parametrize(
    ("template", "caption", "keywords", "expected"),
    [
        (T(), "a dog on the grass .", (), "a dog on the grass"),
        (T(), "a dog", ["grass", "Grass", " sky ", ""], "a dog, grass, sky"),
        (T(), "", ["grass"], "grass"),
        (T(), "", (), ""),
        (T(strip_period=False), "a dog on the grass .", (), "a dog on the grass."),
        (T(template="{caption}"), "a dog.", ["ignored"], "a dog"),
        (T(template="{prefix}, {caption}"), "a dog", (), "a dog"),
        (T(template="{caption}, {suffix}", suffix=""), "a dog .", (), "a dog"),
        (T(template="{caption}", prefix="ohwx", suffix="<lora:x>"), "a dog", (), "ohwx, a dog, <lora:x>"),
        (T(template="{suffix} {caption} {prefix}", prefix="P", suffix="S"), "a dog", (), "S a dog P"),
        (T(prefix="masterpiece, best quality"), "a dog", ["park"], "masterpiece, best quality, a dog, park"),
        (T(template="photo of {caption} with {keywords}"), "a dog", ["a", "b"], "photo of a dog with a, b"),
        (T(max_keywords=2), "a dog", ["a", "b", "c"], "a dog, a, b"),
        (T(max_keywords=2), "a dog", ["a", "A", "b", "c"], "a dog, a, b"),
        (T(max_keywords=0), "a dog", ["a", "b"], "a dog"),
        (T(lowercase=True, prefix="OHWX"), "A Dog", ["Sky"], "OHWX, a dog, sky"),
        (T(dedupe=False), "dog, Dog", ["dog"], "dog, Dog, dog"),
        (T(dedupe=True), "dog, Dog", ["dog"], "dog"),
        (T(prefix="dog"), "Dog", ["DOG", "cat"], "dog, cat"),
        (T(template="{{style}} {caption}"), "x", (), "{style} x"),
        (T(template="{caption}", strip_period=False, suffix="."), "a dog", (), "a dog."),
        (T(), "\n  a   dog\t\n", (), "a dog"),
        (T(), "a dog", iter(["x", "y"]), "a dog, x, y"),
        (T(), "a dog", ["red, blue", "red"], "a dog, red, blue"),
    ],
)
def test_compose(template, caption, keywords, expected):
    assert template.compose(caption, keywords) == expected


def test_default_template():
    assert PromptTemplate().template == DEFAULT_TEMPLATE
    assert PromptTemplate().compose("a cat .") == "a cat"


def test_template_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PromptTemplate().prefix = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{caption} {style}", "unknown placeholder {style}"),
        ("{Caption}", "unknown placeholder {Caption}"),
        ("{}", "unknown placeholder {}"),
        ("{0}", "unknown placeholder {0}"),
        ("{caption.upper}", "unknown placeholder {caption.upper}"),
        ("{keywords[0]}", "unknown placeholder {keywords[0]}"),
        ("{caption!r}", "takes no format"),
        ("{caption:>10}", "takes no format"),
        ("{caption", "malformed"),
        ("caption}", "malformed"),
    ],
)
def test_bad_templates(template, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        PromptTemplate(template=template)


def test_negative_max_keywords():
    with pytest.raises(ConfigError, match="max_keywords"):
        PromptTemplate(max_keywords=-1)


@pytest.mark.parametrize(
    ("existing", "new", "mode", "expected"),
    [
        ("masterpiece", "a dog", "append", "masterpiece, a dog"),
        ("masterpiece", "a dog", "prepend", "a dog, masterpiece"),
        ("masterpiece", "a dog", "replace", "a dog"),
        ("masterpiece, ", "a dog", "append", "masterpiece, a dog"),
        ("masterpiece,,\n", "a dog", "append", "masterpiece, a dog"),
        (", masterpiece", "a dog", "prepend", "a dog, masterpiece"),
        ("masterpiece,\nbest quality", "a dog", "append", "masterpiece,\nbest quality, a dog"),
        ("", "a dog", "append", "a dog"),
        (" , ", "a dog", "prepend", "a dog"),
        ("a Dog, park", "a dog", "append", "a Dog, park"),
        ("a dog., park", "a dog", "prepend", "a dog., park"),
        ("park", "a dog, park, sky", "append", "park, a dog, sky"),
        ("park", "a dog, a dog", "append", "park, a dog"),
        ("park", "  a   dog ,, ", "append", "park, a dog"),
        ("keep  this ,  as is", "new", "append", "keep  this ,  as is, new"),
        ("park", "", "append", "park"),
        ("park", " , ", "replace", "park"),
        ("park", "a dog, park", "replace", "a dog, park"),
    ],
)
def test_merge_prompt(existing, new, mode, expected):
    assert merge_prompt(existing, new, mode) == expected


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_merge_is_idempotent(mode):
    once = merge_prompt("masterpiece", "a dog", mode)
    assert merge_prompt(once, "a dog", mode) == once


def test_merge_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="unknown prompt merge mode 'insert'"):
        merge_prompt("a", "b", "insert")


def test_split_and_unique_parts():
    assert split_parts(" a, ,b ,c,") == ["a", "b", "c"]
    assert unique_parts(["Red car", "red  car", "red car.", "blue"]) == ["Red car", "blue"]
