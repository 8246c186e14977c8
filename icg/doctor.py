"""``python -m icg doctor``: what is installed, where models live, and a smoke caption on tiny models."""

from __future__ import annotations

import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TextIO

from icg.options import DEFAULT_MODEL

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
    """Write tiny random models in ICG's file formats to a temporary models folder and caption a
    generated image through what ``icg caption`` uses: the model manager (loading a CLIP-prefix
    checkpoint, the CLIP and the tokenizer from files) and the captioning pipeline.

    Returns (caption, seconds)."""
    import numpy as np
    import torch
    from PIL import Image

    from icg.models.manager import ModelManager, RuntimeConfig
    from icg.options import DECODING
    from icg.pipeline import caption_images
    from icg.tiny import tiny_clip_spec, tiny_prefix_state, tiny_tokenizer

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="icg-doctor-") as tmp:
        root = Path(tmp)
        tiny_clip_spec(root / "clip")
        tokenizer = tiny_tokenizer(root / "tokenizer")
        checkpoint = root / "tiny-prefix.pt"
        torch.save(tiny_prefix_state(tokenizer), checkpoint)
        runtime = RuntimeConfig(
            device=device,
            dtype=dtype,
            models_dir=str(root / "models"),
            clip=str(root / "clip"),
            tokenizer=str(root / "tokenizer"),
        )
        manager = ModelManager(runtime)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
        decoding = {"max_new_tokens": 12, **DECODING.check({"strategy": "greedy"})}
        try:
            (result,) = caption_images(manager, str(checkpoint), [image], decoding=decoding)
        finally:
            manager.unload()
    return result.caption, time.perf_counter() - start


def _readable(text: str) -> bool:
    return all(ch.isprintable() and ch != "\ufffd" for ch in text)


def run_doctor(args, out: TextIO) -> int:
    from icg.__version__ import __version__
    from icg.devices import resolve_device
    from icg.models.inventory import inventory, supplied_kinds
    from icg.models.manager import resolve_runtime_dtype
    from icg.models.paths import models_dir

    def say(line: str = "") -> None:
        out.write(line + "\n")

    say(f"icg {__version__} on Python {platform.python_version()} ({platform.system()} {platform.machine()})")
    for name, version in package_versions().items():
        say(f"  {name:<16} {version or 'not installed'}")
    device = resolve_device(args.device)
    dtype = resolve_runtime_dtype(device, args.dtype)  # int8 precisions smoke-test their fp32 base
    import torch

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    say(f"device: {device}{gpu}, dtype: {str(dtype).replace('torch.', '')}")
    root = models_dir(args.models_dir)
    say(f"models folder: {root}{'' if root.is_dir() else ' (does not exist yet)'}")
    rows = inventory(root, supplied=supplied_kinds(args))  # --clip / --tokenizer supply those
    for row in rows:
        say(f"  {row.id:<28} {'present' if row.installed else 'missing'}")
    try:
        caption, seconds = smoke_caption(device, dtype)
    except Exception as err:  # noqa: BLE001 - the doctor reports any failure instead of crashing
        say(f"smoke caption: FAILED ({type(err).__name__}: {err})")
        return 1
    shown = f": {caption[:60]!r}" if _readable(caption) else ""
    say(
        f"smoke caption on tiny random models: ok in {seconds:.1f} s (image -> CLIP -> caption, "
        f"{len(caption)} characters{shown}; random weights write no real words)"
    )
    default = next((row for row in rows if row.id == DEFAULT_MODEL), None)
    if default is not None and not default.installed:
        folder = f" --models-dir {root}" if args.models_dir else ""
        say(f"to caption real images, download the models: python -m icg download {DEFAULT_MODEL}{folder}")
    return 0
