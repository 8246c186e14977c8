"""``--device auto``: CUDA, else Apple's MPS, else the CPU (availability monkeypatched)."""

from __future__ import annotations

import pytest
import torch

from icg.devices import resolve_device
from icg.errors import ConfigError


def _gpus(monkeypatch, *, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _gpus(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_asking_for_mps_without_it_is_a_clear_error(monkeypatch):
    _gpus(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ConfigError, match="'mps'.*no MPS"):
        resolve_device("mps")


def test_an_explicit_device_passes_through(monkeypatch):
    _gpus(monkeypatch, cuda=False, mps=True)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("mps").type == "mps"
