"""The one option schema, and every front end checked against it (a front end that drifts fails here)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from icg.config import DecodingConfig
from icg.errors import ConfigError
from icg.options import (
    BATCH,
    CAPTION,
    DECODING,
    GROUPS,
    TEMPLATE,
    CaptionOptions,
    Option,
    resolve_seed,
)
from icg.prompt import PromptTemplate


def test_every_option_is_declared_once_with_help_label_and_a_default_within_its_bounds():
    names = [o.name for group in GROUPS for o in group]
    assert len(names) == len(set(names))
    for group in GROUPS:
        for option in group:
            assert option.help and option.label, option.name
            if option.default is not None:
                assert option.check(option.default) == option.default, option.name


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        (DECODING["num_beams"], "3", 3),
        (DECODING["num_beams"], 3.0, 3),
        (DECODING["top_p"], "0.5", 0.5),
        (DECODING["strategy"], "beam", "beam"),
        (TEMPLATE["lowercase"], "yes", True),
        (BATCH["recursive"], False, False),
    ],
)
def test_values_from_boxes_and_numbers_are_converted(option, value, expected):
    assert option.check(value) == expected


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (DECODING["num_beams"], 0, "num_beams must be 1 to 16, not 0"),
        (DECODING["num_beams"], 17, "num_beams must be 1 to 16"),
        (DECODING["num_beams"], 2.5, "num_beams must be a whole number"),
        (DECODING["num_beams"], True, "num_beams must be a whole number"),
        (DECODING["top_p"], 0, "top_p must be greater than 0 and at most 1"),
        (DECODING["temperature"], float("nan"), "temperature must be a number"),
        (DECODING["strategy"], "nucleus", "strategy must be one of greedy, beam, sample"),
        (TEMPLATE["prefix"], 3, "prefix must be text"),
        (BATCH["policy"], "clobber", "policy must be one of skip, overwrite, append, prepend"),
    ],
)
def test_bad_values_get_one_line_naming_the_option_and_its_bounds(option, value, message):
    with pytest.raises(ConfigError, match=message):
        option.check(value, "request")


def test_the_library_applies_only_strict_maxima():
    """A front end caps beams at 16; the library may use more (exact beam search in tests)."""
    assert DecodingConfig(num_beams=64).num_beams == 64
    with pytest.raises(ConfigError, match="top_p"):
        DecodingConfig(top_p=1.5)
    with pytest.raises(ConfigError, match="decoding: num_beams must be 1 to 16, not 0"):
        DecodingConfig(num_beams=0)


def test_group_check_refuses_unknown_names():
    with pytest.raises(ConfigError, match="unknown decoding option.*temprature"):
        DECODING.check({"temprature": 1.0})
    assert DECODING.check({"num_beams": "4", "seed": None}) == {"num_beams": 4}


def test_decoding_config_takes_its_fields_and_defaults_from_the_schema():
    fields = {f.name: f.default for f in dataclasses.fields(DecodingConfig)}
    model_only = {"stop", "stop_at_eos"}
    assert set(fields) - model_only == set(DECODING.names)
    assert {n: fields[n] for n in DECODING.names} == DECODING.defaults()
    assert DecodingConfig(seed=-1).seed is None  # -1: draw one


def test_prompt_template_fields_are_the_template_options():
    fields = {f.name: f.default for f in dataclasses.fields(PromptTemplate)}
    assert fields == TEMPLATE.defaults()


def test_batch_options_take_the_batch_options():
    from icg.batch.engine import BatchOptions

    fields = {f.name: f.default for f in dataclasses.fields(BatchOptions)}
    assert {n: fields[n] for n in BATCH.names} == BATCH.defaults()
    with pytest.raises(ConfigError, match="batch: batch_size must be 1 to 512"):
        BatchOptions(root="x", batch_size=0)


def _cli_actions(command: str) -> dict[str, argparse.Action]:
    from icg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", ["caption", "batch"])
def test_cli_renders_every_decoding_and_caption_option(command):
    actions = _cli_actions(command)
    for option in [*DECODING, *CAPTION]:
        action = actions[option.name]
        assert option.cli_flag in action.option_strings
        assert action.default is None  # not given: the model's default
        assert option.help in action.help


def test_cli_batch_renders_the_batch_and_template_options():
    from icg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: dict[str, list[str]] = {}
    for action in sub.choices["batch"]._actions:
        flags.setdefault(action.dest, []).extend(action.option_strings)
    for option in [*BATCH, *TEMPLATE]:
        assert option.cli_flag in flags[option.name]


def test_cli_rejects_out_of_bounds_values_with_the_flag_named(capsys):
    from icg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["caption", "x.png", "--beams", "99"])
    assert info.value.code == 2
    assert "argument --beams: num_beams must be 1 to 16, not '99'" in capsys.readouterr().err


def _api_fields(model) -> dict:
    fields = getattr(model, "model_fields", None) or model.__fields__
    return dict(fields)


def _bounds(field) -> dict:
    """ge/gt/le of a pydantic 1 or 2 field."""
    out = {}
    for meta in getattr(field, "metadata", []) or []:  # pydantic 2: annotated_types constraints
        for name in ("ge", "gt", "le"):
            if getattr(meta, name, None) is not None:
                out[name] = getattr(meta, name)
    info = getattr(field, "field_info", None)  # pydantic 1
    for name in ("ge", "gt", "le"):
        if info is not None and getattr(info, name, None) is not None:
            out[name] = getattr(info, name)
    return out


def _expected_bounds(option: Option) -> dict:
    out = {}
    if option.minimum is not None:
        out["gt" if option.above else "ge"] = option.minimum
    if option.maximum is not None:
        out["le"] = option.maximum
    return out


@pytest.mark.parametrize(
    ("model_name", "group"),
    [("DecodingOptions", DECODING), ("TemplateOptions", TEMPLATE), ("BatchRequest", BATCH)],
)
def test_api_request_models_are_rendered_from_the_schema(model_name, group):
    pytest.importorskip("fastapi")
    import icg.api

    fields = _api_fields(getattr(icg.api, model_name))
    for option in group:
        assert option.name in fields, option.name
        assert _bounds(fields[option.name]) == _expected_bounds(option), option.name


def test_caption_options_validate_and_split_words():
    options = CaptionOptions(style="published", keywords="dog, , grass ", force=["beach"])
    assert options.keywords == ("dog", "grass") and options.force == ("beach",)
    assert options.uses_keywords and not CaptionOptions(style="clean").uses_keywords
    with pytest.raises(ConfigError, match="style must be one of clean, published"):
        CaptionOptions(style="fancy")
    with pytest.raises(ConfigError, match="keywords: at most 200"):
        CaptionOptions(keywords=[f"w{i}" for i in range(201)])


def test_resolve_seed():
    assert resolve_seed(None) is None and resolve_seed(7) == 7
    assert resolve_seed(-1, draw=lambda: 42) == 42
    assert 0 <= resolve_seed(-1) <= 2**31 - 1
