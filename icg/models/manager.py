"""The model manager: the one owner of loaded models, and of installing them.

Models load lazily on first use; one ``ClipEncoder`` is shared by every captioner that asks for the same
CLIP; ``offload()`` parks them in CPU memory and ``unload()`` frees them. A re-entrant lock serialises
loading and running, so concurrent requests (the WebUI API, a batch job and the tab) never load a model
twice or run on a model that is half-way to another device: a job that runs inside ``session()`` holds
the lock, and ``offload()`` / ``unload()`` from another thread wait until it ends.

Installing is separate from loading and never holds the lock: ``install(name)`` fetches and converts
what a model needs (its files and the registry models it requires) with no manager lock held, one
install lock per registry model so that two callers never download the same files twice (the second
waits, then finds them installed). ``captioner()`` installs first, outside the lock, when
``RuntimeConfig.allow_download`` is set (without it, only what needs no network: converting originals
already in the folder, copying from the Hugging Face cache); only loading onto the device runs under
``lock``. A host that holds a lock of its own around captioning (the WebUI's queue lock) calls
``install_for_use(name)`` before taking it, and ``install(name, progress, explicit=True)`` for a
Download button.

How models are built and fetched is injectable (``Factories``), which is how tests and the WebUI adapter
supply their own; so are the device and dtype policy (``RuntimeConfig.device`` / ``dtype`` take a string,
a ``torch.device`` / ``torch.dtype``, or a zero-argument callable evaluated on first use, e.g. the
WebUI's ``devices.device_interrogate`` and fp32 under ``--no-half``). Default: CUDA when available, fp16
there. The int8 precisions (``icg.options.RUNTIME["dtype"]``: ``int8``, ``int8-clip``) load models in
fp32 and quantise them right after loading (``icg.quant``), on the CPU only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from icg.config import ClipSpec
from icg.errors import ConfigError, DownloadError, ModelNotFound
from icg.quant import QUANTIZED

if TYPE_CHECKING:
    from icg.models.registry import ModelEntry

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
    ``"auto"`` (fp16 on CUDA, fp32 elsewhere), a name (``fp32``, ``fp16``, ``bf16``, ...), an int8
    precision (``int8``, ``int8-clip``; CPU only), a ``torch.dtype``, or a callable returning one of
    those."""

    device: Any = "auto"
    dtype: Any = "auto"
    models_dir: str | None = None
    allow_download: bool = False
    clip: str | None = None  # a local CLIP folder (open_clip config + weights) or a registry id
    tokenizer: str | None = None  # a tokenizer folder or a registry id
    vocabulary: str | None = None  # SBG: a vocabulary.json, a folder holding one, or a registry id
    clip_dirs: tuple[str, ...] = ()  # other tools' CLIP folders searched before a CLIP download (WebUI)


@dataclass
class Factories:
    """How models are built and fetched. ``clip`` and ``captioner`` receive the manager so they can
    resolve paths and share the CLIP; ``fetch(entry, models_dir, offline)`` puts one registry model's
    files into the models folder (download and convert; default ``download.download_model``, which
    first looks for a copy already on this machine, in ``RuntimeConfig.clip_dirs`` too)."""

    clip: Callable[[ClipSpec, ModelManager], Any] = field(default=None)  # type: ignore[assignment]
    captioner: Callable[[str, ModelManager], Captioner] = field(default=None)  # type: ignore[assignment]
    fetch: Callable[[ModelEntry, Path, bool | None], Any] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from icg.models import loading

        self.clip = self.clip or loading.load_clip
        self.captioner = self.captioner or loading.load_captioner
        # fetch None: ModelManager downloads with its runtime's clip_dirs (see _fetch)


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


def resolve_precision(device: Any, value: Any) -> tuple[Any, tuple[str, ...]]:
    """``RuntimeConfig.dtype`` for ``device`` as ``(dtype the models load in, parts quantised after
    loading)``: ``auto`` is fp16 on CUDA and fp32 elsewhere (never bf16 or int8); ``int8`` /
    ``int8-clip`` load in fp32 and quantise CLIP's image tower (and the language model) on the CPU only
    (``icg.quant``); bf16 on a CPU without native support is logged as emulated."""
    import torch

    from icg import quant
    from icg.devices import resolve_dtype

    value = _called(value)
    parts = quant.quantized_parts(value)
    if parts:
        quant.check_device(value, device)
        return torch.float32, parts
    if value is None or value == "auto":
        return (torch.float16 if getattr(device, "type", None) == "cuda" else torch.float32), ()
    dtype = resolve_dtype("cpu", value)
    quant.warn_if_emulated_bf16(device, dtype)
    return dtype, ()


def resolve_runtime_dtype(device: Any, value: Any):
    """The dtype the models load in for ``RuntimeConfig.dtype`` (``resolve_precision``)."""
    return resolve_precision(device, value)[0]


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
        self._precision: tuple[Any, tuple[str, ...]] | None = None
        self._install_locks: dict[str, threading.Lock] = {}
        self._install_locks_guard = threading.Lock()

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
        """The dtype the big models load in (resolved from ``RuntimeConfig.dtype`` on first use)."""
        return self._resolved_precision()[0]

    @property
    def quantized(self) -> tuple[str, ...]:
        """What is quantised to int8 after loading: ``("clip", "lm")``, ``("clip",)`` or ``()``."""
        return self._resolved_precision()[1]

    def _resolved_precision(self) -> tuple[Any, tuple[str, ...]]:
        with self.lock:
            if self._precision is None:
                self._precision = resolve_precision(self.device, self.runtime.dtype)
            return self._precision

    def precision_name(self) -> str:
        """What the models run in, for reports: ``int8``, ``int8-clip``, ``float32``, ``float16``, ..."""
        dtype, parts = self._resolved_precision()
        named = [name for name, quantized in QUANTIZED.items() if parts and quantized == parts]
        return named[0] if named else str(dtype).replace("torch.", "")

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
                clip = self.factories.clip(spec, self)
                if "clip" in self.quantized:
                    from icg.quant import quantize_clip

                    quantize_clip(clip)
                self._clip = clip
                self._clip_key = spec.id
            return self._clip

    def captioner(self, name: str) -> Captioner:
        """The captioner for a registry id, a path or a user's model, loaded on first use (installed
        first, outside the lock; see the module docstring)."""
        if not name:
            raise ModelNotFound("no model given")
        if name not in self._captioners:
            self.install_for_use(name)
        with self.lock:
            self._ensure_on_device()
            if name not in self._captioners:
                captioner = self.factories.captioner(name, self)
                if "lm" in self.quantized:
                    from icg.quant import quantize_captioner

                    quantize_captioner(captioner)
                self._captioners[name] = captioner
            return self._captioners[name]

    # ------------------------------------------------------------------------------------ install
    def install(
        self,
        name: str,
        progress: Callable[[float, str], Any] | None = None,
        *,
        explicit: bool = False,
        offline: bool | None = None,
    ) -> list[str]:
        """Fetch and convert everything ``name`` needs into the models folder: the model itself when it
        is a registry id, and the registry models it requires (CLIP, tokenizer, vocabulary; not those the
        runtime overrides). Runs with no manager lock held, so models already loaded keep captioning;
        one lock per registry model makes a second caller wait for a running install of the same model
        and then find it installed. Returns the ids fetched or converted by this call.

        ``progress(fraction, text)`` is called before each model and at the end. ``explicit``: a user
        asked for this download now (a Download button): hosts remembered as unreachable are probed
        again. ``offline``: True refuses the network, None lets ``ICG_OFFLINE``/``HF_HUB_OFFLINE``
        decide. Raises ``DownloadError`` (offline, unreachable, manual-only, checksum, conversion)."""
        from icg.models.download import forget_unreachable
        from icg.models.inventory import model_status, supplied_kinds
        from icg.models.registry import load_registry

        registry = load_registry()
        root = self.models_dir
        status = model_status(name, root, registry=registry, supplied=supplied_kinds(self.runtime))
        needed = [registry[i] for i in status.requires] + ([registry[name]] if status.registered else [])
        if explicit:
            forget_unreachable()
        return self._install_entries(needed, root, offline, progress)

    def _install_entries(
        self,
        entries: list[ModelEntry],
        root: Path,
        offline: bool | None,
        progress: Callable[[float, str], Any] | None,
    ) -> list[str]:
        from icg.models.download import present

        def report(index: int, text: str) -> None:
            if progress is not None:
                progress(index / max(len(entries), 1), text)

        done = []
        for index, entry in enumerate(entries):
            lock = self._install_lock(entry.id)
            if not lock.acquire(blocking=False):
                report(index, f"waiting for {entry.id}: another request is installing it")
                lock.acquire()
            try:
                if present(entry, root):
                    continue
                report(index, f"installing {entry.id}")
                log.info("installing %s into %s", entry.id, root)
                self._fetch(entry, root, offline)
                done.append(entry.id)
            finally:
                lock.release()
        report(len(entries), "installed")
        return done

    def _fetch(self, entry: ModelEntry, root: Path, offline: bool | None) -> None:
        if self.factories.fetch is not None:
            self.factories.fetch(entry, root, offline)
            return
        from icg.models.download import download_model

        download_model(entry, root, offline=offline, progress=False, clip_dirs=self.runtime.clip_dirs)

    def _install_lock(self, model_id: str) -> threading.Lock:
        with self._install_locks_guard:
            return self._install_locks.setdefault(model_id, threading.Lock())

    def install_for_use(self, name: str) -> None:
        """What ``captioner()`` does before a first load, for hosts to call before taking a lock of their
        own (the WebUI's queue lock): install what the captioner ``name`` needs, with no lock held. With
        ``RuntimeConfig.allow_download`` any failure is raised (``DownloadError``); without, only what
        needs no network is done and the loader later explains what is missing. Cheap when installed."""
        from icg.captioners import kinds
        from icg.models.registry import load_registry

        entry = load_registry().get(name)
        if entry is not None and entry.kind not in kinds.names(captioners_only=True):
            return  # the loader says what it is instead; nothing to fetch for a wrong name
        if self.runtime.allow_download:
            self.install(name)
            return
        try:
            self.install(name, offline=True)
        except DownloadError as err:
            log.debug("%s is not installed and downloads are off: %s", name, err)

    def loaded(self) -> dict[str, Any]:
        """What is in memory now: the CLIP's id, the captioners' names, whether they are offloaded."""
        with self.lock:
            return {
                "clip": self._clip_key,
                "captioners": sorted(self._captioners),
                "offloaded": self._offloaded,
                "device": str(self._device) if self._device is not None else None,
                "dtype": self.precision_name() if self._precision is not None else None,
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
