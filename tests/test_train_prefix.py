"""CLIP-prefix training end to end on the CPU: tiny CLIP, 8 synthetic images with 2 captions each, a
few hundred steps; the loss falls, the model says its training captions, and the checkpoint captions
through the normal ``caption`` command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from icg.captioners.prefix import PrefixCaptioner, load_prefix_model
from icg.cli import main
from icg.errors import ConfigError
from icg.train.features import FeatureStore
from icg.train.lm import load_lm
from icg.train.loop import TrainConfig, read_log, train
from icg.train.prefix import PrefixOptions, build_prefix_task, caption_tokens, collate_prefix
from tests import fixtures
from tests.data import synthetic

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    manifest = fixtures.write_all(root / "fx")
    data = synthetic.write_flickr8k(root / "flickr", n_images=8, captions_per_image=2)
    feats = root / "feats"
    args = ["features", str(data), "--out", str(feats), "--clip", manifest["clip_dir"], "--test-images", "0"]
    assert main([*args, "--quiet"]) == 0
    return {"root": root, "fx": manifest, "data": data, "feats": feats, "store": FeatureStore.open(feats)}


@pytest.fixture(scope="module")
def trained(env):
    run = env["root"] / "run"
    args = ["train", "prefix", str(env["feats"]), "--out", str(run), "--lm-config", "tiny",
            "--tokenizer", env["fx"]["tokenizer_dir"], "--epochs", "30", "--batch-size", "4", "--lr", "5e-3",
            "--warmup", "10", "--log-every", "20", "--test-images", "0", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return run


@pytest.mark.slow  # the trained fixture: 30 epochs of training
def test_loss_falls_and_the_log_has_throughput(trained):
    log = read_log(trained)
    epochs = [e for e in log if e.get("kind") == "epoch"]
    assert len(epochs) == 30
    assert epochs[0]["loss"] > 4.0  # about ln(vocabulary) at the start
    assert epochs[-1]["loss"] < 0.5
    assert all(e["samples_per_s"] > 0 for e in log)


@pytest.mark.slow
def test_the_model_reproduces_its_training_captions(env, trained):
    tok = fixtures.tiny_tokenizer()
    model, cfg = load_prefix_model(trained / "epoch-030")
    assert cfg.clip == env["store"].clip and cfg.normalize and cfg.decoding["strategy"] == "greedy"
    captioner = PrefixCaptioner(model, tok, model_id="trained", normalize=True)
    feats = torch.nn.functional.normalize(env["store"].features(), dim=-1)
    results = captioner.caption_features(feats)
    hits = [
        synthetic.normalise(r.caption) in {synthetic.normalise(c) for c in record.captions}
        for r, record in zip(results, env["store"].records)
    ]
    assert sum(hits) >= 7, [r.caption for r in results]


@pytest.mark.slow
def test_the_checkpoint_captions_through_the_caption_command(env, trained, capsys):
    images = [str(p) for p in sorted((env["data"] / "Images").iterdir())[:3]]
    capsys.readouterr()
    assert main(["caption", "--model", str(trained / "epoch-030"), *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    said = [line.split("\t", 1)[1] for line in lines]
    assert all(s[0].isupper() and s.endswith(".") for s in said)  # the clean style of the caption command
    captions = [{synthetic.normalise(c) for c in pair} for pair in synthetic.CAPTIONS[:3]]
    assert sum(synthetic.normalise(s) in c for s, c in zip(said, captions)) >= 2


def test_labels_ignore_padding_and_the_end_of_text_token_is_learnt():
    tok = fixtures.tiny_tokenizer()
    ids = caption_tokens(tok, ["A dog runs .", "A man rides a bike down the street ."], True, None)
    assert all(t[-1] == tok.eos_token_id for t in ids)
    assert ids[0][:-1] == tok.encode("a dog runs .")  # lower-cased as the seed
    batch = collate_prefix([(torch.zeros(4), ids[0]), (torch.ones(4), ids[1])], pad_id=tok.eos_token_id)
    assert batch["tokens"].shape == batch["labels"].shape == (2, len(ids[1]))
    assert batch["labels"][0, len(ids[0]) :].eq(-100).all()
    assert batch["labels"][0, len(ids[0]) - 1] == tok.eos_token_id  # the EOS itself is a target


def test_the_loss_is_on_caption_tokens_only(env):
    tok = fixtures.tiny_tokenizer()
    task = build_prefix_task(
        env["store"], load_lm(tok, lm_config="tiny"), tok, tokenizer_ref="t", test_images=0
    )
    batch = task.collate([task.dataset[0], task.dataset[5]])
    model = task.model.eval()
    with torch.no_grad():
        out = model(batch["features"], batch["tokens"], batch["labels"])
        p = model.prefix_length
        logits = out.logits[:, p - 1 : -1]  # position p-1+t predicts caption token t
        expected = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100
        )
    torch.testing.assert_close(out.loss, expected)


def test_mapper_only_leaves_gpt2_untouched(env, tmp_path):
    tok = fixtures.tiny_tokenizer()
    lm = load_lm(tok, lm_config="tiny")
    task = build_prefix_task(
        env["store"], lm, tok, tokenizer_ref="t", options=PrefixOptions(mapper_only=True), test_images=0
    )
    gpt_before = {k: v.clone() for k, v in task.model.gpt.state_dict().items()}
    mapper_before = {k: v.clone() for k, v in task.model.clip_project.state_dict().items()}
    train(task, TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=0), tmp_path)
    assert all(torch.equal(v, task.model.gpt.state_dict()[k]) for k, v in gpt_before.items())
    assert not all(torch.equal(v, task.model.clip_project.state_dict()[k]) for k, v in mapper_before.items())
    assert not task.model.gpt.training  # frozen GPT-2 ran without dropout
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["task"]["options"]["mapper_only"] is True


def test_init_continues_from_a_trained_model(env):
    run = env["root"] / "from-init"
    args = ["train", "prefix", str(env["feats"]), "--out", str(run), "--init", env["fx"]["clip_prefix_pt"],
            "--tokenizer", env["fx"]["tokenizer_dir"], "--epochs", "1", "--lr", "1e-9", "--warmup", "0",
            "--test-images", "0", "--quiet"]  # fmt: skip
    assert main(args) == 0
    start, start_cfg = load_prefix_model(env["fx"]["clip_prefix_pt"])
    trained, cfg = load_prefix_model(run / "epoch-001")
    assert cfg.mapper == start_cfg.mapper and cfg.clip == env["store"].clip
    for name, value in start.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, atol=1e-6, rtol=0)


def test_init_refuses_features_of_another_clip(env):
    tok = fixtures.tiny_tokenizer()
    model, cfg = load_prefix_model(env["fx"]["clip_prefix_pt"])
    other = replace(cfg, clip={"arch": "ViT-B-32", "pretrained": "openai"})
    with pytest.raises(ConfigError, match="was trained on CLIP ViT-B-32/openai"):
        build_prefix_task(env["store"], None, tok, tokenizer_ref="t", start=(model, other), test_images=0)
