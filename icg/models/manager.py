"""The model manager: the one owner of loaded models.

Models load lazily on first use; one ``ClipEncoder`` is shared by every captioner that asks for the same
CLIP; ``offload()`` parks them in CPU memory and ``unload()`` frees them. A re-entrant lock serialises
loading and running, so concurrent requests (the WebUI API, a batch job and the tab) never load a model
twice or run on a model that is half-way to another device. How models are built is injectable
(``Factories``), which is how tests and the WebUI adapter supply their own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from icg.config import ClipSpec
from icg.errors import ModelNotFound

log = logging.getLogger(__name__)


class Captioner(Protocol):
    kind: str
    model_id: str
    normalize: bool

    def caption_features(self, features, decoding=None) -> list: ...


@dataclass(frozen=True)
class RuntimeConfig:
    """Where models live and where they run. ``clip``/``tokenizer`` override what a model names."""

    device: str = "auto"
    dtype: str = "auto"
    models_dir: str | None = None
    allow_download: bool = False
    clip: str | None = None  # a local CLIP folder (open_clip config + weights) or a registry id
    tokenizer: str | None = None  # a tokenizer folder or a registry id


@dataclass
class Factories:
    """How models are built; each receives the manager so it can resolve paths and share the CLIP."""

    clip: Callable[[ClipSpec, ModelManager], Any] = field(default=None)  # type: ignore[assignment]
    captioner: Callable[[str, ModelManager], Captioner] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from icg.models import loading

        self.clip = self.clip or loading.load_clip
        self.captioner = self.captioner or loading.load_captioner


class ModelManager:
    def __init__(self, runtime: RuntimeConfig | None = None, factories: Factories | None = None) -> None:
        self.runtime = runtime or RuntimeConfig()
        self.factories = factories or Factories()
        self.lock = threading.RLock()
        self._clip = None
        self._clip_key: str | None = None
        self._captioners: dict[str, Captioner] = {}
        self._offloaded = False
        self._device = None
        self._dtype = None

    # ------------------------------------------------------------------------------------ policy
    @property
    def device(self):
        if self._device is None:
            from icg.devices import resolve_device

            self._device = resolve_device(self.runtime.device)
        return self._device

    @property
    def dtype(self):
        if self._dtype is None:
            from icg.devices import resolve_dtype

            self._dtype = resolve_dtype(self.device, self.runtime.dtype)
        return self._dtype

    @property
    def models_dir(self) -> Path:
        from icg.models.paths import models_dir

        return models_dir(self.runtime.models_dir)

    # ------------------------------------------------------------------------------------ access
    def clip(self, spec: ClipSpec):
        """The shared CLIP encoder for ``spec``; a different spec replaces the loaded one."""
        with self.lock:
            self._ensure_on_device()
            if self._clip is None or self._clip_key != spec.id:
                if self._clip is not None:
                    log.info("replacing CLIP %s with %s", self._clip_key, spec.id)
                    self._clip = None
                self._clip = self.factories.clip(spec, self)
                self._clip_key = spec.id
            return self._clip

    def captioner(self, name: str) -> Captioner:
        """The captioner for a registry id or a path, loaded on first use."""
        if not name:
            raise ModelNotFound("no model given")
        with self.lock:
            self._ensure_on_device()
            if name not in self._captioners:
                self._captioners[name] = self.factories.captioner(name, self)
            return self._captioners[name]

    def loaded(self) -> dict[str, Any]:
        with self.lock:
            return {
                "clip": self._clip_key,
                "captioners": sorted(self._captioners),
                "offloaded": self._offloaded,
            }

    @contextlib.contextmanager
    def session(self) -> Iterator[ModelManager]:
        """Hold the lock for a whole job so no other thread offloads or unloads mid-way."""
        with self.lock:
            self._ensure_on_device()
            yield self

    # ------------------------------------------------------------------------------------ memory
    def offload(self) -> None:
        """Move every loaded model to the CPU (keeps them loaded; the next use moves them back)."""
        import torch

        with self.lock:
            if self.device.type == "cpu":
                return
            for model in self._modules():
                model.to(torch.device("cpu"))
            self._offloaded = True
            from icg.devices import empty_cache

            empty_cache()

    def unload(self) -> None:
        """Drop every loaded model and return the memory."""
        from icg.devices import empty_cache

        with self.lock:
            self._clip = None
            self._clip_key = None
            self._captioners.clear()
            self._offloaded = False
            empty_cache()

    def _ensure_on_device(self) -> None:
        if self._offloaded:
            for model in self._modules():
                model.to(self.device)
            self._offloaded = False

    def _modules(self) -> list[Any]:
        mods = [self._clip] if self._clip is not None else []
        return mods + list(self._captioners.values())
