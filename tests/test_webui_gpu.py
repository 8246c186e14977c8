"""The WebUI adapter's device etiquette on a real CUDA device (``-m gpu``): fp16 by default and fp32 under
``--no-half``, models back in RAM after each job unless kept in memory. Needs neither gradio nor fastapi."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.webui_support import fake_webui, fixture_files, load_script, make_manager, models_folder

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("flags", [{}, {"no_half": True}])
def test_cuda_models_leave_the_gpu_after_each_job_unless_kept(flags, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    files = fixture_files()
    models_dir = models_folder(tmp_path / "models", files)
    with fake_webui(icg_models_dir=str(models_dir), icg_offline=True, **flags):
        from modules import devices, script_callbacks, shared

        from icg.webui import service as webui

        load_script("icg_tab")  # registers the callbacks; the settings UI (gradio) is not needed here
        assert script_callbacks.callback_map["callbacks_ui_settings"]
        shared.opts.add_option("icg_keep_models_in_memory", shared.OptionInfo(False, "keep"))
        shared.opts.add_option("icg_max_new_tokens", shared.OptionInfo(4, "tokens"))
        devices.device_interrogate = torch.device("cuda")
        runtime = webui.runtime_config()
        manager = make_manager(files, models_dir, device=runtime.device, dtype=runtime.dtype)
        service = webui.WebUIService(manager, models=(files["clip_prefix_pt"],))
        webui.set_service(service)
        try:
            expected = torch.float32 if flags.get("no_half") else torch.float16
            assert manager.device.type == "cuda" and manager.dtype == expected
            image = Image.new("RGB", (64, 48), (30, 60, 90))
            for dtype in (torch.float16, torch.float32):  # cuBLAS workspaces come from the same allocator
                x = torch.ones(64, 64, device="cuda", dtype=dtype)
                (x @ x).sum().item()
            del x
            before = torch.cuda.memory_allocated()
            assert service.caption(image, files["clip_prefix_pt"]).caption
            assert manager.loaded()["offloaded"] is True
            assert _cuda_tensors(torch) == [], "left on the GPU after the job"
            # only library workspaces may remain (cuBLAS/cuDNN take a few MiB on first use of a kernel)
            assert torch.cuda.memory_allocated() - before < 8 * 2**20
            shared.opts.icg_keep_models_in_memory = True
            assert service.caption(image, files["clip_prefix_pt"]).caption
            assert manager.loaded()["offloaded"] is False
            weights = _cuda_tensors(torch)
            assert len(weights) > 10 and {d for _, d in weights} >= {str(expected)}  # kept on the GPU
        finally:
            service.unload()
            webui.set_service(None)


def _cuda_tensors(torch) -> list[tuple]:
    """Shapes and dtypes of the CUDA tensors still referenced anywhere (for the failure message)."""
    import gc
    import warnings

    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and obj.is_cuda:
                    found.append((tuple(obj.shape), str(obj.dtype)))
            except Exception:  # noqa: BLE001 - objects that refuse inspection
                continue
    return found
