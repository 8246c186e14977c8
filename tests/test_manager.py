"""The model manager: laziness, one shared CLIP, offload/unload bookkeeping, thread safety, the device and
dtype policy."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

from icg.config import ClipSpec
from icg.errors import ConfigError, DownloadError
from icg.models import download, importer, loading
from icg.models.inventory import model_status
from icg.models.manager import Factories, ModelManager, RuntimeConfig
from icg.pipeline import caption_images
from tests.model_fixtures import fixture_models, use_test_registry, write_image

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


class ObservedLock:
    """A re-entrant lock that tells when a thread had to wait for it (``contended``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.contended = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.contended.set()
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Counting:
    """Factories that count their calls and build FakeModels. With ``hold_until`` set, a load waits for
    that event (a second loader then has every chance to start one too: there must be none)."""

    def __init__(self, hold_until: threading.Event | None = None) -> None:
        self.log: list = []
        self.clip_calls = 0
        self.captioner_calls: list[str] = []
        self.hold_until = hold_until
        self.lock = threading.Lock()

    def clip(self, spec, manager):
        self.clip_calls += 1
        return FakeModel(f"clip:{spec.id}", self.log)

    def captioner(self, name, manager):
        manager.device  # noqa: B018 - as the real loaders do: the device is resolved on first load
        with self.lock:
            self.captioner_calls.append(name)
        if self.hold_until is not None:
            assert self.hold_until.wait(30)
        return FakeModel(name, self.log)

    def factories(self, **kw) -> Factories:
        return Factories(clip=self.clip, captioner=self.captioner, **kw)


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
        "dtype": "float16",
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
        "dtype": "float16",
    }
    manager.captioner("a")  # loads again after an unload
    assert counting.captioner_calls == ["a", "b", "a"]


# ------------------------------------------------------------------------------------------ threads
def test_concurrent_requests_load_once():
    lock = ObservedLock()
    counting = Counting(hold_until=lock.contended)  # the first load ends once another request waits
    manager = _fake_manager(counting)
    manager.lock = lock
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
    manager.lock = lock = ObservedLock()
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
    assert lock.contended.wait(30)  # the offloader is waiting for the lock the job holds
    assert order == [] and counting.log == []
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


# ------------------------------------------------------------------------------------------ install
class FakeFetcher:
    """Stands in for the download: writes a registry model's files; ``block`` holds it inside the fetch
    of that model until ``release`` is set (``inside`` says it got there)."""

    def __init__(self, block: str | None = None) -> None:
        self.block = block
        self.inside, self.release = threading.Event(), threading.Event()
        self.calls: list[tuple[str, bool | None]] = []
        self.guard = threading.Lock()

    def __call__(self, entry, root, offline):
        with self.guard:
            self.calls.append((entry.id, offline))
        if entry.id == self.block:
            self.inside.set()
            assert self.release.wait(30)
        folder = root / entry.id
        folder.mkdir(parents=True, exist_ok=True)
        for name in entry.required_files:
            (folder / name).write_text("x")
        return folder


def _installing_manager(tmp_path, monkeypatch, fetcher, counting=None, **runtime) -> ModelManager:
    use_test_registry(monkeypatch, tmp_path)
    counting = counting or Counting()
    config = RuntimeConfig(device=FakeDevice(), models_dir=str(tmp_path / "models"), **runtime)
    return ModelManager(config, counting.factories(fetch=fetcher))


def _run(target) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target()))
    thread.start()
    return thread, out


def test_install_fetches_a_model_and_its_requirements_once(tmp_path, monkeypatch):
    fetcher = FakeFetcher()
    manager = _installing_manager(tmp_path, monkeypatch, fetcher)
    steps = []
    done = manager.install("tiny-prefix", progress=lambda fraction, text: steps.append((fraction, text)))
    assert done == ["tiny-clip", "tiny-tokenizer", "tiny-prefix"]  # requirements first
    assert fetcher.calls == [("tiny-clip", None), ("tiny-tokenizer", None), ("tiny-prefix", None)]
    assert [t for _, t in steps] == [
        "installing tiny-clip",
        "installing tiny-tokenizer",
        "installing tiny-prefix",
        "installed",
    ]
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0
    assert model_status("tiny-prefix", manager.models_dir).installed
    assert manager.install("tiny-prefix") == [] and len(fetcher.calls) == 3  # installed: nothing to do


def test_two_installs_of_the_same_model_download_it_once(tmp_path, monkeypatch):
    fetcher = FakeFetcher(block="tiny-clip")
    manager = _installing_manager(tmp_path, monkeypatch, fetcher)
    first, first_done = _run(lambda: manager.install("tiny-prefix"))
    assert fetcher.inside.wait(30)  # the first install is downloading the CLIP
    waiting = threading.Event()

    def progress(fraction, text):
        if text.startswith("waiting for tiny-clip"):
            waiting.set()

    second, second_done = _run(lambda: manager.install("tiny-sbg", progress=progress))
    assert waiting.wait(30)  # the second waits for the same CLIP instead of downloading it again
    fetcher.release.set()
    first.join(30)
    second.join(30)
    assert [c for c, _ in fetcher.calls].count("tiny-clip") == 1
    assert sorted(c for c, _ in fetcher.calls) == [
        "tiny-clip",
        "tiny-prefix",
        "tiny-sbg",
        "tiny-tokenizer",
        "tiny-vocabulary",
    ]
    assert "tiny-clip" in first_done[0] and "tiny-clip" not in second_done[0]
    assert model_status("tiny-sbg", manager.models_dir).installed


def test_an_install_holds_no_manager_lock(tmp_path, monkeypatch):
    fetcher = FakeFetcher(block="tiny-prefix")
    manager = _installing_manager(tmp_path, monkeypatch, fetcher)
    loaded = manager.captioner("a")  # not a registry model: nothing to install
    installing, _ = _run(lambda: manager.install("tiny-prefix"))
    assert fetcher.inside.wait(30)
    assert manager.lock.acquire(timeout=30)  # free while the download runs
    manager.lock.release()
    with manager.session():  # a job on a loaded model runs meanwhile
        assert manager.captioner("a") is loaded
    fetcher.release.set()
    installing.join(30)
    assert not installing.is_alive()


def _lock_is_free(manager: ModelManager) -> bool:
    """Whether another thread can take the manager's lock (waiting generously for it)."""

    def probe() -> bool:
        got = manager.lock.acquire(timeout=30)
        if got:
            manager.lock.release()
        return got

    thread, result = _run(probe)
    thread.join(60)
    return result == [True]


def test_first_use_installs_outside_the_lock_when_downloads_are_allowed(tmp_path, monkeypatch):
    lock_free = []

    class Checking(FakeFetcher):
        def __call__(self, entry, root, offline):
            lock_free.append(_lock_is_free(manager))
            return super().__call__(entry, root, offline)

    counting = Counting()
    fetcher = Checking()
    manager = _installing_manager(tmp_path, monkeypatch, fetcher, counting, allow_download=True)
    manager.captioner("tiny-prefix")
    assert counting.captioner_calls == ["tiny-prefix"]
    assert fetcher.calls == [("tiny-clip", None), ("tiny-tokenizer", None), ("tiny-prefix", None)]
    assert lock_free == [True, True, True]
    manager.captioner("tiny-prefix")  # loaded: no second install
    assert len(fetcher.calls) == 3


def test_first_use_without_downloads_only_installs_offline(tmp_path, monkeypatch):
    class Refusing(FakeFetcher):
        def __call__(self, entry, root, offline):
            self.calls.append((entry.id, offline))
            raise DownloadError(f"{entry.id}: offline")

    fetcher = Refusing()
    counting = Counting()
    manager = _installing_manager(tmp_path, monkeypatch, fetcher, counting)
    manager.captioner("tiny-sbg")  # the (fake) loader decides what a missing model means
    assert fetcher.calls == [("tiny-clip", True)]  # offline only; the first refusal ends the install
    assert counting.captioner_calls == ["tiny-sbg"]
    manager.captioner("tiny-tokenizer")  # not a captioner: nothing is installed for it
    assert len(fetcher.calls) == 1


def test_an_explicit_install_probes_unreachable_hosts_again(tmp_path, monkeypatch):
    seen = []

    class Recording(FakeFetcher):
        def __call__(self, entry, root, offline):
            seen.append(download._known_unreachable(download.hf_endpoint()))
            return super().__call__(entry, root, offline)

    manager = _installing_manager(tmp_path, monkeypatch, Recording())
    download._mark_unreachable(download.hf_endpoint(), "unreachable (down a minute ago)")
    manager.install("tiny-clip")
    (manager.models_dir / "tiny-clip" / "open_clip_pytorch_model.bin").unlink()
    manager.install("tiny-clip", explicit=True)
    assert seen == ["unreachable (down a minute ago)", None]
    download.forget_unreachable()
