"""Sane bounds for the sizes a model's config states, checked before a model is built.

A ``config.json`` is data from a file a user downloaded or typed: a ``vocab_size`` of 1e12 or an
``n_layer`` of 100000 would make torch allocate without end, a negative or fractional size gives a raw
traceback deep inside torch. ``check_gpt2_config`` (the GPT-2 of CLIP-prefix and SBG models, and the one
``icg train`` starts from: ``--lm-config``, ``--lm FOLDER``, ``--init``; ``check_gpt2_folder`` for a
folder), ``check_mapper_config`` (the CLIP-prefix mapper) and ``check_open_clip_config`` (a local CLIP's
open_clip model config) refuse such values with one ``CheckpointError`` naming the file and the field.
The bounds are far above every published model (GPT-2 XL: 1600 wide, 48 layers, 50257 tokens, 1024
positions; 1.5 billion parameters; open_clip's ViT-bigG-14: 2.5 billion) and far below what a machine
could hold.

Imports nothing heavy (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from icg.errors import CheckpointError

#: GPT-2 config fields: (smallest, largest); ``n_inner`` may also be null (4 x the width).
GPT2_BOUNDS: Mapping[str, tuple[int, int]] = {
    "vocab_size": (1, 1_000_000),
    "n_positions": (1, 65_536),
    "n_embd": (1, 16_384),
    "n_layer": (1, 256),
    "n_head": (1, 256),
    "n_inner": (1, 65_536),
}
#: Mapper config fields (the ones that are set; ``None`` means "not this kind of mapper").
MAPPER_BOUNDS: Mapping[str, tuple[int, int]] = {
    "clip_dim": (1, 16_384),
    "embed_dim": (1, 16_384),
    "prefix_length": (1, 1_024),
    "hidden_dim": (1, 65_536),
    "clip_length": (1, 1_024),
    "num_layers": (1, 128),
    "num_heads": (1, 256),
}
#: open_clip model config fields (``embed_dim``, ``vision_cfg.*``, ``text_cfg.*``) that are set; a
#: ``layers`` list (the ResNet towers) is checked item by item, an ``image_size`` pair likewise.
OPEN_CLIP_BOUNDS: Mapping[str, tuple[int, int]] = {
    "embed_dim": (1, 16_384),
    "vision_cfg.image_size": (1, 4_096),
    "vision_cfg.layers": (1, 256),
    "vision_cfg.width": (1, 16_384),
    "vision_cfg.head_width": (1, 16_384),
    "vision_cfg.patch_size": (1, 1_024),
    "text_cfg.context_length": (1, 4_096),
    "text_cfg.vocab_size": (1, 1_000_000),
    "text_cfg.width": (1, 16_384),
    "text_cfg.heads": (1, 256),
    "text_cfg.layers": (1, 256),
}
#: The largest GPT-2 ICG builds (parameters); GPT-2 XL has 1.5 billion.
MAX_LM_PARAMETERS = 4_000_000_000
#: The largest CLIP ICG builds from a config (parameters, both towers); ViT-bigG-14 has 2.5 billion.
MAX_CLIP_PARAMETERS = 10_000_000_000
_REQUIRED_GPT2 = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def check_size(value: Any, name: str, bounds: tuple[int, int], where: str) -> int:
    """``value`` as a whole number within ``bounds``; ``CheckpointError`` naming ``where`` and ``name``."""
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{where}: {name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise CheckpointError(f"{where}: {name} must be {low} to {high}, not {value}")
    return value


def check_gpt2_config(config: Any, where: str) -> None:
    """Refuse a GPT-2 ``config`` (a ``config.json`` as a dict) whose sizes are missing, not whole
    numbers, out of ``GPT2_BOUNDS``, inconsistent (heads that do not divide the width) or add up to more
    than ``MAX_LM_PARAMETERS``."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: a GPT-2 config must be a JSON object, not {type(config).__name__}")
    missing = [name for name in _REQUIRED_GPT2 if config.get(name) is None]
    if missing:
        raise CheckpointError(f"{where}: GPT-2 config without {', '.join(missing)}")
    sizes = {
        name: check_size(config[name], name, bounds, where)
        for name, bounds in GPT2_BOUNDS.items()
        if config.get(name) is not None
    }
    width, heads = sizes["n_embd"], sizes["n_head"]
    if width % heads:
        raise CheckpointError(f"{where}: n_head {heads} does not divide n_embd {width}")
    inner = sizes.get("n_inner", 4 * width)
    per_layer = 4 * width * width + 2 * width * inner
    parameters = (sizes["vocab_size"] + sizes["n_positions"]) * width + sizes["n_layer"] * per_layer
    if parameters > MAX_LM_PARAMETERS:
        raise CheckpointError(
            f"{where}: a GPT-2 of {parameters / 1e9:.1f} billion parameters (n_layer {sizes['n_layer']}, "
            f"n_embd {width}, vocab_size {sizes['vocab_size']}) is larger than ICG builds "
            f"(at most {MAX_LM_PARAMETERS / 1e9:.0f} billion)"
        )


def check_mapper_config(mapper: Any, where: str) -> None:
    """Refuse a mapper config (a ``MapperConfig``) whose set sizes are not whole numbers within
    ``MAPPER_BOUNDS``."""
    for name, bounds in MAPPER_BOUNDS.items():
        value = getattr(mapper, name, None)
        if value is not None:
            check_size(value, f"mapper.{name}", bounds, where)


def check_gpt2_folder(folder: Any) -> None:
    """``check_gpt2_config`` on the ``config.json`` of a Hugging Face GPT-2 ``folder``, when it has one
    (the loader reports a missing one in its own words)."""
    from pathlib import Path

    from icg.captioners.kinds import read_json

    config = Path(folder) / "config.json"
    if config.is_file():
        check_gpt2_config(read_json(config), str(config))


def check_open_clip_config(config: Any, where: str) -> None:
    """Refuse an open_clip model config (a dict) whose set sizes are not whole numbers within
    ``OPEN_CLIP_BOUNDS``, or whose towers add up to more than ``MAX_CLIP_PARAMETERS``."""
    if not isinstance(config, Mapping):
        kind = type(config).__name__
        raise CheckpointError(f"{where}: an open_clip config must be a JSON object, not {kind}")
    sizes: dict[str, int] = {}
    for field, bounds in OPEN_CLIP_BOUNDS.items():
        section, _, name = field.rpartition(".")
        part = config.get(section) if section else config
        if section and not isinstance(part, Mapping):
            raise CheckpointError(f"{where}: {section} must be a JSON object, not {part!r}")
        value = part.get(name)
        if value is None:
            continue
        if isinstance(value, list) and name in ("layers", "image_size"):
            if not value:
                raise CheckpointError(f"{where}: {field} must not be empty")
            items = [check_size(v, f"{field}[{i}]", bounds, where) for i, v in enumerate(value)]
            sizes[field] = sum(items) if name == "layers" else max(items)
        else:
            sizes[field] = check_size(value, field, bounds, where)
    ratio = config["vision_cfg"].get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
        raise CheckpointError(
            f"{where}: vision_cfg.mlp_ratio must be a number above 0 and at most 64, not {ratio!r}"
        )
    parameters = 0
    for tower, mlp in (("vision_cfg", ratio), ("text_cfg", 4.0)):
        width = sizes.get(f"{tower}.width", 0)
        parameters += sizes.get(f"{tower}.layers", 0) * int((4 + 2 * mlp) * width * width)
    parameters += sizes.get("text_cfg.vocab_size", 0) * sizes.get("text_cfg.width", 0)
    if parameters > MAX_CLIP_PARAMETERS:
        raise CheckpointError(
            f"{where}: a CLIP of about {parameters / 1e9:.0f} billion parameters is larger than ICG builds "
            f"(at most {MAX_CLIP_PARAMETERS / 1e9:.0f} billion)"
        )
