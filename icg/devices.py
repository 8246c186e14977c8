"""Device and dtype policy: fp16 on CUDA, fp32 elsewhere, unless the caller says otherwise."""

from __future__ import annotations

import gc
from typing import Any

from icg.errors import ConfigError

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_device(device: Any = "auto"):
    """``"auto"`` picks CUDA when available, else Apple's MPS, else the CPU; anything torch accepts
    passes through."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available(torch) else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but this torch sees no CUDA GPU")
    if resolved.type == "mps" and not _mps_available(torch):
        raise ConfigError(f"device {device!r} was asked for, but this torch has no MPS (Apple GPU) support")
    return resolved


def _mps_available(torch) -> bool:
    """Whether this torch can run on Apple's GPU (``torch.backends.mps`` exists from torch 1.12)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_dtype(device, dtype: Any = "auto"):
    """``"auto"``: float16 on CUDA, float32 on every other device (CPU half precision is slow)."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return getattr(torch, name)


def empty_cache() -> None:
    """Return freed memory to the system (and to the GPU driver when CUDA is in use)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
