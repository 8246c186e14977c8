"""The ``clip-prefix`` kind: how a CLIP-prefix model is detected, described, loaded, imported and
converted (``icg.captioners.prefix`` holds the model itself; it is imported only when needed).

Formats: the ICG folder (``config.json`` with ``format: icg-clip-prefix`` + ``model.safetensors``) and
the predecessor's torch ``state_dict`` (``gpt.*`` + ``clip_project.*`` tensors, read with
``torch.load(weights_only=True)``), which import and download convert once into the folder format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from icg.captioners.kinds import (
    Conversion,
    ImportJob,
    ModelKind,
    Probe,
    folder_config,
    read_json,
    read_state,
    tensor_shapes,
)
from icg.errors import CheckpointError, ConfigError, IcgError

FORMAT = "icg-clip-prefix"
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
FILES = ("config.json", "model.safetensors")


def _detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix in STATE_SUFFIXES
    config = folder_config(path)
    return config is not None and config.get("format") == FORMAT


def _describe(folder: Path) -> str:
    from icg.models.loading import DEFAULT_CLIP, clip_label

    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: config.json without model.safetensors")
    data = read_json(folder / "config.json")
    mapper, lm = data.get("mapper") or {}, data.get("lm") or {}
    return (
        f"CLIP-prefix ({mapper.get('kind', '?')} mapper, GPT-2 {lm.get('n_layer', '?')} layers, "
        f"CLIP {clip_label(data.get('clip') or DEFAULT_CLIP)})"
    )


def _load(name: str, resolved, manager):
    from icg.captioners.prefix import PrefixCaptioner, load_prefix_model
    from icg.config import DecodingConfig, from_dict
    from icg.models.loading import DEFAULT_CLIP, load_tokenizer, resolve_clip

    entry = resolved.entry
    model, cfg = load_prefix_model(resolved.path)
    if entry is not None:  # registry facts win over the stored config
        cfg = dataclasses.replace(
            cfg,
            normalize=entry.normalize,
            clip=dict(entry.clip or DEFAULT_CLIP),
            decoding={**cfg.decoding, **dict(entry.decoding)},
        )
    model.to(manager.device)
    model.gpt.to(manager.dtype)
    tokenizer = load_tokenizer(cfg.tokenizer, manager)
    vocab = model.gpt.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise CheckpointError(
            f"{resolved.path}: the tokenizer has {len(tokenizer)} tokens but the model's GPT-2 only "
            f"{vocab}: wrong tokenizer for this model"
        )
    try:
        decoding = from_dict(DecodingConfig, cfg.decoding, where=f"{name} decoding defaults")
    except IcgError as err:
        raise CheckpointError(f"{resolved.path}: {err}") from err
    return PrefixCaptioner(
        model,
        tokenizer,
        model_id=entry.id if entry else name,
        normalize=cfg.normalize,
        decoding=decoding,
        clip_spec=resolve_clip(cfg.clip, manager),
    )


def _recognise(paths: Sequence[Path], probe: Probe) -> bool:
    if len(paths) != 1:
        return False
    path = paths[0]
    if path.is_dir():
        return _detect(path)
    return path.suffix in STATE_SUFFIXES and any(
        k.startswith(("gpt.", "clip_project.")) for k in probe.tensor_names(path)
    )


# ------------------------------------------------------------------------------------------ conversion
def convert_prefix_state(
    state: dict[str, Any],
    out: Path,
    *,
    source: str,
    base=None,
    clip: Mapping[str, Any] | None,
    normalize: bool,
    decoding: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    n_head: int | None = None,
    mapper_heads: int | None = None,
    prefix_length: int | None = None,
) -> tuple[Any, Any]:
    """Check a CLIP-prefix state_dict against its facts and write ``config.json`` + ``model.safetensors``
    into ``out``. Returns ``(model, config)``.

    ``base``: a ``PrefixModelConfig`` read from an ICG folder (its GPT-2 settings are kept); else the
    architecture comes from the tensor shapes. ``clip`` None: ViT-L-14/openai for a 768-dim mapper input,
    otherwise an error asking for the CLIP. Refused with a message naming the mismatch: a mapper whose
    input is not the CLIP's feature width, whose output is not a multiple of the GPT-2 width, or whose
    prefix length differs from ``prefix_length``; GPT-2 tensors that do not fit the inferred model."""
    from icg.captioners.prefix import config_from_state, model_from_state, save_prefix_model
    from icg.models.importer import clip_feature_dim, full_clip
    from icg.models.loading import DEFAULT_CLIP, DEFAULT_TOKENIZER, clip_label

    if base is None:
        kwargs: dict[str, Any] = {"source": source, "n_head": n_head}
        if mapper_heads is not None:
            kwargs["mapper_heads"] = mapper_heads
        cfg = config_from_state(state, **kwargs)
    else:
        cfg = base
    width, heads = cfg.lm["n_embd"], cfg.lm["n_head"]
    if width % heads:
        raise ConfigError(f"{source}: {heads} attention heads do not divide the GPT-2 width {width}")
    mapper = cfg.mapper
    if mapper.embed_dim != width:
        raise CheckpointError(f"{source}: mapper output width {mapper.embed_dim} vs the GPT-2 width {width}")
    if clip is None:
        if mapper.clip_dim != 768:
            raise ConfigError(
                f"{source}: the mapper takes {mapper.clip_dim}-dim CLIP features; name the CLIP it was "
                "trained on (--clip): ARCH/PRETRAINED, e.g. ViT-B-32/openai for the original ClipCap "
                "checkpoints (whose features are also raw: --no-normalize), or a CLIP folder"
            )
        clip = dict(DEFAULT_CLIP)
    clip = full_clip(clip)
    feature_dim = clip_feature_dim(clip)
    if feature_dim is not None and feature_dim != mapper.clip_dim:
        raise CheckpointError(
            f"{source}: mapper input {mapper.clip_dim} vs the CLIP's {feature_dim} ({clip_label(clip)}): "
            "the checkpoint was trained on features of another CLIP"
        )
    if prefix_length is not None and mapper.prefix_length != prefix_length:
        raise CheckpointError(
            f"{source}: the mapper makes {mapper.prefix_length} prefix tokens of GPT-2 width {width}, "
            f"the model is registered with {prefix_length}"
        )
    cfg = dataclasses.replace(
        cfg,
        clip=clip,
        normalize=normalize,
        decoding=dict(decoding or {}),
        tokenizer=tokenizer or DEFAULT_TOKENIZER,
    )
    model = model_from_state(state, cfg, source=source)
    save_prefix_model(model, cfg, out)
    written = tensor_shapes(out / "model.safetensors")
    expected = {k: tuple(v.shape) for k, v in state.items() if k in written}
    if written != expected:
        raise CheckpointError(f"{out}: the converted weights do not match {source}")
    return model, cfg


def _registry_facts(entry) -> dict[str, Any]:
    """The ``convert_prefix_state`` facts a registry entry fixes."""
    from icg.models.loading import DEFAULT_CLIP, DEFAULT_TOKENIZER, required_of_kind

    return {
        "clip": dict(entry.clip or DEFAULT_CLIP),
        "normalize": entry.normalize,
        "decoding": dict(entry.decoding),
        "tokenizer": required_of_kind(entry, "tokenizer", DEFAULT_TOKENIZER),
        "prefix_length": entry.prefix_length,
    }


def _convert(entry, folder: Path, out: Path) -> None:
    src = folder / entry.convert_from[0]
    convert_prefix_state(read_state(src), out, source=str(src), **_registry_facts(entry))


def _import(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    from icg.captioners.prefix import PrefixModelConfig
    from icg.models.importer import single_source, tokenizer_ref
    from icg.models.loading import clip_label, parse_clip

    src = single_source(paths, "clip-prefix")
    base = None
    if src.is_dir():
        config, weights = src / "config.json", src / "model.safetensors"
        if not config.is_file() or not weights.is_file():
            raise CheckpointError(f"{src}: a CLIP-prefix folder needs config.json and model.safetensors")
        base = PrefixModelConfig.from_json_dict(read_json(config), where=str(config))
        state = read_state(weights)
    elif src.suffix in STATE_SUFFIXES:
        state = read_state(src)
    else:
        raise ConfigError(f"{src}: a CLIP-prefix checkpoint is a {', '.join(STATE_SUFFIXES)} file")
    if job.entry is not None:
        facts = _registry_facts(job.entry)
    else:
        facts = {
            "clip": parse_clip(job.clip) if job.clip else (base.clip if base is not None else None),
            "normalize": job.normalize if job.normalize is not None else (base.normalize if base else True),
            "decoding": dict(base.decoding) if base is not None else {},
            "tokenizer": base.tokenizer if base is not None else None,
        }
    if job.tokenizer:
        facts["tokenizer"] = tokenizer_ref(job.tokenizer)
    _model, cfg = convert_prefix_state(
        state,
        out,
        source=str(src),
        base=base,
        n_head=job.n_head,
        mapper_heads=job.mapper_heads,
        **facts,
    )
    m = cfg.mapper
    return (
        f"CLIP-prefix: {m.kind} mapper {m.clip_dim} -> {m.prefix_length} x {m.embed_dim}, "
        f"GPT-2 {cfg.lm['n_layer']} layers x {cfg.lm['n_embd']} ({cfg.lm['n_head']} heads), "
        f"CLIP {clip_label(cfg.clip)}, features {'normalised' if cfg.normalize else 'raw'}"
    )


KIND = ModelKind(
    name="clip-prefix",
    title="CLIP-prefix",
    formats="an ICG CLIP-prefix folder or .pt state_dict",
    detect=_detect,
    describe=_describe,
    load=_load,
    recognise=_recognise,
    import_files=_import,
    convert=Conversion(outputs=FILES, inputs=None, run=_convert),
    registry_needs=("clip", "prefix_length"),
    decoding=MappingProxyType({"strategy": "greedy", "max_new_tokens": 67, "stop": "."}),
)
#: Registered by icg.captioners.kinds (BUILTIN_MODULES) on first use.
KINDS = (KIND,)
