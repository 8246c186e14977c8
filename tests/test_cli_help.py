"""``--help`` as a user reads it: every command and every flag explained, short placeholders."""

from __future__ import annotations

import argparse

import pytest

from icg.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, action) for every action of ``parser`` and its subcommands, and
    (command path, None) for a subcommand without help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    yield (*path, name), None
                yield from _walk(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def _shown_metavar(action: argparse.Action) -> str:
    """The placeholder ``--help`` prints for the action's value ('' for flags that take none)."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def test_every_command_and_flag_has_help_and_a_short_placeholder():
    problems = []
    for path, action in _walk(build_parser()):
        where = " ".join(path) or "icg"
        if action is None:
            problems.append(f"{where}: command without help")
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            problems.append(f"{where} {name}: no help")
        if "_" in _shown_metavar(action):
            problems.append(f"{where} {name}: placeholder {_shown_metavar(action)}")
    assert problems == []


@pytest.mark.parametrize(
    ("flag", "shown"),
    [
        ("--beams", "--beams N"),
        ("--top-p", "--top-p X"),
        ("--seed", "--seed SEED"),
        ("--strategy", "--strategy {greedy,beam,sample}"),
        ("--models-dir", "--models-dir DIR"),
    ],
)
def test_schema_options_show_their_type_as_placeholder(flag, shown, capsys):
    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    out = capsys.readouterr().out
    assert shown in out
    assert "NUM_BEAMS" not in out and "TOP_P" not in out


def test_device_help_names_mps(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "mps" in capsys.readouterr().out
