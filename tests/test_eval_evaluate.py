"""``evaluate``: captions a test split with the model's reference decoding and scores it (tiny models)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (the eval extra) is not installed")

from icg.cli import main
from icg.errors import ConfigError
from icg.eval.evaluate import EvalOptions, evaluate, format_report, write_report
from icg.eval.metrics import JavaStatus
from icg.models.manager import ModelManager, RuntimeConfig
from icg.sbg.vocab import convert_pickles
from tests import fixtures
from tests.data import synthetic

NO_METEOR = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    fx = fixtures.write_all(root / "fx")
    data = synthetic.write_flickr8k(root / "flickr", n_images=8, captions_per_image=2)
    feats = root / "feats"
    assert main(["features", str(data), "--out", str(feats), "--clip", fx["clip_dir"], "--test-images", "3",
                 "--quiet"]) == 0  # fmt: skip
    # an SBG model folder: the fixture generator + its tokenizer + icg.json naming a vocabulary
    sbg = root / "sbg"
    shutil.copytree(fx["sbg_generator_dir"], sbg)
    for f in (root / "fx" / "tokenizer").iterdir():
        shutil.copy(f, sbg / f.name)
    vocabulary = convert_pickles(fx["all_labels_pkl"], fx["encyclopedia_pkl"], root / "vocabulary.json")
    assert vocabulary.labels
    (sbg / "icg.json").write_text(
        json.dumps({"format": "icg-sbg", "version": 1, "vocabulary": str(root / "vocabulary.json")})
    )
    return {"root": root, "fx": fx, "data": data, "feats": feats, "prefix": fx["clip_prefix_pt"], "sbg": sbg}


def _manager(env) -> ModelManager:
    return ModelManager(
        RuntimeConfig(
            device="cpu",
            clip=env["fx"]["clip_dir"],
            tokenizer=env["fx"]["tokenizer_dir"],
            models_dir=str(env["root"] / "models"),
        )
    )


def test_prefix_on_a_dataset_and_on_its_features_agree(env):
    options = EvalOptions(test_images=3, metrics=NO_METEOR)
    on_images = evaluate(_manager(env), env["prefix"], env["data"], options=options)
    on_features = evaluate(_manager(env), env["prefix"], env["feats"], options=EvalOptions(metrics=NO_METEOR))
    assert [c["image"] for c in on_images["captions"]] == [f"{1000 + i}_synthetic.jpg" for i in (5, 6, 7)]
    assert on_images["captions"] == on_features["captions"]
    (row,) = on_images["rows"]
    assert row["decoding"]["strategy"] == "greedy" and set(row["scores"]) == set(NO_METEOR)
    hypotheses = [c[row["name"]] for c in on_images["captions"]]
    assert all(h.endswith(" .") for h in hypotheses)  # the published style that the seed scored
    assert on_images["images"] == 3 and on_images["references_per_image"] == 2.0
    assert on_images["protocol"]["tokenization"] == "seed"


def test_sbg_has_one_row_per_candidate_count_and_is_reproducible(env):
    options = EvalOptions(split="all", metrics=NO_METEOR, seed=3, batch_size=4)
    first = evaluate(_manager(env), str(env["sbg"]), env["feats"], options=options)
    again = evaluate(_manager(env), str(env["sbg"]), env["feats"], options=options)
    assert [r["name"].rsplit(" ", 1) for r in first["rows"]] == [
        [f"{env['root'].name}/sbg", f"top-{k}"] for k in (1, 2, 5)
    ]
    assert [r["decoding"]["num_samples"] for r in first["rows"]] == [1, 2, 5]
    assert all(r["decoding"]["seed"] == 3 for r in first["rows"])
    assert first["captions"] == again["captions"] and len(first["captions"]) == 8


def test_report_files_and_the_cli(env, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["evaluate", "--model", env["prefix"], str(env["feats"]), "--out", str(out), "--no-meteor",
            "--metric-tokenizer", "ptb", "--clip", env["fx"]["clip_dir"],
            "--tokenizer", env["fx"]["tokenizer_dir"],
            "--models-dir", str(env["root"] / "models"), "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "BLEU-1" in printed and "CIDEr" in printed and str(out) in printed
    report = json.loads(out.read_text())
    assert report["format"] == "icg-eval-report" and report["protocol"]["tokenization"] == "ptb"
    assert "METEOR" not in report["rows"][0]["scores"] and "captions" not in report
    lines = (tmp_path / report["captions_file"]).read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == {"image", "references", report["rows"][0]["name"]}


def test_missing_java_leaves_meteor_out_with_a_note(env, tmp_path):
    report = evaluate(
        _manager(env),
        env["prefix"],
        env["feats"],
        options=EvalOptions(limit=2),
        java=JavaStatus(False, reason="no `java` on the PATH"),
    )
    assert report["rows"][0]["scores"]["METEOR"] is None and report["images"] == 2
    text = format_report(report)
    assert "note: METEOR needs Java" in text
    path, captions = write_report(report, tmp_path / "r.json")
    assert path.is_file() and captions.is_file()


def test_features_of_another_clip_are_refused(env, tmp_path):
    other = tmp_path / "clip"
    shutil.copytree(env["fx"]["clip_dir"], other)
    manager = ModelManager(RuntimeConfig(device="cpu", clip=str(other), tokenizer=env["fx"]["tokenizer_dir"]))
    with pytest.raises(ConfigError, match="features of CLIP"):
        evaluate(manager, env["prefix"], env["feats"], options=EvalOptions(metrics=NO_METEOR))


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="--split"):
        EvalOptions(split="val")
    with pytest.raises(ConfigError, match="--top"):
        EvalOptions(sbg_top=(0,))
