"""The paper's training runs as ICG's defaults, and the options that reproduce the SBG notebook's data
scheme: lines packed into 480-token blocks with the loss on every token, and held-out images whose loss
is reported after every epoch. Tiny models, a few steps, on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from icg.cli import build_parser, main
from icg.commands.train import _train_config
from icg.errors import ConfigError
from icg.train.config import PREFIX_PAPER_RUN, SBG_PAPER_RUN, TrainConfig
from icg.train.datasets import DatasetError
from icg.train.features import FeatureStore
from icg.train.lm import load_lm
from icg.train.loop import STATE_JSON, lr_factor, read_log, train
from icg.train.sbg import SbgOptions, build_sbg_task, collate_sbg, example_tokens, pack_lines
from tests import fixtures
from tests.data import synthetic
from tests.test_train_loop import RegressionTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

IMAGES, TEST, CAPTIONS = 40, 4, 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    manifest = fixtures.write_all(root / "fx")
    data = synthetic.write_flickr8k(root / "flickr", n_images=IMAGES, captions_per_image=CAPTIONS)
    feats = root / "feats"
    args = ["features", str(data), "--out", str(feats), "--clip", manifest["clip_dir"],
            "--test-images", str(TEST), "--quiet"]  # fmt: skip
    assert main(args) == 0
    store = FeatureStore.open(feats)
    keywords = synthetic.write_keywords(root / "keywords.jsonl", [r.image for r in store.records])
    tokenizer = fixtures.tiny_tokenizer()
    return {"root": root, "fx": manifest, "store": store, "feats": feats, "keywords": keywords,
            "tokenizer": tokenizer, "models": root / "models"}  # fmt: skip


def _keywords(env) -> dict[str, list[str]]:
    words = synthetic.KEYWORDS
    return {r.image: words[i % len(words)] for i, r in enumerate(env["store"].records)}


def _task(env, **kwargs):
    lm = load_lm(env["tokenizer"], lm_config="tiny")
    return build_sbg_task(env["store"], lm, env["tokenizer"], _keywords(env), vocabulary="v", **kwargs)


def _parse(*argv: str):
    return build_parser().parse_args(["train", *argv, "FEATURES", "--out", "RUN"])


# ------------------------------------------------------------------------------------------ defaults
def test_sbg_defaults_are_the_notebook_run():
    args = _parse("sbg")
    cfg = _train_config(args)
    assert (cfg.epochs, cfg.scheduled_epochs, cfg.batch_size) == (10, 10, 8)
    assert (cfg.lr, cfg.warmup_steps) == (5e-5, 0)
    assert (cfg.adam_eps, cfg.weight_decay, cfg.max_grad_norm, cfg.drop_last) == (1e-8, 0.0, 1.0, False)
    assert cfg == SBG_PAPER_RUN
    assert args.packing is True and args.block_size == 480 and SbgOptions().block_size == 480
    assert args.val_images is None  # as many as the test split: the notebook's 1000 on Flickr


def test_prefix_defaults_are_the_notebook_run():
    args = _parse("prefix")
    cfg = _train_config(args)
    assert (cfg.epochs, cfg.scheduled_epochs, cfg.batch_size) == (29, 30, 40)
    assert (cfg.lr, cfg.warmup_steps) == (2e-5, 100)
    assert (cfg.adam_eps, cfg.weight_decay, cfg.max_grad_norm, cfg.drop_last) == (1e-6, 0.0, 1.0, True)
    assert cfg == PREFIX_PAPER_RUN
    assert args.val_images == 0


def test_chosen_epochs_get_a_schedule_of_their_own_unless_told():
    assert _train_config(_parse("prefix", "--epochs", "10")).scheduled_epochs == 10
    assert _train_config(_parse("prefix", "--schedule-epochs", "40")).epochs == 29
    cfg = _train_config(_parse("sbg", "--epochs", "3", "--schedule-epochs", "5", "--adam-eps", "1e-6"))
    assert (cfg.epochs, cfg.scheduled_epochs, cfg.adam_eps) == (3, 5, 1e-6)
    assert _train_config(_parse("prefix", "--no-drop-last")).drop_last is False
    assert _train_config(_parse("sbg", "--drop-last")).drop_last is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (("prefix", "--epochs", "31", "--schedule-epochs", "30"), r"\(30\) must be at least --epochs"),
        (("sbg", "--adam-eps", "0"), "--adam-eps must be positive"),
    ],
)
def test_bad_optimisation_settings_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        _train_config(_parse(*argv))


# ------------------------------------------------------------------------------------------ the loop
def test_drop_last_schedule_epochs_and_eps_reach_the_optimiser(tmp_path):
    # 24 examples, batch 5: 4 full batches per epoch; 2 epochs run on a schedule sized for 3
    cfg = TrainConfig(epochs=2, schedule_epochs=3, batch_size=5, lr=0.1, warmup_steps=2, log_every=1,
                      adam_eps=1e-6, drop_last=True)  # fmt: skip
    result = train(RegressionTask(), cfg, tmp_path)
    assert result.steps == 8
    steps = [e for e in read_log(tmp_path) if "kind" not in e]
    assert [e["step"] for e in steps] == list(range(1, 9))
    for entry in steps:  # the lr of each step follows the 12-step schedule, not an 8-step one
        assert math.isclose(entry["lr"], 0.1 * lr_factor(entry["step"] - 1, 2, 12), rel_tol=1e-9)
    assert steps[-1]["lr"] > 0
    state = json.loads((result.checkpoint / STATE_JSON).read_text())
    assert state["optimizer"]["param_groups"][0]["eps"] == 1e-6


def test_drop_last_without_a_full_batch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no full batch of --batch-size 40"):
        train(RegressionTask(), TrainConfig(batch_size=40, drop_last=True), tmp_path)


def test_the_validation_loss_is_the_loss_of_the_held_out_examples(tmp_path):
    task = RegressionTask()
    task.val_dataset = list(range(18, 24))
    task.dataset = list(range(18))
    result = train(task, TrainConfig(epochs=2, batch_size=4, lr=0.05), tmp_path)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(task.model(task.x[18:]).squeeze(-1), task.y[18:]).item()
    assert [("val_loss" in h) for h in result.history] == [True, True]
    assert math.isclose(result.history[-1]["val_loss"], expected, rel_tol=1e-5)
    logged = [e for e in read_log(tmp_path) if e.get("kind") == "epoch"]
    assert [e["val_loss"] for e in logged] == [h["val_loss"] for h in result.history]
    assert json.loads((tmp_path / "run.json").read_text())["validation_examples"] == 6


# ------------------------------------------------------------------------------------------ packing
def test_pack_lines_cuts_the_concatenation_into_blocks():
    lines = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert pack_lines(lines, 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the remainder [9, 10] is dropped
    assert pack_lines(lines, 20) == [list(range(1, 11))]  # shorter than a block: one short block
    assert pack_lines([], 4) == []


def test_packing_makes_480_token_blocks_with_the_loss_on_every_token(env):
    task = _task(env, val_images=0)
    tok = env["tokenizer"]
    assert task.facts["options"]["packing"] and len(task.dataset) >= 2
    assert all(len(ids) == 480 and start == 0 for ids, start in task.dataset.examples)
    batch = collate_sbg(task.dataset.examples[:2], pad_id=tok.eos_token_id)
    assert batch["input_ids"].shape == (2, 480)
    assert torch.equal(batch["labels"], batch["input_ids"])  # nothing is masked: prompt, caption, eos
    # the blocks are whole lines "kw, kw ### caption<eos>" laid end to end
    train_records, _ = env["store"].training_split(None, 0)
    lines = [
        example_tokens(tok, _keywords(env)[r.image], c.lower(), max_caption=None, positions=None)[0]
        for r in train_records
        for c in r.captions
    ]
    flat = [t for ids, _ in task.dataset.examples for t in ids]
    assert len(flat) == sum(map(len, lines)) // 480 * 480
    dropped_lines = len(lines) - flat.count(tok.eos_token_id)  # those in the dropped remainder
    assert 0 <= dropped_lines <= math.ceil(480 / min(map(len, lines)))
    text = tok.decode(flat)
    inside = text.split("<|endoftext|>")[1:-1]  # shuffled; every whole line inside is a training line
    known = {tok.decode(line).removesuffix("<|endoftext|>") for line in lines}
    assert inside and set(inside) <= known


def test_line_by_line_keeps_the_loss_on_the_caption(env):
    task = _task(env, val_images=0, options=SbgOptions(packing=False))
    ids, prompt_len = task.dataset.examples[0]
    assert prompt_len > 0 and ids[-1] == env["tokenizer"].eos_token_id
    labels = collate_sbg([(ids, prompt_len)], pad_id=env["tokenizer"].eos_token_id)["labels"][0]
    assert labels[:prompt_len].eq(-100).all() and labels[prompt_len:].ne(-100).all()


def test_packing_options_are_checked(env):
    with pytest.raises(ConfigError, match="--max-tokens cuts captions in line-by-line training"):
        SbgOptions(max_tokens=20)
    with pytest.raises(ConfigError, match="--block-size must be at least 2"):
        SbgOptions(block_size=1)
    lm = load_lm(env["tokenizer"], lm_config="tiny")
    with pytest.raises(ConfigError, match="--block-size 600 is longer than the model's 512 positions"):
        build_sbg_task(env["store"], lm, env["tokenizer"], _keywords(env), vocabulary="v",
                       options=SbgOptions(block_size=600))  # fmt: skip


# ------------------------------------------------------------------------------------------ validation split
def test_the_validation_split_holds_out_exactly_n_images_before_the_test_split(env):
    store = env["store"]
    train_all, test = store.split()
    train_records, val = store.training_split(None, 3)
    assert len(val) == 3 and len(train_records) == len(train_all) - 3
    assert val == train_all[-3:] and not set(r.image for r in val) & set(r.image for r in test)
    default_train, default_val = store.training_split()  # 0 unless asked
    assert default_val == [] and default_train == train_all
    assert len(store.training_split(None, None)[1]) == TEST  # None: as many as the test split
    task = _task(env, val_images=3, options=SbgOptions(block_size=32))
    assert task.facts["val_images"] == 3
    val_tokens = sum(
        len(example_tokens(env["tokenizer"], _keywords(env)[r.image], c.lower(), max_caption=None,
                           positions=None)[0])
        for r in val for c in r.captions
    )  # fmt: skip
    assert len(task.val_dataset) == val_tokens // 32
    line_task = _task(env, val_images=3, options=SbgOptions(packing=False))
    assert len(line_task.val_dataset) == 3 * CAPTIONS
    assert len(line_task.dataset) == (len(train_all) - 3) * CAPTIONS


@pytest.mark.parametrize(
    "n, message", [(-1, "--val-images must be 0 or more"), (IMAGES - TEST, "leaves no training")]
)
def test_bad_validation_sizes_are_refused(env, n, message):
    with pytest.raises(DatasetError, match=message):
        env["store"].training_split(None, n)


def test_train_sbg_reports_a_validation_loss_every_epoch(env, capsys):
    run = env["root"] / "run-val"
    args = ["train", "sbg", str(env["feats"]), "--out", str(run), "--keywords", str(env["keywords"]),
            "--lm-config", "tiny", "--tokenizer", env["fx"]["tokenizer_dir"], "--epochs", "2",
            "--block-size", "64", "--val-images", "2", "--models-dir", str(env["models"]),
            "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    epochs = [e for e in read_log(run) if e.get("kind") == "epoch"]
    assert len(epochs) == 2 and all(e["val_loss"] > 0 for e in epochs)
    assert f"validation loss: {epochs[-1]['val_loss']:.4f}" in out
    info = json.loads((run / "run.json").read_text())
    assert info["task"]["val_images"] == 2 and info["validation_examples"] > 0
    assert info["task"]["options"]["packing"] and info["task"]["options"]["block_size"] == 64
    assert info["config"]["batch_size"] == 8 and info["config"]["adam_eps"] == 1e-8
