"""Choosing the models folder and the per-model layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from icg.errors import ConfigError
from icg.models import paths
from icg.models.registry import load_registry


def test_override_beats_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "env"))
    assert paths.models_dir(tmp_path / "flag") == tmp_path / "flag"


def test_env_beats_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "env"))
    assert paths.models_dir() == tmp_path / "env"
    assert paths.models_dir("") == tmp_path / "env"  # an empty setting means "not set"


def test_user_cache_dir_posix(monkeypatch, tmp_path):
    monkeypatch.delenv("ICG_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.models_dir() == tmp_path / "xdg" / "icg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.models_dir() == Path.home() / ".cache" / "icg"


def test_user_cache_dir_windows(monkeypatch, tmp_path):
    monkeypatch.delenv("ICG_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert paths.models_dir() == tmp_path / "local" / "icg"


def test_nothing_is_created(monkeypatch, tmp_path):
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "home"))
    root = paths.models_dir()
    entry = load_registry()["gpt2-tokenizer"]
    assert paths.model_dir(entry, root) == root / "gpt2-tokenizer"
    assert paths.model_dir("sbg-flickr8k", root) == root / "sbg-flickr8k"
    assert paths.cache_dir(root) == root / "cache"
    assert not (tmp_path / "home").exists()
    made = paths.ensure_dir(paths.cache_dir(root))
    assert made.is_dir()


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b", "cache", "c:"])
def test_model_dir_rejects_unsafe_ids(tmp_path, bad):
    with pytest.raises(ConfigError):
        paths.model_dir(bad, tmp_path)


def test_ensure_dir_error_is_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="can't create"):
        paths.ensure_dir(blocker / "sub")
