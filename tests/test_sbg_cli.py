"""``python -m icg caption`` with an SBG model: JSON with keywords, candidates, scores and seed; keywords
typed on the command line with no image; --force/--ban; --candidates; --style; --vocabulary."""

from __future__ import annotations

import json

import pytest

from icg.cli import main
from tests.test_sbg_captioner import write_sbg_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_sbg_models(tmp_path_factory.mktemp("sbg-cli"))


def _common(files, models_dir=None) -> list[str]:
    return [
        "--models-dir",
        str(models_dir or files["models"]),
        "--clip",
        str(files["clip_dir"]),
        "--tokenizer",
        str(files["tokenizer_dir"]),
        "--device",
        "cpu",
    ]


def _run_json(capsys, argv: list[str]) -> list[dict]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_caption_an_image_as_json(files, capsys):
    model = str(files["sbg_generator_dir"])
    argv = ["caption", "--model", model, str(files["images"][0]), "--json", "--seed", "5", *_common(files)]
    (result,) = _run_json(capsys, argv)
    assert result["model"] == model and result["source"] == str(files["images"][0])
    assert result["seed"] == 5 and result["decoding"]["seed"] == 5 and result["score_kind"] == "clip"
    assert result["keywords"] and all({"text", "score", "step"} <= set(k) for k in result["keywords"])
    assert result["candidates"] and result["caption"] == result["candidates"][0]["text"]
    scores = [c["score"] for c in result["candidates"]]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)


def test_the_same_seed_gives_the_same_json(files, capsys):
    argv = ["caption", "--model", str(files["sbg_generator_dir"]), *map(str, files["images"][:2])]
    argv += ["--json", "--seed", "9", *_common(files)]
    first, second = _run_json(capsys, argv), _run_json(capsys, argv)
    strip = [{k: v for k, v in r.items() if k != "timings"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "timings"} for r in second]
    assert len(first) == 2 and first[0]["source"] != first[1]["source"]


def test_keywords_without_an_image(files, capsys):
    argv = ["caption", "--model", str(files["sbg_generator_dir"]), "--keywords", "dog, grass"]
    (result,) = _run_json(capsys, [*argv, "--json", "--seed", "1", *_common(files)])
    assert [k["text"] for k in result["keywords"]] == ["dog", "grass"]
    assert result["score_kind"] == "logprob" and result["seed"] == 1 and result["source"] is None
    # plain output: just the caption
    assert main([*argv, "--seed", "1", *_common(files)]) == 0
    assert capsys.readouterr().out.strip() == result["caption"]


def test_keywords_select_the_sbg_default_model(files, tmp_path, capsys):
    code = main(["caption", "--keywords", "dog", *_common(files, models_dir=tmp_path / "empty")])
    assert code == 1
    assert "sbg-flickr8k" in capsys.readouterr().err


def test_force_ban_candidates_and_published_style(files, capsys):
    model = str(files["sbg_generator_dir"])
    base = ["caption", "--model", model, str(files["images"][1]), "--json", "--seed", "3", *_common(files)]
    (plain,) = _run_json(capsys, base)
    banned = plain["keywords"][0]["text"]
    argv = [*base, "--force", "zebra", "--ban", banned, "--candidates", "3", "--style", "published"]
    (result,) = _run_json(capsys, argv)
    texts = [k["text"] for k in result["keywords"]]
    assert "zebra" in texts and banned not in texts
    assert len(result["candidates"]) == 3 and result["decoding"]["num_samples"] == 3
    assert all(c["text"].endswith(" .") for c in result["candidates"])


def test_keywords_with_an_image_are_reranked(files, capsys):
    model = str(files["sbg_generator_dir"])
    argv = ["caption", "--model", model, str(files["images"][2]), "--keywords", "grass, dog", "--json"]
    (result,) = _run_json(capsys, [*argv, "--seed", "2", *_common(files)])
    assert [(k["text"], k["step"]) for k in result["keywords"]] == [("grass", "user"), ("dog", "user")]
    assert result["score_kind"] == "clip"


def test_vocabulary_option(files, tmp_path, capsys):
    argv = ["caption", "--model", str(files["sbg_generator_dir"]), "--keywords", "dog", "--json"]
    argv += ["--vocabulary", str(files["vocabulary_json"]), *_common(files, models_dir=tmp_path / "empty")]
    (result,) = _run_json(capsys, argv)
    assert result["candidates"]


def test_sbg_options_with_a_prefix_model_are_refused(files, capsys):
    argv = ["caption", "--model", str(files["clip_prefix_pt"]), str(files["images"][0]), "--ban", "dog"]
    assert main([*argv, *_common(files)]) == 1
    assert "ban are only for SBG models" in capsys.readouterr().err


def test_style_applies_to_a_prefix_model_too(files, capsys):
    argv = ["caption", "--model", str(files["clip_prefix_pt"]), str(files["images"][0]), "--json"]
    (published,) = _run_json(capsys, [*argv, "--style", "published", *_common(files)])
    (clean,) = _run_json(capsys, [*argv, *_common(files)])
    assert published["caption"].endswith(" .")
    assert published["caption"] != clean["caption"]


def test_no_image_and_no_keywords_is_an_argument_error(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", *_common(files)])
    assert exit_info.value.code == 2
    assert "give IMAGE files, or --keywords" in capsys.readouterr().err


def test_candidates_must_be_positive(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", "--keywords", "dog", "--candidates", "0", *_common(files)])
    assert exit_info.value.code == 2
