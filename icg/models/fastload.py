"""Building models from their weight files without paying for what the weights replace.

Today's path (kept behind ``ICG_LOAD_LEGACY=1`` so ``icg bench --suite coldstart`` can show both) builds
each model with random initialisation, reads its file into memory and copies every tensor into the
parameters. The fast path builds the modules with no initialisation (``no_init``: allocation only),
reads the file memory-mapped (safetensors, or a torch zip file with ``mmap=True``) and makes the mapped
tensors the parameters (``load_state_dict(assign=True)``, torch >= 2.1), so no tensor is written twice
and pages the model never touches (e.g. CLIP's text tower when only images are encoded) are never read.
Non-persistent buffers (attention masks, position ids) are computed by the constructors as usual.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

LEGACY_ENV = "ICG_LOAD_LEGACY"


def legacy() -> bool:
    """True when ``$ICG_LOAD_LEGACY`` asks for today's loading path (random init, copies)."""
    return os.environ.get(LEGACY_ENV, "").strip() not in ("", "0")


#: Random fills (``torch.nn.init``'s initialisers and tensors' in-place sampling; the mode sees either,
#: depending on the torch version): never needed while building a model whose weights are then loaded.
_RANDOM_FILLS = frozenset(
    {
        "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
        "kaiming_normal_", "orthogonal_", "sparse_", "random_", "bernoulli_", "exponential_",
        "geometric_", "cauchy_", "log_normal_",
    }
)  # fmt: skip
#: Constant fills, skipped only on parameters (buffers such as causal masks are built with them).
_PARAMETER_FILLS = frozenset({"constant_", "ones_", "zeros_", "eye_", "dirac_", "fill_", "zero_"})
_skip_init_mode: list[Any] = []


def _skip_init():
    """A torch function mode (thread-local: other threads keep initialising normally) in which
    initialisation fills do nothing."""
    if not _skip_init_mode:
        import torch
        from torch.overrides import TorchFunctionMode

        class SkipInit(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes ``tensor=``
                if isinstance(target, torch.Tensor) and (
                    name in _RANDOM_FILLS
                    or (name in _PARAMETER_FILLS and isinstance(target, torch.nn.Parameter))
                ):
                    return target
                return func(*args, **kwargs)

        _skip_init_mode.append(SkipInit)
    return _skip_init_mode[0]()


@contextlib.contextmanager
def no_init(active: bool = True) -> Iterator[None]:
    """Build modules without initialising their parameters (their memory is allocated, not written):
    for models whose every parameter is loaded right after (``load_into``). Only this thread is
    affected. A no-op when ``active`` is false or under ``ICG_LOAD_LEGACY``."""
    if not active or legacy():
        yield
        return
    with _skip_init():
        yield


def load_into(module, state: Mapping[str, Any], *, strict: bool = True):
    """``module.load_state_dict(state, strict)``, by assignment: the state's tensors (memory-mapped
    when read with ``read_weights``) become the parameters, converted first only where the dtype
    differs, so the result equals a copying load bit for bit. Tied parameters must be re-tied by the
    caller. Under ``ICG_LOAD_LEGACY`` it copies, as before."""
    if legacy():
        return module.load_state_dict(state, strict=strict)
    own = module.state_dict(keep_vars=True)
    state = {
        k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype and v.is_floating_point() else v
        for k, v in state.items()
    }
    return module.load_state_dict(state, strict=strict, assign=True)
