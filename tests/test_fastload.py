"""The fast loading path (``icg.models.fastload``) gives the same models as today's path, and the
commands import only what they need."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from icg.models.fastload import LEGACY_ENV, load_into, no_init
from icg.tiny import CLIP_DIM

ROOT = Path(__file__).resolve().parents[1]


def _both(monkeypatch, load):
    """``load()`` on today's path, then on the new one."""
    monkeypatch.setenv(LEGACY_ENV, "1")
    old = load()
    monkeypatch.delenv(LEGACY_ENV)
    return old, load()


def _assert_same_module(old: torch.nn.Module, new: torch.nn.Module) -> None:
    a, b = old.state_dict(keep_vars=True), new.state_dict(keep_vars=True)
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].requires_grad == b[key].requires_grad, key
        assert torch.equal(a[key], b[key]), key
    buffers_a, buffers_b = dict(old.named_buffers()), dict(new.named_buffers())
    assert list(buffers_a) == list(buffers_b)
    for key in buffers_a:  # non-persistent ones too (causal masks): built, not loaded
        assert torch.equal(buffers_a[key], buffers_b[key]), key


@pytest.fixture(scope="module")
def prefix_folder(fixture_files, tmp_path_factory) -> Path:
    from icg.captioners.prefix import config_from_state, model_from_state, save_prefix_model

    state = torch.load(fixture_files["clip_prefix_pt"], weights_only=True)
    cfg = config_from_state(state, source="tiny")
    out = tmp_path_factory.mktemp("prefix")
    save_prefix_model(model_from_state(state, cfg, source="tiny"), cfg, out)
    return out


@pytest.mark.parametrize("form", ["folder", "pt"])
def test_prefix_model_bit_identical_to_the_copying_load(monkeypatch, prefix_folder, fixture_files, form):
    from icg.captioners.generation import generate
    from icg.captioners.prefix import load_prefix_model
    from icg.config import DecodingConfig

    path = prefix_folder if form == "folder" else Path(fixture_files["clip_prefix_pt"])
    (old, _), (new, _) = _both(monkeypatch, lambda: load_prefix_model(path))
    pair = (old, new)
    _assert_same_module(old, new)
    assert new.gpt.lm_head.weight is new.gpt.transformer.wte.weight  # the tie follows the loaded weights
    feats = torch.nn.functional.normalize(torch.randn(3, CLIP_DIM), dim=-1)
    cfg = DecodingConfig(max_new_tokens=12, stop=None, stop_at_eos=False)
    with torch.inference_mode():
        prefixes = old.prefix(feats), new.prefix(feats)
        assert torch.equal(*prefixes)
        logits = [m.gpt(inputs_embeds=p).logits for m, p in zip(pair, prefixes)]
        assert torch.equal(*logits)
    runs = [generate(m.gpt, cfg=cfg, inputs_embeds=x) for m, x in zip(pair, prefixes)]
    tokens = [[seqs[0].tokens for seqs in run] for run in runs]
    assert tokens[0] == tokens[1]


def test_clip_bit_identical_to_the_copying_load(monkeypatch, fixture_files):
    from PIL import Image

    from icg.clip_encoder import ClipEncoder, spec_from_folder

    spec = spec_from_folder(fixture_files["clip_dir"])
    old, new = _both(monkeypatch, lambda: ClipEncoder.load(spec, device="cpu", dtype="fp32"))
    _assert_same_module(old.model, new.model)
    image = Image.new("RGB", (40, 30), (200, 30, 90))
    assert torch.equal(old.encode_images([image]), new.encode_images([image]))
    texts = ["a dog on the grass", "picture of people and some object."]
    assert torch.equal(old.encode_texts(texts), new.encode_texts(texts))


def test_torch_files_load_memory_mapped_or_as_before(tmp_path):
    from icg.clip_encoder import load_tensor_file

    state = {"a": torch.randn(4, 3), "b": torch.arange(5)}
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "old.bin", _use_new_zipfile_serialization=False)  # no mmap for this one
    for name in ("zip.bin", "old.bin"):
        loaded = load_tensor_file(tmp_path / name, mmap=True)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_into_converts_dtypes_like_a_copy():
    module = torch.nn.Linear(3, 2)
    state = {"weight": torch.randn(2, 3, dtype=torch.float16), "bias": torch.randn(2, dtype=torch.float16)}
    load_into(module, state)
    assert module.weight.dtype == torch.float32 and module.weight.requires_grad
    assert torch.equal(module.weight, state["weight"].float())
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_into(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)})


def test_no_init_leaves_other_threads_alone():
    """Inside ``no_init`` this thread's parameter fills are skipped, another thread's are not, and
    buffers filled while building still get their values."""
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other():
        assert inside.wait(60)
        p = torch.nn.Parameter(torch.zeros(3))
        torch.nn.init.constant_(p, 7.0)
        seen["other"] = p.detach().clone()
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with no_init():
        p = torch.nn.Parameter(torch.full((3,), 5.0))
        torch.nn.init.constant_(p, 7.0)
        buffer = torch.empty(2, 2)
        buffer.fill_(float("-inf"))
        inside.set()
        assert done.wait(60)
    thread.join(60)
    assert torch.equal(p.detach(), torch.full((3,), 5.0))  # skipped: the value it was made with
    assert torch.equal(seen["other"], torch.full((3,), 7.0))
    assert torch.isinf(buffer).all()


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = ("torch", "transformers", "gradio", "fastapi", "open_clip")


@pytest.mark.parametrize("command", ["caption", "batch", "models", "doctor"])
def test_command_help_imports_nothing_heavy(command):
    code = f"from icg.cli import main\ntry:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass"
    modules = _modules_after(code)
    assert not [m for m in HEAVY if m in modules]


def test_caption_imports_no_web_stack(fixture_files, tmp_path):
    """A real caption imports torch, open_clip and transformers' GPT-2, but no web framework."""
    from tests.model_fixtures import write_image

    image = write_image(tmp_path / "photo.jpg")
    args = ["caption", str(image), "--model", fixture_files["clip_prefix_pt"], "--device", "cpu"]
    args += ["--clip", fixture_files["clip_dir"], "--tokenizer", fixture_files["tokenizer_dir"]]
    args += ["--models-dir", str(tmp_path)]
    modules = _modules_after(f"from icg.cli import main\nassert main({args!r}) == 0")
    assert "torch" in modules and "open_clip" in modules
    assert not [m for m in ("gradio", "fastapi", "uvicorn", "starlette", "pandas") if m in modules]
