"""The shared training loop: schedule, clipping, checkpoints without pickles, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from icg.errors import ConfigError, IcgError
from icg.train.loop import (
    STATE_JSON,
    STATE_TENSORS,
    TrainConfig,
    epoch_dirs,
    latest_checkpoint,
    lr_factor,
    read_log,
    resolve_precision,
    train,
)


class RegressionTask:
    """y = x @ w on fixed random data: small, deterministic, with a real optimiser state."""

    def __init__(self, seed: int = 0, loss_value: float | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(24, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 1)
        self.dataset = list(range(24))
        self.loss_value = loss_value

    def collate(self, items):
        idx = torch.tensor(items)
        return {"x": self.x[idx], "y": self.y[idx]}

    def loss(self, batch):
        if self.loss_value is not None:
            return self.model(batch["x"]).sum() * 0 + self.loss_value
        return torch.nn.functional.mse_loss(self.model(batch["x"]).squeeze(-1), batch["y"])

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        return None

    def save(self, folder: Path) -> None:
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / "w.safetensors")
        )

    def load(self, folder: Path) -> None:
        self.model.load_state_dict(load_file(str(folder / "w.safetensors")))

    def describe(self):
        return {"kind": "regression", "inputs": 4}


CFG = TrainConfig(epochs=4, batch_size=5, lr=0.5, warmup_steps=3, log_every=2, max_grad_norm=1.0)


def test_schedule_matches_transformers_linear_warmup():
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=4, num_training_steps=20)
    for step in range(20):
        assert math.isclose(opt.param_groups[0]["lr"], lr_factor(step, 4, 20), abs_tol=1e-12)
        opt.step()
        sched.step()


def test_training_lowers_the_loss_and_logs_throughput(tmp_path):
    result = train(RegressionTask(), CFG, tmp_path)
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 2
    log = read_log(tmp_path)
    steps = [e for e in log if "kind" not in e]
    assert steps and all(e["samples_per_s"] > 0 for e in steps)
    assert [e["epoch"] for e in log if e.get("kind") == "epoch"] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run.json").read_text())["task"] == {"kind": "regression", "inputs": 4}


def test_checkpoints_hold_json_and_safetensors_only_and_state_only_in_the_newest(tmp_path):
    train(RegressionTask(), CFG, tmp_path)
    folders = epoch_dirs(tmp_path)
    assert [f.name for f in folders] == ["epoch-001", "epoch-002", "epoch-003", "epoch-004"]
    assert latest_checkpoint(tmp_path) == folders[-1]
    for folder in folders[:-1]:
        assert not (folder / STATE_JSON).exists() and (folder / "w.safetensors").is_file()
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".safetensors"}
    state = json.loads((folders[-1] / STATE_JSON).read_text())
    assert state["epoch"] == 4 and state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert any(k.startswith("opt.") for k in load_file(str(folders[-1] / STATE_TENSORS)))


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = RegressionTask()
    train(straight, CFG, tmp_path / "straight")
    steps = []

    def stop() -> bool:  # 5 steps per epoch: stop early in epoch 3
        steps.append(1)
        return len(steps) == 11

    with pytest.raises(IcgError, match="stopped at step 11"):
        train(RegressionTask(), CFG, tmp_path / "split", should_stop=stop)
    assert latest_checkpoint(tmp_path / "split").name == "epoch-002"
    resumed = RegressionTask()
    torch.nn.init.zeros_(resumed.model.weight)  # whatever it starts from, the checkpoint wins
    result = train(resumed, CFG, tmp_path / "split")
    torch.testing.assert_close(resumed.model.weight, straight.model.weight, rtol=0, atol=0)
    expected = json.loads((tmp_path / "straight/epoch-004" / STATE_JSON).read_text())["history"]
    assert [h["loss"] for h in result.history] == [h["loss"] for h in expected]


def test_keep_prunes_old_epochs(tmp_path):
    train(RegressionTask(), TrainConfig(**{**CFG.__dict__, "keep": 2}), tmp_path)
    assert [f.name for f in epoch_dirs(tmp_path)] == ["epoch-003", "epoch-004"]


def test_existing_checkpoints_without_resume_and_changed_task_are_refused(tmp_path):
    train(RegressionTask(), TrainConfig(**{**CFG.__dict__, "epochs": 1}), tmp_path)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(RegressionTask(), CFG, tmp_path, resume=False)
    other = RegressionTask()
    other.describe = lambda: {"kind": "regression", "inputs": 5}
    with pytest.raises(ConfigError, match="inputs"):
        train(other, CFG, tmp_path)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(IcgError, match="lower --lr"):
        train(RegressionTask(loss_value=float("nan")), CFG, tmp_path)


def test_half_precision_is_cuda_only():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("fp32", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_empty_dataset_is_refused(tmp_path):
    task = RegressionTask()
    task.dataset = []
    with pytest.raises(ConfigError, match="no training examples"):
        train(task, CFG, tmp_path)
