"""Issue 16: use the CLIP the user already has (the WebUI's Interrogate CLIP archive, the Hugging Face
cache) instead of a second download; import those files; never write into another tool's cache.

The tiny CLIP stands in for ViT-L-14, laid out as the real caches are: an OpenAI-style TorchScript
archive built here (``torch.jit.script`` of modules holding OpenAI's tensor names, fp16, plus the extra
tensors OpenAI's archive has), an open_clip state dict (``.bin`` and ``.safetensors``) and the Hugging
Face cache folder structure (``models--org--repo/{blobs,snapshots/<rev>,refs/main}``)."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from icg.errors import CheckpointError, ModelNotFound, UnsafePickleError
from icg.models import clip_sources, download, importer, openai_archive, pointers
from icg.models.registry import load_registry
from tests.model_fixtures import TINY_CLIP, fixture_models, install_fake_hub, use_test_registry, write_image

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

REPO = "someone/tiny-clip"  # the tiny-clip entry's Hugging Face repo in the test registry


# ------------------------------------------------------------------------------------------ layouts
class _Node(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _tiny_state() -> dict:
    from safetensors.torch import load_file

    return load_file(fixture_models()["clip_weights"])


def _half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def write_openai_archive(path: Path, state: dict) -> Path:
    """A TorchScript archive laid out as OpenAI's ``ViT-L-14.pt``: nested module objects holding the
    tensors under OpenAI's names, the ``input_resolution``/``context_length``/``vocab_size`` tensors and a
    plain ``attn_mask`` attribute per text block (no parameter, as in OpenAI's model.py)."""
    root = _Node()
    extras = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77)}
    extras["vocab_size"] = torch.tensor(49408)
    for key, value in {**state, **extras}.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Node())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    root.transformer.resblocks.get_submodule("0").attn_mask = torch.full((77, 77), float("-inf")).triu(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(root).save(str(path))
    return path


def write_hf_cache(hub: Path, repo: str, files: dict[str, Path], revision: str = "abc123") -> Path:
    """``files`` laid out as huggingface_hub caches them; returns the snapshot folder."""
    base = hub / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (base / "blobs").mkdir(exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(revision, encoding="utf-8")
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its kind, size and modification time (to prove nothing changed)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Private HOME and Hugging Face cache, the test registry (its ``tiny-clip`` is the CLIP of the tiny
    captioners) and a models folder."""
    fixture_models()
    home, hub = tmp_path / "home", tmp_path / "hub"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "ICG_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    use_test_registry(monkeypatch, tmp_path)
    return {
        "home": home,
        "hub": hub,
        "clip_cache": home / ".cache" / "clip",
        "root": tmp_path / "models",
        "monkeypatch": monkeypatch,
    }


def _layout(kind: str, env: dict, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny CLIP saved in one layout: ``(file, the cache folder it lives in)``."""
    fx = fixture_models()
    if kind == "archive":  # the WebUI's Interrogate CLIP: ~/.cache/clip/<name>.pt
        archive = write_openai_archive(env["clip_cache"] / "ViT-L-14.pt", _half(_tiny_state()))
        return archive, env["clip_cache"]
    if kind == "clip-models-path":  # --clip-models-path
        folder = tmp_path / "webui" / "models" / "clip"
        return write_openai_archive(folder / "ViT-L-14.pt", _half(_tiny_state())), folder
    name = "open_clip_pytorch_model.bin" if kind == "hf-bin" else "open_clip_model.safetensors"
    src = fx["clip_bin"] if kind == "hf-bin" else fx["clip_weights"]
    snapshot = write_hf_cache(env["hub"], REPO, {name: Path(src)})
    return snapshot / name, env["hub"]


def features(weights: str | Path, image: Path):
    from PIL import Image

    from icg.clip_encoder import ClipEncoder
    from icg.config import ClipSpec

    spec = ClipSpec(
        arch=TINY_CLIP["arch"],
        pretrained=None,
        quick_gelu=False,
        config_path=fixture_models()["clip_config"],
        weights_path=str(weights),
    )
    encoder = ClipEncoder.load(spec, device="cpu", dtype="float32")
    return encoder.encode_images([Image.open(image)])


def reference(tmp_path: Path, half: bool) -> Path:
    """The original tiny CLIP's weights (rounded to fp16 where the layout stores fp16, as OpenAI's does)."""
    from safetensors.torch import save_file

    state = _tiny_state()
    state = {k: v.float() if v.is_floating_point() else v for k, v in _half(state).items()} if half else state
    path = tmp_path / f"reference-{half}.safetensors"
    save_file(state, str(path))
    return path


# ------------------------------------------------------------------------------------------ the archive
def test_the_restricted_reader_reads_an_openai_archive_without_running_it(tmp_path):
    state = _half(_tiny_state())
    archive = write_openai_archive(tmp_path / "ViT-L-14.pt", state)
    refs = openai_archive.read_refs(archive)
    assert refs.scripted
    assert {k: refs.refs[k].shape for k in state} == {k: tuple(v.shape) for k, v in state.items()}
    assert "transformer.resblocks.0.attn_mask" in refs.refs and "input_resolution" in refs.refs
    tensors, reader = openai_archive.load_tensors(archive, list(state))
    assert reader == openai_archive.RESTRICTED
    assert all(torch.equal(tensors[k], state[k]) and tensors[k].dtype == state[k].dtype for k in state)


def test_a_torch_layout_the_reader_does_not_know_falls_back_to_torch_jit_load(tmp_path, monkeypatch, caplog):
    state = _half(_tiny_state())
    archive = write_openai_archive(tmp_path / "ViT-L-14.pt", state)
    # as if this torch wrote fp16 storages under a name the restricted reader has never seen
    monkeypatch.delitem(openai_archive.STORAGE_DTYPES, "HalfStorage")
    with caplog.at_level(logging.INFO, logger="icg"):
        tensors, reader = openai_archive.load_tensors(archive, list(state))
    assert reader == openai_archive.JIT
    assert "falling back to torch.jit.load" in caplog.text and "torch.HalfStorage" in caplog.text
    assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_the_fallback_also_finds_and_converts_the_webui_archive(env, tmp_path, monkeypatch):
    archive, _ = _layout("archive", env, tmp_path)
    monkeypatch.delitem(openai_archive.STORAGE_DTYPES, "HalfStorage")
    download.download_models(["tiny-clip"], env["root"], offline=True)
    from icg.models.inventory import model_status

    status = model_status("tiny-clip", env["root"])
    assert status.installed and str(archive) in status.source and "torch.jit.load" in status.source
    weights = env["root"] / "tiny-clip" / clip_sources.CONVERTED_NAME
    image = write_image(tmp_path / "b.png")
    expected = features(reference(tmp_path, half=True), image)
    assert torch.allclose(features(weights, image), expected, atol=1e-6)


def _archive_with_code(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ViT-L-14/data.pkl", pickle.dumps({"visual.proj": Evil()}, protocol=2))
        zf.writestr("ViT-L-14/version", "3\n")
    return path


def test_an_archive_whose_pickle_holds_code_is_refused_and_never_handed_to_the_fallback(
    env, tmp_path, monkeypatch, caplog
):
    marker = tmp_path / "ran"
    archive = _archive_with_code(env["clip_cache"].parent.parent / "evil.pt", marker)

    def no_fallback(*args, **kwargs):
        raise AssertionError("a file with code went to torch.jit.load")

    monkeypatch.setattr(torch.jit, "load", no_fallback)
    with pytest.raises(UnsafePickleError, match=r"refused: .*'(posix|os|nt)\.system'"):
        openai_archive.load_tensors(archive, ["visual.proj"])
    with pytest.raises(UnsafePickleError):
        importer.import_model([archive], "tiny-clip", env["root"])
    # the same file in the WebUI's CLIP cache under the real name: skipped with a log line
    env["clip_cache"].mkdir(parents=True)
    os.replace(archive, env["clip_cache"] / "ViT-L-14.pt")
    entry = load_registry()["tiny-clip"]
    with caplog.at_level(logging.INFO, logger="icg"):
        assert clip_sources.use_local_copy(entry, env["root"] / "tiny-clip") is None
    assert "Not using" in caplog.text and "ViT-L-14.pt" in caplog.text
    assert not marker.exists() and not (env["root"] / "tiny-clip").exists()


# ------------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("kind", ["archive", "hf-bin", "hf-safetensors"])
def test_icg_import_accepts_each_layout_and_gives_the_original_features(env, tmp_path, kind):
    src, _ = _layout(kind, env, tmp_path)
    result = importer.import_model([src], "tiny-clip", env["root"])
    entry = load_registry()["tiny-clip"]
    assert download.present(entry, env["root"])
    weights = pointers.installed_file(result.folder, entry.required_files[0])
    assert weights is not None and weights.parent == result.folder  # imported: a copy, never a link
    image = write_image(tmp_path / "cat.png")
    expected = features(reference(tmp_path, half=kind == "archive"), image)
    assert torch.allclose(features(weights, image), expected, atol=1e-6)


def test_import_checks_every_tensor_shape_against_the_target_clip(env, tmp_path):
    from safetensors.torch import save_file

    state = _tiny_state()
    key = next(k for k in state if k.startswith("visual.") and state[k].dim() == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    bad = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(bad))
    why = rf"not CLIP icg-tiny-clip weights: 1 tensor\(s\) of another shape \(e\.g\. {key}"
    with pytest.raises(CheckpointError, match=why):
        importer.import_model([bad], "tiny-clip", env["root"])


def test_the_published_sha256_of_the_real_archive_is_known_and_checked(env, tmp_path, monkeypatch):
    # the real ViT-L-14 (from open_clip's table: the folder of the download URL) and its real shapes
    real = {"arch": "ViT-L-14", "pretrained": "openai"}
    published = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
    assert clip_sources.known_sha256(real) == published
    shapes = clip_sources.expected_shapes(real)
    assert len(shapes) == 446 and shapes["text_projection"] == (768, 768)
    assert shapes["visual.conv1.weight"] == (1024, 3, 14, 14)
    # a tiny archive with the right shapes but not the published bytes is refused
    archive, _ = _layout("archive", env, tmp_path)
    monkeypatch.setattr(clip_sources, "known_sha256", lambda clip: "0" * 64)
    with pytest.raises(CheckpointError, match="not OpenAI's icg-tiny-clip archive: sha256"):
        clip_sources.identify(archive, TINY_CLIP)
    digest = download.sha256_file(archive)
    monkeypatch.setattr(clip_sources, "known_sha256", lambda clip: digest)
    assert clip_sources.identify(archive, TINY_CLIP).layout == clip_sources.ARCHIVE


# ------------------------------------------------------------------------------------------ reuse
@pytest.mark.parametrize("kind", ["archive", "clip-models-path", "hf-bin", "hf-safetensors"])
def test_a_missing_clip_comes_from_the_cache_offline_without_writing_there(env, tmp_path, kind, caplog):
    src, cache = _layout(kind, env, tmp_path)
    before = tree(cache)
    dirs = [str(cache)] if kind == "clip-models-path" else []
    with caplog.at_level(logging.INFO, logger="icg"):
        download.download_models(["tiny-clip"], env["root"], offline=True, clip_dirs=dirs)
    assert tree(cache) == before  # nothing written into the other tool's cache
    entry = load_registry()["tiny-clip"]
    folder = env["root"] / "tiny-clip"
    weights = pointers.installed_file(folder, entry.required_files[0])
    if kind.startswith("hf"):
        assert weights == src  # referenced in place: no copy of the weights
        assert download.local_size(entry, env["root"]) == 0
    else:
        assert weights == folder / clip_sources.CONVERTED_NAME  # converted once, beside the pointer
    from icg.models.inventory import model_status

    status = model_status("tiny-clip", env["root"])
    where = "Hugging Face cache" if kind.startswith("hf") else "CLIP cache"
    assert status.installed and where in status.source and str(src) in status.source
    assert f"Using the CLIP tiny-clip already on this machine, from the {where}" in caplog.text
    image = write_image(tmp_path / "dog.png")
    expected = features(reference(tmp_path, half=not kind.startswith("hf")), image)
    assert torch.allclose(features(weights, image), expected, atol=1e-6)


def test_without_the_clip_models_path_the_webui_folder_is_not_searched(env, tmp_path):
    _layout("clip-models-path", env, tmp_path)
    entry = load_registry()["tiny-clip"]
    assert clip_sources.use_local_copy(entry, env["root"] / "tiny-clip") is None


def test_files_with_the_right_name_but_other_content_are_ignored(env, tmp_path, caplog):
    from safetensors.torch import save_file

    other = {k: v for k, v in _tiny_state().items() if k != "logit_scale"}  # another model: a tensor short
    write_openai_archive(env["clip_cache"] / "ViT-L-14.pt", other)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    wide = tmp_path / "wide.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wide))
    files = {"open_clip_pytorch_model.bin": junk, "open_clip_model.safetensors": wide}
    write_hf_cache(env["hub"], REPO, files)
    entry = load_registry()["tiny-clip"]
    with caplog.at_level(logging.INFO, logger="icg"):
        assert clip_sources.use_local_copy(entry, env["root"] / "tiny-clip") is None
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Not using")]
    assert len(ignored) == 3, ignored
    assert any("ViT-L-14.pt" in m and "1 tensor(s) missing (e.g. logit_scale)" in m for m in ignored)
    assert not (env["root"] / "tiny-clip").exists()


def test_first_caption_with_the_webui_clip_cache_downloads_only_the_captioner(env, tmp_path):
    """A WebUI whose Interrogate CLIP ran once: the first caption fetches the captioner and its tokenizer,
    never the CLIP."""
    from icg.models.manager import ModelManager, RuntimeConfig
    from icg.pipeline import caption_images

    _layout("archive", env, tmp_path)
    env["monkeypatch"].delenv("HF_HUB_OFFLINE", raising=False)  # downloads allowed (from the fake hub)
    calls = install_fake_hub(env["monkeypatch"])
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(env["root"]), allow_download=True))
    results = caption_images(manager, "tiny-prefix", [write_image(tmp_path / "a.png")])
    assert results and results[0].caption is not None
    fetched = {c["repo_id"] for c in calls if not c["local_files_only"]}
    assert fetched == {"someone/tiny-prefix", "someone/tiny-tok"}


# ------------------------------------------------------------------------------------------ pointers
def test_a_dangling_pointer_says_so_and_the_normal_resolution_runs(env, tmp_path, caplog):
    from icg.models import loading
    from icg.models.inventory import model_status
    from icg.models.manager import ModelManager, RuntimeConfig

    src, _ = _layout("hf-safetensors", env, tmp_path)
    download.download_models(["tiny-clip"], env["root"], offline=True)
    blob = src.resolve()
    moved = tmp_path / "moved.bin"
    os.replace(blob, moved)  # the user cleaned the Hugging Face cache
    status = model_status("tiny-clip", env["root"])
    assert not status.installed and "which is gone" in status.note
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(env["root"])))
    with pytest.raises(ModelNotFound) as info:
        loading.resolve_clip(dict(TINY_CLIP), manager)
    message = str(info.value)
    assert f"points to {src}, which is gone (moved or deleted)" in message and "icg download" in message
    # the WebUI's archive appears: the same resolution now finds and links it, saying why it looked
    _layout("archive", env, tmp_path)
    with caplog.at_level(logging.WARNING, logger="icg"):
        spec = loading.resolve_clip(dict(TINY_CLIP), manager)
    assert "which is gone" in caplog.text
    assert Path(spec.weights_path) == env["root"] / "tiny-clip" / clip_sources.CONVERTED_NAME


def test_a_pointer_to_a_file_that_changed_no_longer_counts(env, tmp_path):
    src, _ = _layout("hf-bin", env, tmp_path)
    download.download_models(["tiny-clip"], env["root"], offline=True)
    entry = load_registry()["tiny-clip"]
    assert download.present(entry, env["root"])
    os.utime(src.resolve(), ns=(1, 1))
    assert not download.present(entry, env["root"])
    path, problem = pointers.resolve(env["root"] / "tiny-clip", entry.required_files[0])
    assert path is None and "was modified since it was checked" in problem


def test_a_malformed_pointer_is_named_with_its_field(tmp_path):
    pointer = pointers.pointer_path(tmp_path, "w.bin")
    pointer.write_text('{"icg_pointer": 1, "target": "x", "size": "big"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"w\.bin\.pointer\.json: pointer field 'size' must be a int"):
        pointers.read_pointer(pointer)
    assert pointers.resolve(tmp_path, "w.bin")[0] is None


# ------------------------------------------------------------------------------------------ where
def test_the_hugging_face_cache_honours_its_environment(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert clip_sources.hf_hub_cache() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert clip_sources.hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert clip_sources.hf_hub_cache() == tmp_path / "hub"


def test_install_py_searches_the_webui_clip_models_path(monkeypatch):
    import importlib.util
    import sys
    import types

    path = Path(__file__).parents[1] / "install.py"
    spec = importlib.util.spec_from_file_location("icg_install_clip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launch = types.SimpleNamespace(args=types.SimpleNamespace(clip_models_path="/webui/models/clip"))
    monkeypatch.setattr(sys, "argv", ["install.py"])
    assert module.clip_dirs(launch) == ["/webui/models/clip"] and module.clip_dirs(None) == []
    monkeypatch.setattr(sys, "argv", ["install.py", "--clip-models-path", "/elsewhere"])
    assert module.clip_dirs(launch) == ["/elsewhere"]


def test_the_webui_searches_its_clip_models_path_and_its_models_panel_says_where_the_clip_came_from(
    env, tmp_path
):
    import dataclasses

    from icg.models.manager import ModelManager
    from tests.webui_support import fake_webui

    archive, folder = _layout("clip-models-path", env, tmp_path)
    env["monkeypatch"].delenv("HF_HUB_OFFLINE", raising=False)
    calls = install_fake_hub(env["monkeypatch"])
    with fake_webui(clip_models_path=str(folder), icg_models_dir=str(env["root"])):
        from icg import webui as adapter

        runtime = adapter.service.runtime_config()
        assert runtime.clip_dirs == (str(folder),)
        manager = ModelManager(dataclasses.replace(runtime, device="cpu", allow_download=True))
        manager.install("tiny-prefix")
        service = adapter.service.WebUIService(manager, models=("tiny-prefix",))
        row = next(r for r in adapter.models_panel.model_rows(service) if r[0].startswith("tiny-prefix"))
    assert "someone/tiny-clip" not in {c["repo_id"] for c in calls}
    source = row[adapter.models_panel.MODEL_HEADERS.index("source")]
    assert source.startswith("https://") and f"CLIP: the CLIP cache {folder}: {archive} (converted" in source
