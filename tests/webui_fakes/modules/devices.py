"""Fake ``modules.devices`` (1.10): devices and dtypes as the WebUI sets them after start-up, and
``torch_gc`` counting its calls. Everything runs on the CPU here."""

from __future__ import annotations

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu
device_interrogate: torch.device = cpu
dtype: torch.dtype = torch.float16
dtype_vae: torch.dtype = torch.float16
dtype_unet: torch.dtype = torch.float16
gc_calls = 0


def get_optimal_device_name():
    return "cpu"


def get_optimal_device():
    return torch.device(get_optimal_device_name())


def get_device_for(task):
    from modules import shared

    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu
    return get_optimal_device()


def torch_gc():
    global gc_calls
    gc_calls += 1


def reset() -> None:
    global device, device_interrogate, gc_calls
    device = cpu
    device_interrogate = cpu
    gc_calls = 0
