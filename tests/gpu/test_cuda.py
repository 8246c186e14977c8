"""CUDA checks, run on a GPU machine with ``python -m pytest -m gpu tests/gpu``; skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from icg.captioners.generation import generate
from icg.captioners.prefix import PrefixCaptioner, config_from_state, model_from_state
from icg.clip_encoder import ClipEncoder, spec_from_folder
from icg.config import DecodingConfig
from icg.models.manager import ModelManager, RuntimeConfig
from icg.pipeline import caption_images
from tests import fixtures

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def pictures(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(n)]


def test_fp16_clip_matches_fp32_cpu(fixture_files):
    spec = spec_from_folder(fixture_files["clip_dir"])
    gpu = ClipEncoder.load(spec, device="cuda")
    cpu = ClipEncoder.load(spec, device="cpu")
    assert gpu.dtype == torch.float16 and next(gpu.model.parameters()).is_cuda
    a, b = gpu.encode_images(pictures(4)), cpu.encode_images(pictures(4))
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    t1, t2 = gpu.encode_texts(["a dog", "a cat on a sofa"]), cpu.encode_texts(["a dog", "a cat on a sofa"])
    assert torch.nn.functional.cosine_similarity(t1, t2).min() > 0.99


def test_cuda_greedy_equals_cpu_greedy_in_fp32():
    tok = fixtures.tiny_tokenizer()
    state = fixtures.tiny_prefix_state(tok)
    cpu = model_from_state(state, config_from_state(state), source="tiny")
    gpu = model_from_state(state, config_from_state(state), source="tiny").cuda()
    feats = torch.nn.functional.normalize(torch.randn(8, fixtures.CLIP_DIM), dim=-1)
    cfg = DecodingConfig(max_new_tokens=12, stop=None)
    a = generate(cpu.gpt, cfg=cfg, inputs_embeds=cpu.prefix(feats))
    b = generate(gpu.gpt, cfg=cfg, inputs_embeds=gpu.prefix(feats.cuda()))
    assert [s[0].tokens for s in a] == [s[0].tokens for s in b]


def test_fp16_prefix_captioner_and_seeded_sampling_on_cuda():
    tok = fixtures.tiny_tokenizer()
    state = fixtures.tiny_prefix_state(tok)
    model = model_from_state(state, config_from_state(state), source="tiny").cuda()
    model.gpt.half()
    cap = PrefixCaptioner(model, tok, model_id="tiny")
    feats = torch.nn.functional.normalize(torch.randn(4, fixtures.CLIP_DIM), dim=-1)
    assert all(r.caption for r in cap.caption_features(feats))
    cfg = DecodingConfig(strategy="sample", num_samples=3, top_k=20, seed=5, max_new_tokens=8)
    first = [r.candidates for r in cap.caption_features(feats, cfg)]
    assert first == [r.candidates for r in cap.caption_features(feats, cfg)]


def test_manager_on_cuda_offloads_and_unloads(fixture_files):
    manager = ModelManager(
        RuntimeConfig(device="cuda", clip=fixture_files["clip_dir"], tokenizer=fixture_files["tokenizer_dir"])
    )
    results = caption_images(manager, fixture_files["clip_prefix_pt"], pictures(3))
    assert len(results) == 3 and all(r.caption for r in results)
    loaded = torch.cuda.memory_allocated()
    assert loaded > 0
    manager.offload()
    assert torch.cuda.memory_allocated() < loaded
    assert caption_images(manager, fixture_files["clip_prefix_pt"], pictures(1))[0].caption  # moves back
    manager.unload()
    assert torch.cuda.memory_allocated() < loaded
