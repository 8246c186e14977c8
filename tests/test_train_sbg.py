"""SBG training end to end on the CPU: fixed keywords for 8 synthetic images, GPT-2 learns
"kw, kw ### caption"; the loss falls, the keywords bring back the training captions, and the checkpoint
(an HF folder + icg.json) captions images through the normal ``caption`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icg.cli import main
from icg.config import DecodingConfig
from icg.models.manager import ModelManager, RuntimeConfig
from icg.sbg.bank import LabelBank
from icg.sbg.keywords import KeywordSelector
from icg.sbg.vocab import convert_pickles
from icg.train.features import FeatureStore
from icg.train.loop import read_log
from icg.train.sbg import collate_sbg, example_tokens, prompt_text, read_keywords_file, select_keywords
from tests import fixtures
from tests.data import synthetic

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sbg")
    manifest = fixtures.write_all(root / "fx")
    vocabulary = root / "vocabulary.json"
    convert_pickles(manifest["all_labels_pkl"], manifest["encyclopedia_pkl"], vocabulary)
    data = synthetic.write_flickr8k(root / "flickr", n_images=8, captions_per_image=2)
    feats = root / "feats"
    args = ["features", str(data), "--out", str(feats), "--clip", manifest["clip_dir"], "--test-images", "0"]
    assert main([*args, "--quiet"]) == 0
    store = FeatureStore.open(feats)
    keywords = synthetic.write_keywords(root / "keywords.jsonl", [r.image for r in store.records])
    return {"root": root, "fx": manifest, "vocabulary": vocabulary, "data": data, "store": store,
            "feats": feats, "keywords": keywords, "models": root / "models"}  # fmt: skip


@pytest.fixture(scope="module")
def trained(env):
    run = env["root"] / "run"
    args = ["train", "sbg", str(env["feats"]), "--out", str(run), "--keywords", str(env["keywords"]),
            "--vocabulary", str(env["vocabulary"]), "--lm-config", "tiny",
            "--tokenizer", env["fx"]["tokenizer_dir"],
            "--epochs", "30", "--batch-size", "4", "--lr", "5e-3", "--warmup", "10", "--test-images", "0",
            "--models-dir", str(env["models"]), "--quiet"]  # fmt: skip
    assert main(args) == 0
    return run / "epoch-030"


@pytest.mark.slow  # the trained fixture: 30 epochs of training
def test_loss_falls(trained):
    epochs = [e for e in read_log(trained.parent) if e.get("kind") == "epoch"]
    assert len(epochs) == 30 and epochs[0]["loss"] > 4.0 and epochs[-1]["loss"] < 0.5


@pytest.mark.slow
def test_the_checkpoint_is_an_hf_folder_with_its_settings(env, trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "icg.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    settings = json.loads((trained / "icg.json").read_text())
    assert settings["format"] == "icg-sbg" and settings["clip"] == env["store"].clip
    assert json.loads(Path(settings["vocabulary"]).read_text())["format"] == "icg-sbg-vocabulary"


@pytest.mark.slow
def test_the_keywords_bring_back_the_training_captions(env, trained):
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(env["models"])))
    captioner = manager.captioner(str(trained))
    greedy = DecodingConfig(strategy="greedy", max_new_tokens=40, stop=".")
    hits = 0
    for i, pair in enumerate(synthetic.CAPTIONS):
        result = captioner.caption_keywords(synthetic.KEYWORDS[i], greedy)
        hits += synthetic.normalise(result.caption) in {synthetic.normalise(c) for c in pair}
    assert hits >= 7


@pytest.mark.slow
def test_the_checkpoint_captions_images_through_the_caption_command(env, trained, capsys):
    image = sorted((env["data"] / "Images").iterdir())[0]
    capsys.readouterr()
    code = main(
        ["caption", "--model", str(trained), str(image), "--models-dir", str(env["models"]), "--json"]
    )
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["caption"] and result["keywords"] and result["score_kind"] == "clip"
    assert len(result["candidates"]) >= 1


def test_prompt_tokens_are_ignored_by_the_loss():
    tok = fixtures.tiny_tokenizer()
    ids, prompt_len = example_tokens(tok, ["dog", "grass"], "a dog runs .", max_caption=None, positions=128)
    assert tok.decode(ids[:prompt_len]) == prompt_text(["dog", "grass"]) == "dog, grass ###"
    assert ids[prompt_len:] == tok(" a dog runs .", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    batch = collate_sbg([(ids, prompt_len), (ids[:-2], prompt_len)], pad_id=tok.eos_token_id)
    assert batch["labels"][:, :prompt_len].eq(-100).all()
    assert batch["labels"][0, prompt_len:].tolist() == ids[prompt_len:]
    assert batch["labels"][1, len(ids) - 2 :].eq(-100).all()


def test_long_prompts_drop_the_last_keywords_to_fit():
    tok = fixtures.tiny_tokenizer()
    words = ["dog", "grass", "water", "beach", "street", "bike", "snow", "field"]
    ids, prompt_len = example_tokens(tok, words, "a dog .", max_caption=None, positions=20)
    assert len(ids) <= 20
    assert tok.decode(ids[:prompt_len]).startswith("dog, grass") and tok.decode(ids[:prompt_len]).endswith(
        "###"
    )


def test_keyword_selection_for_training_images_is_cached(env, tmp_path, monkeypatch):
    from icg.clip_encoder import ClipEncoder
    from icg.sbg.vocab import Vocabulary

    store = env["store"]
    encoder = ClipEncoder.load(
        fixtures.tiny_clip_spec(env["root"] / "fx" / "clip"), device="cpu", dtype="fp32"
    )
    bank = LabelBank.build(Vocabulary.from_json(env["vocabulary"]), encoder, encoder.model_id)
    selector = KeywordSelector(bank)
    cache = tmp_path / "keywords.jsonl"
    chosen = select_keywords(store, store.records, selector, cache=cache)
    assert set(chosen) == {r.image for r in store.records} and all(chosen.values())
    direct = selector.select(torch.nn.functional.normalize(store.features()[:1], dim=-1))[0].texts
    assert chosen[store.records[0].image] == direct
    monkeypatch.setattr(selector, "select", lambda *a, **k: pytest.fail("the cache was not used"))
    assert select_keywords(store, store.records, selector, cache=cache) == chosen
    assert read_keywords_file(env["keywords"])[store.records[2].image] == synthetic.KEYWORDS[2]


def test_init_continues_from_an_sbg_model(env):
    from safetensors.torch import load_file

    run = env["root"] / "from-init"
    args = ["train", "sbg", str(env["feats"]), "--out", str(run), "--init", env["fx"]["sbg_generator_dir"],
            "--keywords", str(env["keywords"]), "--vocabulary", str(env["vocabulary"]),
            "--tokenizer", env["fx"]["tokenizer_dir"], "--epochs", "1", "--lr", "1e-9", "--warmup", "0",
            "--test-images", "0", "--models-dir", str(env["models"]), "--quiet"]  # fmt: skip
    assert main(args) == 0
    start = load_file(f"{env['fx']['sbg_generator_dir']}/model.safetensors")
    trained = load_file(str(run / "epoch-001" / "model.safetensors"))
    assert set(start) == set(trained)
    for name, value in start.items():
        torch.testing.assert_close(trained[name], value, atol=1e-6, rtol=0)
