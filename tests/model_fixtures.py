"""Helpers shared by the model tests: the fixture models (written once per test process), a small test
registry whose entries point at them, a fake ``huggingface_hub`` serving them, and a test image."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

TINY_CLIP = {"arch": "icg-tiny-clip", "pretrained": "tiny"}


@functools.lru_cache(maxsize=1)
def fixture_models() -> dict[str, str]:
    """``tests.fixtures.write_all`` into a process-wide temporary folder (read-only for the tests), plus
    ``clip_bin``: the tiny CLIP's weights as a tensors-only torch file (the registry's CLIP format).

    The tiny CLIP's open_clip config is registered, so ``icg-tiny-clip`` is a known architecture."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    from tests.fixtures import write_all

    out = Path(tempfile.mkdtemp(prefix="icg-model-fixtures-"))
    atexit.register(shutil.rmtree, out, True)
    manifest = write_all(out)
    open_clip.add_model_config(manifest["clip_config"])
    clip_bin = out / "open_clip_pytorch_model.bin"
    torch.save(load_file(manifest["clip_weights"]), clip_bin)
    manifest["clip_bin"] = str(clip_bin)
    return manifest


def registry_data() -> dict:
    """Registry entries for the fixture models (hf sources served by ``fake_hub``)."""
    return {
        "schema": 1,
        "models": [
            {
                "id": "tiny-prefix",
                "display_name": "Tiny CLIP-prefix",
                "kind": "clip-prefix",
                "description": "fixture",
                "clip": TINY_CLIP,
                "normalize": False,
                "prefix_length": 10,
                "decoding": {"max_new_tokens": 9},
                "requires": ["tiny-clip", "tiny-tokenizer"],
                "files": ["config.json", "model.safetensors"],
                "convert_from": ["tiny.pt"],
                "sources": [{"kind": "hf", "repo": "someone/tiny-prefix", "filename": "tiny.pt"}],
            },
            {
                "id": "tiny-sbg",
                "display_name": "Tiny SBG",
                "kind": "sbg",
                "description": "fixture",
                "clip": TINY_CLIP,
                "requires": ["tiny-clip", "tiny-tokenizer", "tiny-vocabulary"],
                "files": ["config.json", "model.safetensors"],
                "sources": [
                    {"kind": "hf", "repo": "someone/tiny-sbg", "filename": "config.json"},
                    {"kind": "hf", "repo": "someone/tiny-sbg", "filename": "model.safetensors"},
                ],
            },
            {
                "id": "tiny-vocabulary",
                "display_name": "Tiny vocabulary",
                "kind": "sbg-vocabulary",
                "description": "fixture",
                "files": ["vocabulary.json"],
                "convert_from": ["all_labels.pkl", "encyclopedia.pkl"],
                "sources": [
                    {"kind": "hf", "repo": "someone/tiny-vocab", "filename": "all_labels.pkl"},
                    {"kind": "hf", "repo": "someone/tiny-vocab", "filename": "encyclopedia.pkl"},
                ],
            },
            {
                "id": "tiny-tokenizer",
                "display_name": "Tiny tokenizer",
                "kind": "tokenizer",
                "description": "fixture",
                "files": ["tokenizer.json", "tokenizer_config.json"],
                "sources": [
                    {"kind": "hf", "repo": "someone/tiny-tok", "filename": "tokenizer.json"},
                    {"kind": "hf", "repo": "someone/tiny-tok", "filename": "tokenizer_config.json"},
                ],
            },
            {
                "id": "tiny-clip",
                "display_name": "Tiny CLIP",
                "kind": "clip",
                "description": "fixture",
                "clip": TINY_CLIP,
                "files": ["open_clip_pytorch_model.bin"],
                "sources": [
                    {"kind": "hf", "repo": "someone/tiny-clip", "filename": "open_clip_pytorch_model.bin"}
                ],
            },
            {
                "id": "tiny-manual",
                "display_name": "Tiny manual",
                "kind": "clip-prefix",
                "description": "fixture",
                "clip": TINY_CLIP,
                "prefix_length": 10,
                "files": ["config.json", "model.safetensors"],
                "convert_from": ["manual.pt"],
                "sources": [
                    {"kind": "manual", "url": "https://example.invalid/page", "filename": "manual.pt"}
                ],
            },
        ],
    }


def use_test_registry(monkeypatch, folder: Path) -> Path:
    """Make ``load_registry()`` read the test registry (written into ``folder``)."""
    from icg.models import registry

    path = Path(folder) / "test-registry.json"
    path.write_text(json.dumps(registry_data()), encoding="utf-8")
    monkeypatch.setattr(registry, "REGISTRY_PATH", path)
    return path


def hub_files() -> dict[tuple[str, str], str]:
    fx = fixture_models()
    sbg = Path(fx["sbg_generator_dir"])
    tok = Path(fx["tokenizer_dir"])
    return {
        ("someone/tiny-prefix", "tiny.pt"): fx["clip_prefix_pt"],
        ("someone/tiny-sbg", "config.json"): str(sbg / "config.json"),
        ("someone/tiny-sbg", "model.safetensors"): str(sbg / "model.safetensors"),
        ("someone/tiny-vocab", "all_labels.pkl"): fx["all_labels_pkl"],
        ("someone/tiny-vocab", "encyclopedia.pkl"): fx["encyclopedia_pkl"],
        ("someone/tiny-tok", "tokenizer.json"): str(tok / "tokenizer.json"),
        ("someone/tiny-tok", "tokenizer_config.json"): str(tok / "tokenizer_config.json"),
        ("someone/tiny-clip", "open_clip_pytorch_model.bin"): fx["clip_bin"],
    }


def install_fake_hub(monkeypatch, *, cached: bool = False) -> list[dict]:
    """A stand-in ``huggingface_hub`` serving the fixture files; returns the list of recorded calls.

    ``local_files_only`` calls find a file only when ``cached``. The reachability probe is told the hub
    answers."""
    from icg.models import download

    calls: list[dict] = []
    files = hub_files()
    module = types.ModuleType("huggingface_hub")

    def hf_hub_download(repo_id, filename, *, revision=None, local_dir=None, local_files_only=False, **kw):
        calls.append({"repo_id": repo_id, "filename": filename, "local_files_only": local_files_only})
        src = files.get((repo_id, filename))
        if src is None or (local_files_only and not cached):
            raise FileNotFoundError(f"404: {repo_id}/{filename}")
        if local_dir is None:
            return src
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return str(dest)

    module.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    monkeypatch.setattr(download, "probe_origin", lambda origin, timeout=0: None)
    download.forget_unreachable()
    return calls


def write_image(path: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
    return path
