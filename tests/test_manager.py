"""The model manager: laziness, one shared CLIP, offload/unload bookkeeping, thread safety, the device and
dtype policy."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch

from icg.config import ClipSpec
from icg.errors import ConfigError
from icg.models import importer, loading
from icg.models.manager import Factories, ModelManager, RuntimeConfig
from icg.pipeline import caption_images
from tests.model_fixtures import fixture_models, write_image

SPEC = ClipSpec(arch="fake", pretrained="x")


class FakeDevice:
    """Stands in for a CUDA device on a machine without one: only ``.type`` is read."""

    def __init__(self, type: str = "cuda") -> None:
        self.type = type

    def __repr__(self) -> str:
        return f"FakeDevice({self.type})"


class FakeModel:
    """Records ``.to()`` calls; refuses to move while a job runs on it."""

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log
        self.running = False
        self.kind, self.model_id, self.normalize, self.clip_spec = "fake", name, True, SPEC

    def to(self, device):
        assert not self.running, f"{self.name} moved while running"
        self.log.append((self.name, "cpu" if getattr(device, "type", None) == "cpu" else "device"))
        return self

    def caption_features(self, features, decoding=None, options=None):
        return []


class Counting:
    """Factories that count their calls and build FakeModels."""

    def __init__(self, delay: float = 0.0) -> None:
        self.log: list = []
        self.clip_calls = 0
        self.captioner_calls: list[str] = []
        self.delay = delay
        self.lock = threading.Lock()

    def clip(self, spec, manager):
        self.clip_calls += 1
        return FakeModel(f"clip:{spec.id}", self.log)

    def captioner(self, name, manager):
        manager.device  # noqa: B018 - as the real loaders do: the device is resolved on first load
        with self.lock:
            self.captioner_calls.append(name)
        time.sleep(self.delay)  # widen the window for a second loader (there must be none)
        return FakeModel(name, self.log)

    def factories(self) -> Factories:
        return Factories(clip=self.clip, captioner=self.captioner)


def _fake_manager(counting: Counting, device=None) -> ModelManager:
    device = device if device is not None else FakeDevice("cuda")
    return ModelManager(RuntimeConfig(device=device, dtype="auto"), counting.factories())


# ------------------------------------------------------------------------------------------ laziness
def test_nothing_loads_or_resolves_at_construction():
    counting = Counting()
    asked = []
    manager = ModelManager(
        RuntimeConfig(device=lambda: asked.append(1) or FakeDevice()), counting.factories()
    )
    assert counting.captioner_calls == [] and counting.clip_calls == 0 and asked == []
    assert manager.loaded()["captioners"] == [] and manager.loaded()["device"] is None
    first = manager.captioner("a")
    assert counting.captioner_calls == ["a"] and asked == [1]
    assert manager.captioner("a") is first and counting.captioner_calls == ["a"]
    manager.clip(SPEC)
    manager.clip(SPEC)
    assert counting.clip_calls == 1 and asked == [1]  # the device policy is asked once
    assert manager.loaded() == {
        "clip": SPEC.id,
        "captioners": ["a"],
        "offloaded": False,
        "device": "FakeDevice(cuda)",
    }


def test_default_factories_are_the_loading_functions():
    manager = ModelManager()
    assert manager.factories.clip is loading.load_clip
    assert manager.factories.captioner is loading.load_captioner


def test_a_different_clip_replaces_the_loaded_one():
    counting = Counting()
    manager = _fake_manager(counting)
    first = manager.clip(SPEC)
    other = ClipSpec(arch="other", pretrained="y")
    second = manager.clip(other)
    assert second is not first and counting.clip_calls == 2 and manager.loaded()["clip"] == other.id


def test_two_captioners_share_one_clip(tmp_path):
    fx = fixture_models()
    root = tmp_path / "models"
    importer.import_model([fx["clip_prefix_pt"]], "one", root, clip=fx["clip_dir"])
    importer.import_model([fx["clip_prefix_pt"]], "two", root, clip=fx["clip_dir"], normalize=False)
    built = []

    def clip_factory(spec, manager):
        built.append(spec)
        return loading.load_clip(spec, manager)

    manager = ModelManager(
        RuntimeConfig(device="cpu", models_dir=str(root), tokenizer=fx["tokenizer_dir"]),
        Factories(clip=clip_factory),
    )
    one, two = manager.captioner("one"), manager.captioner("two")
    assert one is not two and one.clip_spec == two.clip_spec
    image = write_image(tmp_path / "x.png")
    caption_images(manager, "one", [image])
    caption_images(manager, "two", [image])
    assert len(built) == 1
    assert manager.clip(one.clip_spec) is manager.clip(two.clip_spec)


# ------------------------------------------------------------------------------------------ offload
def test_offload_on_cpu_is_a_no_op():
    counting = Counting()
    manager = _fake_manager(counting, device="cpu")
    manager.captioner("a")
    manager.clip(SPEC)
    manager.offload()
    assert counting.log == [] and manager.loaded()["offloaded"] is False


def test_offload_on_a_real_cpu_model_keeps_it_working(tmp_path):
    fx = fixture_models()
    root = tmp_path / "models"
    importer.import_model([fx["clip_prefix_pt"]], "one", root, clip=fx["clip_dir"])
    manager = ModelManager(
        RuntimeConfig(device=torch.device("cpu"), models_dir=str(root), tokenizer=fx["tokenizer_dir"])
    )
    image = write_image(tmp_path / "x.png")
    before = caption_images(manager, "one", [image])[0].caption
    manager.offload()
    params = list(manager.captioner("one").model.parameters())
    assert all(p.device.type == "cpu" for p in params)
    assert caption_images(manager, "one", [image])[0].caption == before


def test_offload_moves_every_model_to_the_cpu_and_back_on_next_use():
    counting = Counting()
    manager = _fake_manager(counting)
    manager.captioner("a")
    manager.captioner("b")
    manager.clip(SPEC)
    manager.offload()
    assert sorted(counting.log) == [("a", "cpu"), ("b", "cpu"), (f"clip:{SPEC.id}", "cpu")]
    assert manager.loaded()["offloaded"] is True
    manager.offload()  # already there: nothing moves twice
    assert len(counting.log) == 3
    counting.log.clear()
    manager.captioner("a")  # any use brings all of them back first
    assert sorted(counting.log) == [("a", "device"), ("b", "device"), (f"clip:{SPEC.id}", "device")]
    assert manager.loaded()["offloaded"] is False
    counting.log.clear()
    with manager.session():
        pass
    assert counting.log == []  # not offloaded: nothing to move


def test_offload_with_nothing_loaded_changes_nothing():
    manager = _fake_manager(Counting())
    manager.offload()
    assert manager.loaded()["offloaded"] is False


# ------------------------------------------------------------------------------------------ unload
def test_unload_drops_every_reference():
    counting = Counting()
    manager = _fake_manager(counting)
    captioner_ref = weakref.ref(manager.captioner("a"))
    other_ref = weakref.ref(manager.captioner("b"))
    clip_ref = weakref.ref(manager.clip(SPEC))
    manager.unload("a")
    gc.collect()
    assert captioner_ref() is None and other_ref() is not None
    assert manager.loaded()["captioners"] == ["b"]
    manager.offload()
    manager.unload()
    gc.collect()
    assert other_ref() is None and clip_ref() is None
    assert manager.loaded() == {
        "clip": None,
        "captioners": [],
        "offloaded": False,
        "device": "FakeDevice(cuda)",
    }
    manager.captioner("a")  # loads again after an unload
    assert counting.captioner_calls == ["a", "b", "a"]


# ------------------------------------------------------------------------------------------ threads
def test_concurrent_requests_load_once():
    counting = Counting(delay=0.05)
    manager = _fake_manager(counting)
    barrier = threading.Barrier(20)
    got, errors = [], []

    def ask():
        try:
            barrier.wait()
            got.append(manager.captioner("same"))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert counting.captioner_calls == ["same"]
    assert len(got) == 20 and all(g is got[0] for g in got)


def test_offload_and_unload_wait_for_a_running_session():
    counting = Counting()
    manager = _fake_manager(counting)
    model = manager.captioner("a")
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def job():
        with manager.session() as m:
            model.running = True
            entered.set()
            release.wait(10)
            order.append("job-end")
            model.running = False
        assert m is manager

    def offloader():
        manager.offload()
        order.append("offloaded")
        manager.unload()
        order.append("unloaded")

    runner = threading.Thread(target=job)
    runner.start()
    assert entered.wait(10)
    other = threading.Thread(target=offloader)
    other.start()
    time.sleep(0.2)  # give the offloader every chance to (wrongly) run now
    release.set()
    runner.join(10)
    other.join(10)
    assert order == ["job-end", "offloaded", "unloaded"]
    assert counting.log == [("a", "cpu")]  # moved once, after the job, never while running


def test_a_failed_load_is_not_cached():
    attempts = []

    def flaky(name, manager):
        attempts.append(name)
        if len(attempts) == 1:
            raise ConfigError("first load fails")
        return FakeModel(name, [])

    manager = ModelManager(
        RuntimeConfig(device=FakeDevice()), Factories(clip=Counting().clip, captioner=flaky)
    )
    with pytest.raises(ConfigError):
        manager.captioner("a")
    assert manager.captioner("a").name == "a" and attempts == ["a", "a"]


# ------------------------------------------------------------------------------------------ policy
def test_device_and_dtype_policy_accepts_objects_names_and_callables():
    def manager(**kw):
        return ModelManager(
            RuntimeConfig(**kw), Factories(clip=Counting().clip, captioner=Counting().captioner)
        )

    m = manager(device=torch.device("cpu"), dtype=torch.float32)
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    m = manager(device="cpu", dtype="fp16")
    assert m.dtype == torch.float16
    m = manager(device=lambda: torch.device("cpu"), dtype=lambda: torch.bfloat16)
    assert m.device == torch.device("cpu") and m.dtype == torch.bfloat16
    assert manager(device=FakeDevice("cuda")).dtype == torch.float16  # fp16 on CUDA by default
    assert manager(device="cpu").dtype == torch.float32
    assert manager(device=FakeDevice("cuda"), dtype="fp32").dtype == torch.float32  # --no-half
    with pytest.raises(ConfigError, match="unknown device"):
        _ = manager(device=12).device
    with pytest.raises(ConfigError, match="unknown dtype"):
        _ = manager(device="cpu", dtype="fp12").dtype


@pytest.mark.gpu
def test_real_offload_on_cuda(tmp_path):
    fx = fixture_models()
    root = tmp_path / "models"
    importer.import_model([fx["clip_prefix_pt"]], "one", root, clip=fx["clip_dir"])
    manager = ModelManager(RuntimeConfig(device="cuda", models_dir=str(root), tokenizer=fx["tokenizer_dir"]))
    image = write_image(tmp_path / "x.png")
    before = caption_images(manager, "one", [image])[0].caption
    captioner = manager.captioner("one")
    clip = manager.clip(captioner.clip_spec)
    assert manager.dtype == torch.float16 and captioner.model.gpt.dtype == torch.float16
    manager.offload()
    assert all(p.device.type == "cpu" for p in captioner.model.parameters())
    assert all(p.device.type == "cpu" for p in clip.model.parameters())
    assert caption_images(manager, "one", [image])[0].caption == before
    assert all(p.device.type == "cuda" for p in captioner.model.parameters())
    assert all(p.device.type == "cuda" for p in clip.model.parameters())
    ref = weakref.ref(captioner)
    del captioner, clip
    manager.unload()
    gc.collect()
    assert ref() is None
