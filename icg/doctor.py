"""``python -m icg doctor``: what is installed, where models live, and a smoke caption on tiny models."""

from __future__ import annotations

import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TextIO

PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "open_clip_torch",
    "safetensors",
    "huggingface_hub",
    "numpy",
    "Pillow",
    "gradio",
)


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def smoke_caption(device, dtype) -> tuple[str, float]:
    """Build tiny random models in a temporary folder and caption a generated image.

    Returns (caption, seconds)."""
    import numpy as np
    import torch
    from PIL import Image

    from icg.captioners.prefix import PrefixCaptioner, config_from_state, model_from_state
    from icg.clip_encoder import ClipEncoder
    from icg.config import DecodingConfig
    from icg.tiny import tiny_clip_spec, tiny_prefix_state, tiny_tokenizer

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="icg-doctor-") as tmp:
        clip = ClipEncoder.load(tiny_clip_spec(Path(tmp)), device=device, dtype=dtype)
        tokenizer = tiny_tokenizer()
        state = tiny_prefix_state(tokenizer)
        model = model_from_state(state, config_from_state(state), source="tiny model").to(device)
        model.gpt.to(dtype)
        captioner = PrefixCaptioner(
            model, tokenizer, model_id="tiny", decoding=DecodingConfig(max_new_tokens=12)
        )
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
        feats = clip.encode_images([image])
        if feats.shape != (1, clip.feature_dim) or not torch.isfinite(feats).all():
            raise RuntimeError(f"CLIP features look wrong: shape {tuple(feats.shape)}")
        result = captioner.caption_features(feats)[0]
    return result.caption, time.perf_counter() - start


def run_doctor(args, out: TextIO) -> int:
    from icg.__version__ import __version__
    from icg.devices import resolve_device, resolve_dtype
    from icg.models.inventory import inventory, supplied_kinds
    from icg.models.paths import models_dir

    def say(line: str = "") -> None:
        out.write(line + "\n")

    say(f"icg {__version__} on Python {platform.python_version()} ({platform.system()} {platform.machine()})")
    for name, version in package_versions().items():
        say(f"  {name:<16} {version or 'not installed'}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    import torch

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    say(f"device: {device}{gpu}, dtype: {str(dtype).replace('torch.', '')}")
    root = models_dir(args.models_dir)
    say(f"models folder: {root}{'' if root.is_dir() else ' (does not exist yet)'}")
    for row in inventory(root, supplied=supplied_kinds(args)):  # --clip / --tokenizer supply those
        say(f"  {row.id:<28} {'present' if row.installed else 'missing'}")
    try:
        caption, seconds = smoke_caption(device, dtype)
    except Exception as err:  # noqa: BLE001 - the doctor reports any failure instead of crashing
        say(f"smoke caption: FAILED ({type(err).__name__}: {err})")
        return 1
    say(f"smoke caption on tiny random models: ok in {seconds:.1f} s -> {caption[:60]!r}")
    say("(random weights give random words; real captions need the real models: python -m icg download ...)")
    return 0
