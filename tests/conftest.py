"""Test-wide guards: CPU only, offline, and no socket leaves the machine."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# ICG reuses a CLIP found in the Hugging Face cache (issue 16): tests must not find a developer's real one.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="icg-test-hf-hub-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any test that tries to reach beyond the loopback interface."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in _LOCAL_HOSTS and not host.startswith("127."):
            raise OSError(f"tests may not use the network (tried to connect to {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(scope="session")
def fixture_files(tmp_path_factory) -> dict[str, str]:
    """The tiny models written once per session in the real on-disk formats (see tests/fixtures.py)."""
    from tests.fixtures import write_all

    return write_all(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine (more runnable threads than
    cores) every OpenMP barrier waits for a descheduled thread: one thread is many times faster there.
    Modules that train or sample with tiny models use it through ``pytest.mark.usefixtures``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
