"""The model manager: the one owner of loaded models.

Models load lazily on first use; one ``ClipEncoder`` is shared by every captioner that asks for the same
CLIP; ``offload()`` parks them in CPU memory and ``unload()`` frees them. A re-entrant lock serialises
loading and running, so concurrent requests (the WebUI API, a batch job and the tab) never load a model
twice or run on a model that is half-way to another device: a job that runs inside ``session()`` holds
the lock, and ``offload()`` / ``unload()`` from another thread wait until it ends.

How models are built is injectable (``Factories``), which is how tests and the WebUI adapter supply their
own; so are the device and dtype policy (``RuntimeConfig.device`` / ``dtype`` take a string, a
``torch.device`` / ``torch.dtype``, or a zero-argument callable evaluated on first use, e.g. the WebUI's
``devices.device_interrogate`` and fp32 under ``--no-half``). Default: CUDA when available, fp16 there.
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
from icg.errors import ConfigError, ModelNotFound

log = logging.getLogger(__name__)


class Captioner(Protocol):
    kind: str
    model_id: str
    normalize: bool
    clip_spec: ClipSpec | None

    def caption_features(self, features, decoding=None, options=None) -> list: ...

    def to(self, device) -> Any: ...


@dataclass(frozen=True)
class RuntimeConfig:
    """Where models live and where they run. ``clip``/``tokenizer`` override what a model names.

    ``device``: ``"auto"`` (CUDA when available, else CPU), any torch device string, a ``torch.device``,
    or a zero-argument callable returning one of those (evaluated once, on first use). ``dtype``:
    ``"auto"`` (fp16 on CUDA, fp32 elsewhere), a name (``fp32``, ``fp16``, ``bf16``, ...), a
    ``torch.dtype``, or a callable returning one of those."""

    device: Any = "auto"
    dtype: Any = "auto"
    models_dir: str | None = None
    allow_download: bool = False
    clip: str | None = None  # a local CLIP folder (open_clip config + weights) or a registry id
    tokenizer: str | None = None  # a tokenizer folder or a registry id
    vocabulary: str | None = None  # SBG: a vocabulary.json, a folder holding one, or a registry id


@dataclass
class Factories:
    """How models are built; each receives the manager so it can resolve paths and share the CLIP."""

    clip: Callable[[ClipSpec, ModelManager], Any] = field(default=None)  # type: ignore[assignment]
    captioner: Callable[[str, ModelManager], Captioner] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from icg.models import loading

        self.clip = self.clip or loading.load_clip
        self.captioner = self.captioner or loading.load_captioner


def _called(value: Any) -> Any:
    """A policy value, calling it first when it is a zero-argument callable (not a device/dtype)."""
    if callable(value) and not hasattr(value, "type") and not isinstance(value, str):
        import torch

        if not isinstance(value, torch.dtype):
            return value()
    return value


def resolve_runtime_device(value: Any):
    """``RuntimeConfig.device`` -> a device: strings and ``torch.device`` go through
    ``icg.devices.resolve_device``; any other object with a ``.type`` is used as it is."""
    from icg.devices import resolve_device

    value = _called(value)
    if value is None or isinstance(value, str):
        return resolve_device(value or "auto")
    import torch

    if isinstance(value, torch.device):
        return resolve_device(value)
    if hasattr(value, "type"):
        return value
    raise ConfigError(f"unknown device {value!r}: give a name like 'cuda' or a torch.device")


def resolve_runtime_dtype(device: Any, value: Any):
    """``RuntimeConfig.dtype`` for ``device``: ``auto`` is fp16 on CUDA, fp32 elsewhere."""
    import torch

    from icg.devices import resolve_dtype

    value = _called(value)
    if value is None or value == "auto":
        return torch.float16 if getattr(device, "type", None) == "cuda" else torch.float32
    return resolve_dtype("cpu", value)


class ModelManager:
    """Owns the loaded CLIP and captioners; see the module docstring. Thread-safe."""

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
        """Where models run (resolved from ``RuntimeConfig.device`` on first use)."""
        with self.lock:
            if self._device is None:
                self._device = resolve_runtime_device(self.runtime.device)
            return self._device

    @property
    def dtype(self):
        """The dtype of the big models (resolved from ``RuntimeConfig.dtype`` on first use)."""
        with self.lock:
            if self._dtype is None:
                self._dtype = resolve_runtime_dtype(self.device, self.runtime.dtype)
            return self._dtype

    @property
    def models_dir(self) -> Path:
        from icg.models.paths import models_dir

        return models_dir(self.runtime.models_dir)

    # ------------------------------------------------------------------------------------ access
    def clip(self, spec: ClipSpec):
        """The shared CLIP encoder for ``spec``, loaded on first use; a different spec replaces it."""
        with self.lock:
            self._ensure_on_device()
            if self._clip is None or self._clip_key != spec.id:
                if self._clip is not None:
                    log.info("replacing CLIP %s with %s", self._clip_key, spec.id)
                    self._clip = None
                    self._clip_key = None
                self._clip = self.factories.clip(spec, self)
                self._clip_key = spec.id
            return self._clip

    def captioner(self, name: str) -> Captioner:
        """The captioner for a registry id, a path or a user's model, loaded on first use."""
        if not name:
            raise ModelNotFound("no model given")
        with self.lock:
            self._ensure_on_device()
            if name not in self._captioners:
                self._captioners[name] = self.factories.captioner(name, self)
            return self._captioners[name]

    def loaded(self) -> dict[str, Any]:
        """What is in memory now: the CLIP's id, the captioners' names, whether they are offloaded."""
        with self.lock:
            return {
                "clip": self._clip_key,
                "captioners": sorted(self._captioners),
                "offloaded": self._offloaded,
                "device": str(self._device) if self._device is not None else None,
            }

    @contextlib.contextmanager
    def session(self) -> Iterator[ModelManager]:
        """Hold the lock for a whole job: no other thread loads, offloads or unloads until it ends."""
        with self.lock:
            self._ensure_on_device()
            yield self

    # ------------------------------------------------------------------------------------ memory
    def offload(self) -> None:
        """Move every loaded model to the CPU; they stay loaded and the next use moves them back.

        A no-op when the models run on the CPU. Waits for a running ``session()`` to end."""
        import torch

        with self.lock:
            models = self._modules()
            if self._offloaded or not models or self.device.type == "cpu":
                return
            cpu = torch.device("cpu")
            for model in models:
                model.to(cpu)
            self._offloaded = True
            from icg.devices import empty_cache

            empty_cache()
            log.info("offloaded %d model(s) to the CPU", len(models))

    def unload(self, name: str | None = None) -> None:
        """Drop every loaded model (or only the captioner ``name``) and return the memory.

        Waits for a running ``session()`` to end. Callers must not keep references of their own."""
        from icg.devices import empty_cache

        with self.lock:
            if name is not None:
                self._captioners.pop(name, None)
            else:
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
