"""Precision policy beyond a plain dtype: int8 on the CPU, and whether bf16 is native on this CPU.

``int8`` and ``int8-clip`` (``icg.options.RUNTIME["dtype"]``) load the models in fp32 and then quantise
them here, a post-load step the model manager applies (``ModelManager.clip`` / ``captioner``):

- CLIP: the image tower only. Its ``nn.MultiheadAttention`` blocks are first rewritten as
  ``LinearAttention`` (the same weights as two ``nn.Linear`` plus ``scaled_dot_product_attention``), so
  that PyTorch's dynamic int8 quantisation (``torch.ao.quantization.quantize_dynamic``, which only
  handles ``nn.Linear``) covers the attention projections as well as the MLPs. The text tower stays in
  fp32, so text features (SBG's label bank, cached on disk per CLIP) are the same in every precision.
- The language model (``int8`` only): GPT-2 in transformers computes its projections with ``Conv1D``
  (``x @ W + b`` with ``W`` stored ``(in, out)``); each is converted to an equivalent ``nn.Linear`` (the
  same numbers in fp32) and then every ``nn.Linear``, the LM head included, is quantised.

Dynamic quantisation stores weights in int8 and quantises activations per batch on the fly; it runs on
the CPU only, so an int8 precision on another device is refused (``check_device``). It exists on both
torch 2.1 and current releases (which mark it deprecated in favour of torchao: the warning is hidden).

This module imports torch only inside its functions.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icg.errors import ConfigError

log = logging.getLogger(__name__)

#: The int8 precisions and which parts each quantises.
QUANTIZED: dict[str, tuple[str, ...]] = {"int8": ("clip", "lm"), "int8-clip": ("clip",)}
#: CPU flags that mean native bf16 matrix arithmetic (Linux ``/proc/cpuinfo`` names).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def quantized_parts(value: Any) -> tuple[str, ...]:
    """The parts an int8 precision quantises (``()`` for every other value)."""
    return QUANTIZED.get(value, ()) if isinstance(value, str) else ()


def check_device(precision: str, device: Any) -> None:
    """Refuse an int8 precision on anything but the CPU, in one line."""
    kind = getattr(device, "type", str(device))
    if quantized_parts(precision) and kind != "cpu":
        raise ConfigError(
            f"dtype {precision!r} runs on the CPU only (PyTorch's dynamic int8 kernels), but the models "
            f"run on {device}: choose the CPU device, or fp16/fp32 on this device"
        )


# ------------------------------------------------------------------------------------------ bf16
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates it by
    converting to fp32, which is slower than fp32 itself."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def cpu_capability() -> str:
    """What PyTorch's CPU kernels were dispatched for (``AVX2``, ``AVX512``, ...)."""
    import torch

    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(get()) if get is not None else "unknown"


def warn_if_emulated_bf16(device: Any, dtype: Any) -> bool:
    """Log that bf16 on this CPU is emulated (and slow) when it is; returns whether it is."""
    import torch

    if getattr(device, "type", None) != "cpu" or dtype != torch.bfloat16 or native_bf16():
        return False
    log.warning(
        "bf16 on this CPU (%s, no AVX512-BF16/AMX) is emulated and slower than fp32; "
        "use fp32 or int8 for speed",
        cpu_capability(),
    )
    return True


# ------------------------------------------------------------------------------------------ modules
def _linear_attention_class():
    """``LinearAttention``, built on first use so that importing this module needs no torch."""
    import torch
    from torch import nn
    from torch.nn import functional

    class LinearAttention(nn.Module):
        """``nn.MultiheadAttention`` (self-attention as CLIP calls it) with its projections as
        ``nn.Linear`` modules, so that dynamic quantisation reaches them. Same weights, same call
        signature (``attn(q, k, v, need_weights=False, attn_mask=None)`` -> ``(out, None)``)."""

        def __init__(self, mha: nn.MultiheadAttention) -> None:
            super().__init__()
            if not getattr(mha, "_qkv_same_embed_dim", True) or mha.bias_k is not None:
                raise ValueError("only plain self-attention converts")
            width = mha.embed_dim
            self.num_heads = mha.num_heads
            self.batch_first = bool(mha.batch_first)
            self.in_proj = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
            self.out_proj = nn.Linear(width, width, bias=mha.out_proj.bias is not None)
            with torch.no_grad():
                self.in_proj.weight.copy_(mha.in_proj_weight)
                if mha.in_proj_bias is not None:
                    self.in_proj.bias.copy_(mha.in_proj_bias)
                self.out_proj.load_state_dict(mha.out_proj.state_dict())
            self.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

        def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_: Any):
            x = query if self.batch_first else query.transpose(0, 1)  # (B, L, D)
            batch, length, width = x.shape
            heads = self.num_heads
            qkv = self.in_proj(x).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            if attn_mask is not None and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(qkv.dtype)
            out = functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
            return (out if self.batch_first else out.transpose(0, 1)), None

    return LinearAttention


def linear_attention(module):
    """Replace every ``nn.MultiheadAttention`` inside ``module`` by an equivalent ``LinearAttention``
    (in place); returns how many were replaced."""
    from torch import nn

    cls = _linear_attention_class()
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, cls(child))
                count += 1
    return count


def conv1d_to_linear(module) -> int:
    """Replace every transformers ``Conv1D`` inside ``module`` by the equivalent ``nn.Linear`` (weight
    transposed; in place); returns how many were replaced."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                count += 1
    return count


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Current torch marks eager-mode quantisation deprecated (torchao replaces it); the user chose
    int8, so its migration notes are noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=r"(?s).*quantiz")
        yield


def quantize_linears(module):
    """Every ``nn.Linear`` in ``module`` as a dynamically quantised int8 linear (in place)."""
    import torch
    from torch import nn

    with _quiet_deprecation():
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_clip(encoder) -> None:
    """Quantise a ``ClipEncoder``'s image tower to int8 (in place; see the module docstring)."""
    visual = encoder.model.visual
    converted = linear_attention(visual)
    encoder.model.visual = quantize_linears(visual)
    log.info("CLIP %s: image tower quantised to int8 (%d attention blocks)", encoder.model_id, converted)


def language_models(captioner) -> list:
    """The transformers models a captioner holds (GPT-2 of CLIP-prefix, SBG), outermost only."""
    from torch import nn
    from transformers import PreTrainedModel

    found: list = []
    inside: set[int] = set()
    for value in vars(captioner).values():
        if not isinstance(value, nn.Module):
            continue
        for module in value.modules():
            if isinstance(module, PreTrainedModel) and id(module) not in inside:
                found.append(module)
                inside.update(id(m) for m in module.modules())
    return found


def quantize_captioner(captioner) -> int:
    """Quantise the language model(s) of a captioner to int8 (in place); returns how many."""
    models = language_models(captioner)
    for lm in models:
        conv1d_to_linear(lm)
        quantize_linears(lm)
    if models:
        log.info("%s: language model quantised to int8", getattr(captioner, "model_id", "captioner"))
    else:
        log.warning("%s: no language model found to quantise", getattr(captioner, "model_id", "captioner"))
    return len(models)


def describe() -> str:
    """One line for reports: the CPU's kernels and whether bf16 is native."""
    bf16 = "native" if native_bf16() else "emulated"
    return f"cpu={cpu_capability()} bf16={bf16} int8 engine={_engine()}"


def _engine() -> str:
    import torch

    return str(torch.backends.quantized.engine)
