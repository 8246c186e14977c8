"""The training loop shared by both captioners.

AdamW with a linear warm-up then linear decay to zero (``transformers.get_linear_schedule_with_warmup``,
as the seed used; the decay may be sized for more epochs than are run, as the seed's CLIP-prefix loop
did), gradient clipping by global norm, autocast (fp16 with a gradient scaler, or bf16) on CUDA only, a
validation loss after every epoch when the task holds out examples, a checkpoint at the end of every
epoch, and resume from the newest one.

A run folder looks like::

    run.json                 what is trained and how (a resumed run must match its ``task``)
    train-log.jsonl          one line per logged step and per epoch (loss, lr, samples/s)
    epoch-001/ ...           the model in its project format (loadable with ``--model <folder>``)
    epoch-002/
        <model files>
        training-state.json          epoch, step, optimiser hyper-parameters, scaler, history
        training-state.safetensors   optimiser moments and RNG states

Only the newest epoch keeps its training state (the optimiser moments are twice the model size); with
``keep`` > 0 only the newest ``keep`` epoch folders are kept. Nothing is pickled.

A task (``TrainTask``) supplies the model, the data, the loss and the checkpoint format; ``TrainConfig``
(``icg.train.config``) the optimisation settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from icg.errors import ConfigError, IcgError
from icg.sinks import atomic_write_json
from icg.train.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "icg-training-state"
STATE_VERSION = 1
STATE_JSON = "training-state.json"
STATE_TENSORS = "training-state.safetensors"
RUN_JSON = "run.json"
LOG_NAME = "train-log.jsonl"
_EPOCH_DIR = re.compile(r"^epoch-(\d{3,})$")


class TrainTask(Protocol):
    """What the loop needs from a captioner's training setup. A task may also hold ``val_dataset`` (a
    map-style Dataset in the training data's form): its loss is reported after every epoch."""

    model: torch.nn.Module
    dataset: Any  # a map-style torch Dataset

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]: ...

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters, in a fixed order (the optimiser state is stored by position)."""
        ...

    def set_train_mode(self) -> None: ...

    def save(self, folder: Path) -> None:
        """Write the model in its project format into ``folder``."""
        ...

    def load(self, folder: Path) -> None:
        """Load the weights written by ``save`` into ``self.model`` (for resuming)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON facts that must not change between a run and its resumption."""
        ...


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    epochs_done: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None


def lr_factor(step: int, warmup: int, total: int) -> float:
    """``get_linear_schedule_with_warmup``: step/warmup, then linear decay to 0 at ``total`` steps."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. Half precision is a CUDA feature here."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        raise ConfigError(
            f"--precision {precision} needs a CUDA device (training runs on {device}); use fp32"
        )
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _grad_scaler(enabled: bool):
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


# --------------------------------------------------------------------------------------------- the loop
def train(
    task: TrainTask,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``task`` for ``cfg.epochs`` epochs, checkpointing into ``out_dir`` after each one.

    With ``resume`` a run continues from the newest checkpoint in ``out_dir`` (its task must match);
    without it, a folder that already holds checkpoints is refused.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    amp_dtype = resolve_precision(cfg.precision, device)
    if len(task.dataset) == 0:
        raise ConfigError("no training examples (is the training split empty? see --test-images)")
    task.model.to(device)
    params = task.parameters()
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    if cfg.drop_last and len(task.dataset) < cfg.batch_size:
        raise ConfigError(
            f"{len(task.dataset)} training examples make no full batch of --batch-size {cfg.batch_size}; "
            "lower --batch-size or pass --no-drop-last"
        )
    val_dataset = getattr(task, "val_dataset", None)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    scaler = _grad_scaler(amp_dtype == torch.float16)
    rounding = math.floor if cfg.drop_last else math.ceil
    steps_per_epoch = rounding(len(task.dataset) / cfg.batch_size)
    total_steps = cfg.scheduled_epochs * steps_per_epoch

    run_info = {
        "task": task.describe(),
        "config": asdict(cfg),
        "examples": len(task.dataset),
        "validation_examples": len(val_dataset) if val_dataset is not None else 0,
    }
    start_epoch, step, history = 0, 0, []
    latest = latest_checkpoint(out)
    if latest is not None:
        if not resume:
            raise ConfigError(
                f"{out}: already holds checkpoints ({latest.name}); resume, or choose another --out"
            )
        start_epoch, step, history = _resume(task, optimizer, scaler, latest, run_info["task"], device)
        log.info("resuming from %s (epoch %d, step %d)", latest, start_epoch, step)
    else:
        torch.manual_seed(cfg.seed)
    atomic_write_json(out / RUN_JSON, run_info, default=_json_default)
    if start_epoch >= cfg.epochs:
        log.info("%s: already trained for %d epochs", out, start_epoch)
        return TrainResult(out, latest, start_epoch, step, history)

    log.info(
        "training %s: %d examples, %d steps/epoch, epochs %d-%d, device %s, %s",
        run_info["task"].get("kind", "model"),
        len(task.dataset),
        steps_per_epoch,
        start_epoch + 1,
        cfg.epochs,
        device,
        "fp32" if amp_dtype is None else f"autocast {str(amp_dtype).replace('torch.', '')}",
    )
    checkpoint = latest
    for epoch in range(start_epoch, cfg.epochs):
        loader = torch.utils.data.DataLoader(
            task.dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=cfg.drop_last,
            collate_fn=task.collate,
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        )
        task.model.train()
        task.set_train_mode()
        epoch_loss, epoch_samples, window_loss, window_steps, window_samples = 0.0, 0, 0.0, 0, 0
        epoch_start = window_start = time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            factor = lr_factor(step, cfg.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            with _autocast(device, amp_dtype):
                loss = task.loss(batch)
            if not torch.isfinite(loss.detach()):
                if amp_dtype == torch.float16:
                    log.warning("step %d: non-finite loss under fp16; the scaler skips this step", step)
                else:
                    raise IcgError(f"the loss became {loss.item()} at step {step}; try a lower --lr")
            scaler.scale(loss).backward()
            if cfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            size = next(iter(batch.values())).shape[0]
            value = float(loss.detach())
            epoch_loss += value * size
            epoch_samples += size
            window_loss += value
            window_steps += 1
            window_samples += size
            if step % cfg.log_every == 0:
                _sync(device)
                rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                entry = {
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": window_loss / window_steps,
                    "lr": cfg.lr * factor,
                    "samples_per_s": rate,
                }
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s",
                    epoch + 1,
                    step,
                    total_steps,
                    entry["loss"],
                    entry["lr"],
                    rate,
                )
                _append_log(out, entry)
                window_loss, window_steps, window_samples = 0.0, 0, 0
                window_start = time.perf_counter()
            if should_stop is not None and should_stop():
                raise IcgError(f"training stopped at step {step}; the last checkpoint is {checkpoint}")
        _sync(device)
        seconds = time.perf_counter() - epoch_start
        summary = {
            "epoch": epoch + 1,
            "step": step,
            "loss": epoch_loss / max(epoch_samples, 1),
            "samples_per_s": epoch_samples / max(seconds, 1e-9),
            "seconds": seconds,
        }
        if val_dataset is not None and len(val_dataset):
            summary["val_loss"] = validation_loss(task, val_dataset, cfg, device, amp_dtype)
        history.append(summary)
        log.info(
            "epoch %d/%d done: loss %.4f%s, %.1f s, %.1f samples/s",
            epoch + 1,
            cfg.epochs,
            summary["loss"],
            f", validation loss {summary['val_loss']:.4f}" if "val_loss" in summary else "",
            seconds,
            summary["samples_per_s"],
        )
        _append_log(out, {**summary, "kind": "epoch"})
        checkpoint = _save_checkpoint(task, optimizer, scaler, out, epoch + 1, step, history, run_info, cfg)
    return TrainResult(out, checkpoint, cfg.epochs, step, history)


def validation_loss(task: TrainTask, dataset, cfg: TrainConfig, device, amp_dtype=None) -> float:
    """The mean loss over ``dataset`` (weighted by batch size), in eval mode, batches of ``cfg.batch_size``
    in order; the model is left in eval mode (the next epoch sets train mode)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=task.collate)
    task.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with _autocast(device, amp_dtype):
                loss = task.loss(batch)
            size = next(iter(batch.values())).shape[0]
            total += float(loss) * size
            count += size
    return total / max(count, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------- checkpoints
def epoch_dirs(out: Path) -> list[Path]:
    """Epoch folders of a run, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _EPOCH_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    """The newest epoch folder that holds a complete training state."""
    for folder in reversed(epoch_dirs(out)):
        if (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file():
            return folder
    return None


def _save_checkpoint(task, optimizer, scaler, out, epoch, step, history, run_info, cfg) -> Path:
    from safetensors.torch import save_file

    final = out / f"epoch-{epoch:03d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
    try:
        task.save(tmp)
        tensors, meta = _optimizer_state(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "epoch": epoch,
            "step": step,
            "task": run_info["task"],
            "config": asdict(cfg),
            "optimizer": meta,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "history": history,
        }
        atomic_write_json(tmp / STATE_JSON, state, default=_json_default)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for older in epoch_dirs(out):
        if older != final:
            for name in (STATE_JSON, STATE_TENSORS):
                (older / name).unlink(missing_ok=True)
    if cfg.keep:
        for older in epoch_dirs(out)[: -cfg.keep]:
            shutil.rmtree(older, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def _optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (safetensors) and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        values[str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{index}.{key}"] = value
                values[str(index)][key] = None
            else:
                values[str(index)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": values}


def _load_optimizer_state(optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for index, entry in meta["state"].items():
        state[int(index)] = {
            key: tensors[f"opt.{index}.{key}"] if value is None else value for key, value in entry.items()
        }
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _resume(task, optimizer, scaler, folder: Path, expected_task: dict[str, Any], device):
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / STATE_TENSORS))
    except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
        raise IcgError(f"{folder}: unreadable training state ({err})") from err
    if state.get("format") != STATE_FORMAT or state.get("version", 0) > STATE_VERSION:
        raise IcgError(f"{folder / STATE_JSON}: not a training state this ICG can read")
    if state["task"] != json.loads(json.dumps(expected_task)):
        diff = sorted(
            k for k in set(state["task"]) | set(expected_task) if state["task"].get(k) != expected_task.get(k)
        )
        raise ConfigError(
            f"{folder}: the checkpoint was trained with other settings ({', '.join(diff)}); "
            "use the same settings to resume, or another --out"
        )
    task.load(folder)
    task.model.to(device)
    _load_optimizer_state(optimizer, state["optimizer"], tensors)
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return int(state["epoch"]), int(state["step"]), list(state.get("history", []))


# --------------------------------------------------------------------------------------------- files


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _append_log(out: Path, entry: dict[str, Any]) -> None:
    with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_log(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trainable(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [p for p in parameters if p.requires_grad]
