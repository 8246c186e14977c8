"""The int8 and bf16 precisions (``icg.quant``, ``--dtype``): exact module conversions, quantised tiny
models that still caption, the device and CPU checks, and the option in every front end."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from icg import quant
from icg.cli import build_parser
from icg.errors import ConfigError
from icg.models.manager import ModelManager, RuntimeConfig, resolve_precision
from icg.options import RUNTIME
from icg.pipeline import caption_images
from icg.tiny import tiny_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DYNAMIC_LINEAR = torch.ao.nn.quantized.dynamic.Linear


def _manager(files, tmp_path, dtype: str) -> ModelManager:
    return ModelManager(
        RuntimeConfig(
            device="cpu",
            dtype=dtype,
            models_dir=str(tmp_path),
            clip=files["clip_dir"],
            tokenizer=files["tokenizer_dir"],
        )
    )


def _images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------------------------------ conversions
def test_conv1d_to_linear_gives_the_same_gpt2_outputs_in_fp32():
    from transformers.pytorch_utils import Conv1D

    lm = tiny_lm(tiny_tokenizer()).eval()
    converted = copy.deepcopy(lm)
    count = quant.conv1d_to_linear(converted)
    assert count == 4 * lm.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert not any(isinstance(m, Conv1D) for m in converted.modules())
    ids = torch.randint(0, lm.config.vocab_size, (3, 11))
    with torch.inference_mode():
        want, got = lm(ids).logits, converted(ids).logits
    assert torch.equal(got, want), (got - want).abs().max()  # the same matmul: bitwise equal


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_equals_multihead_attention(batch_first, causal):
    torch.manual_seed(0)
    block = nn.Sequential(nn.MultiheadAttention(64, 4, batch_first=batch_first)).eval()
    mha = block[0]
    x = torch.randn(2, 7, 64) if batch_first else torch.randn(7, 2, 64)
    mask = torch.full((7, 7), float("-inf")).triu(1) if causal else None
    with torch.inference_mode():
        want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        assert quant.linear_attention(block) == 1
        got, weights = block[0](x, x, x, need_weights=False, attn_mask=mask)
    assert weights is None and not isinstance(block[0], nn.MultiheadAttention)
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()


# ------------------------------------------------------------------------------------------ int8 models
def test_int8_quantises_clips_image_tower_and_the_language_model_and_still_captions(fixture_files, tmp_path):
    from transformers.pytorch_utils import Conv1D

    manager = _manager(fixture_files, tmp_path, "int8")
    assert manager.dtype == torch.float32 and manager.quantized == ("clip", "lm")
    model = fixture_files["clip_prefix_pt"]
    results = caption_images(manager, model, _images(3), decoding={"max_new_tokens": 6})
    assert [r.caption for r in results] and all(isinstance(r.caption, str) for r in results)
    captioner = manager.captioner(fixture_files["clip_prefix_pt"])
    clip = manager.clip(captioner.clip_spec)
    visual = list(clip.model.visual.modules())
    assert any(isinstance(m, DYNAMIC_LINEAR) for m in visual)
    assert not any(isinstance(m, (nn.MultiheadAttention, nn.Linear)) for m in visual)
    # the text tower stays fp32 (SBG's cached label features are the same in every precision)
    assert not any(isinstance(m, DYNAMIC_LINEAR) for m in clip.model.transformer.modules())
    lm_modules = list(captioner.model.gpt.modules())
    assert any(isinstance(m, DYNAMIC_LINEAR) for m in lm_modules)
    assert not any(isinstance(m, (Conv1D, nn.Linear)) for m in lm_modules)
    assert isinstance(captioner.model.clip_project.model[0], nn.Linear)  # the mapper is left alone
    assert manager.loaded()["dtype"] == "int8"


def test_int8_image_features_stay_close_to_fp32(fixture_files, tmp_path):
    images = _images(4)
    feats = {}
    for dtype in ("fp32", "int8-clip"):
        manager = _manager(fixture_files, tmp_path, dtype)
        captioner = manager.captioner(fixture_files["clip_prefix_pt"])
        feats[dtype] = manager.clip(captioner.clip_spec).encode_images(images)
    cosine = torch.nn.functional.cosine_similarity(feats["fp32"], feats["int8-clip"])
    assert feats["int8-clip"].dtype == torch.float32 and cosine.min() > 0.95, cosine


def test_int8_clip_leaves_the_language_model_in_fp32(fixture_files, tmp_path):
    manager = _manager(fixture_files, tmp_path, "int8-clip")
    captioner = manager.captioner(fixture_files["clip_prefix_pt"])
    assert manager.quantized == ("clip",) and manager.loaded()["dtype"] == "int8-clip"
    assert not any(isinstance(m, DYNAMIC_LINEAR) for m in captioner.model.gpt.modules())
    visual = manager.clip(captioner.clip_spec).model.visual
    assert any(isinstance(m, DYNAMIC_LINEAR) for m in visual.modules())


def test_int8_sbg_writes_candidates(fixture_files, tmp_path):
    from icg.sbg.captioner import SBG_DECODING
    from tests.test_sbg_captioner import write_sbg_models

    files = write_sbg_models(tmp_path / "sbg")
    manager = ModelManager(
        RuntimeConfig(
            device="cpu",
            dtype="int8",
            models_dir=str(files["models"]),
            clip=str(files["clip_dir"]),
            tokenizer=str(files["tokenizer_dir"]),
        )
    )
    captioner = manager.captioner(str(files["sbg_generator_dir"]))
    assert any(isinstance(m, DYNAMIC_LINEAR) for m in captioner.lm.modules())
    result = captioner.caption_keywords("dog", SBG_DECODING.replace(seed=0, max_new_tokens=4))
    assert result.candidates


# ------------------------------------------------------------------------------------------ policy
class FakeCuda:
    type = "cuda"

    def __str__(self) -> str:
        return "cuda:0"


@pytest.mark.parametrize("precision", ["int8", "int8-clip"])
def test_int8_on_cuda_is_a_one_line_error(precision):
    with pytest.raises(ConfigError) as err:
        resolve_precision(FakeCuda(), precision)
    message = str(err.value)
    assert "\n" not in message and "cuda:0" in message
    assert f"dtype {precision!r} runs on the CPU only" in message


def test_auto_never_picks_bf16_or_int8():
    assert resolve_precision(torch.device("cpu"), "auto") == (torch.float32, ())
    assert resolve_precision(FakeCuda(), "auto") == (torch.float16, ())
    assert resolve_precision(torch.device("cpu"), None) == (torch.float32, ())


def test_bf16_on_a_cpu_without_native_support_is_logged_as_emulated(monkeypatch, caplog):
    monkeypatch.setattr(quant, "native_bf16", lambda flags=None: False)
    with caplog.at_level(logging.WARNING, logger="icg.quant"):
        assert resolve_precision(torch.device("cpu"), "bf16") == (torch.bfloat16, ())
    assert "emulated and slower than fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(quant, "native_bf16", lambda flags=None: True)
    with caplog.at_level(logging.WARNING, logger="icg.quant"):
        resolve_precision(torch.device("cpu"), "bf16")
    assert "emulated" not in caplog.text


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n", encoding="utf-8")
    assert quant.cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "fma"}
    assert not quant.native_bf16(quant.cpu_flags(cpuinfo))
    assert quant.native_bf16({"avx2", "avx512_bf16"}) and quant.native_bf16({"amx_bf16"})
    assert quant.cpu_flags(tmp_path / "missing") == set()


# ------------------------------------------------------------------------------------------ front ends
def test_the_cli_takes_every_precision_and_refuses_others_naming_the_flag(capsys):
    for name in RUNTIME["dtype"].choices:
        assert build_parser().parse_args(["caption", "x.png", "--dtype", name]).dtype == name
    assert build_parser().parse_args(["caption", "x.png"]).dtype is None  # the manager's auto
    assert build_parser().parse_args(["app", "--dtype", "int8"]).dtype == "int8"  # the standalone app
    with pytest.raises(SystemExit):
        build_parser().parse_args(["caption", "x.png", "--dtype", "int4"])
    err = capsys.readouterr().err
    assert "--dtype" in err and "int4" in err and "int8-clip" in err


def test_the_option_refuses_an_unknown_precision_by_name():
    with pytest.raises(ConfigError, match="dtype must be one of auto, fp32, fp16, bf16, int8, int8-clip"):
        RUNTIME["dtype"].check("int4")


def test_the_api_reports_the_servers_precision_and_refuses_it_per_request(fixture_files, tmp_path):
    """Models load once per process, so the precision is the server's setting: ``GET /models`` shows
    it, and a request that tries to choose one is refused, naming the field."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from icg.api import mount_api
    from icg.jobs import JobRegistry
    from icg.ui.service import CaptionService
    from tests.webui_support import png_base64

    prefix = fixture_files["clip_prefix_pt"]
    service = CaptionService(_manager(fixture_files, tmp_path, "int8"), models=[prefix], default_model=prefix)
    app = FastAPI()
    mount_api(app, service, jobs=JobRegistry())
    client = TestClient(app)
    caption = client.post("/icg/v1/caption", json={"image": png_base64(), "decoding": {"max_new_tokens": 4}})
    assert caption.status_code == 200 and caption.json()["caption"]
    assert client.get("/icg/v1/models").json()["loaded"]["dtype"] == "int8"
    refused = client.post("/icg/v1/caption", json={"image": png_base64(), "dtype": "fp32"})
    assert refused.status_code == 422 and "dtype" in refused.text
