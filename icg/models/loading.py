"""Turn a model name (registry id or path) into loaded objects: the default factories of the manager."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.config import ClipSpec, DecodingConfig, from_dict
from icg.errors import CheckpointError, ModelNotFound

if TYPE_CHECKING:
    from icg.models.manager import ModelManager
    from icg.models.registry import ModelEntry

log = logging.getLogger(__name__)

DEFAULT_CLIP = {"arch": "ViT-L-14", "pretrained": "openai"}
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ResolvedModel:
    kind: str  # "clip-prefix" | "sbg"
    path: Path
    entry: ModelEntry | None = None


def detect_kind(path: Path) -> str:
    """What a file or folder holds, from its contents (never from its name alone)."""
    if path.is_file():
        if path.suffix in STATE_SUFFIXES:
            return "clip-prefix"
        raise CheckpointError(f"{path}: not a model file (expected one of {', '.join(STATE_SUFFIXES)})")
    config = path / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{config}: unreadable ({err})") from err
        if data.get("format") == "icg-clip-prefix":
            return "clip-prefix"
        if data.get("model_type") == "gpt2":
            return "sbg"
    raise CheckpointError(f"{path}: neither an ICG CLIP-prefix folder nor a GPT-2 (SBG) folder")


def _entry(model_id: str) -> ModelEntry | None:
    from icg.models.registry import load_registry

    return load_registry().get(model_id)


def _install(entry: ModelEntry, manager: ModelManager) -> Path:
    """The folder of an installed registry model, downloading it first when allowed."""
    from icg.models.download import download_model, present
    from icg.models.paths import model_dir

    folder = model_dir(entry, manager.models_dir)
    if not present(entry, manager.models_dir):
        if not manager.runtime.allow_download:
            raise ModelNotFound(
                f"model {entry.id!r} is not installed in {manager.models_dir}; fetch it with "
                f"`python -m icg download {entry.id}` (or import a file you have with `python -m icg import`)"
            )
        download_model(entry, manager.models_dir)
    return folder


def resolve_model(name: str, manager: ModelManager) -> ResolvedModel:
    path = Path(name).expanduser()
    if path.exists():
        return ResolvedModel(detect_kind(path), path)
    entry = _entry(name)
    if entry is None:
        local = manager.models_dir / name
        if local.is_dir():
            return ResolvedModel(detect_kind(local), local)
        raise ModelNotFound(
            f"{name!r} is neither a file, a folder, nor a known model id (see `python -m icg models`)"
        )
    if entry.kind not in ("clip-prefix", "sbg"):
        raise ModelNotFound(f"{name!r} is a {entry.kind}, not a captioning model")
    folder = _install(entry, manager)
    return ResolvedModel(entry.kind, folder, entry)


def resolve_clip(clip: Any, manager: ModelManager) -> ClipSpec:
    """A ClipSpec from an override (folder path or registry id), a config dict, or the default."""
    from icg.clip_encoder import spec_from_folder

    clip = manager.runtime.clip or clip or DEFAULT_CLIP
    if isinstance(clip, str):
        path = Path(clip).expanduser()
        if path.is_dir():
            return spec_from_folder(path)
        entry = _entry(clip)
        if entry is None or entry.kind != "clip":
            raise ModelNotFound(f"{clip!r} is neither a CLIP folder nor a CLIP model id")
        clip = dict(entry.clip or DEFAULT_CLIP)
    spec = from_dict(ClipSpec, dict(clip), where="CLIP settings")
    if spec.weights_path:
        return spec
    # A registry CLIP installed in the models folder is loaded from its file, without open_clip's download.
    from icg.models.registry import load_registry

    for entry in load_registry().values():
        if (
            entry.kind == "clip"
            and dict(entry.clip or {}).get("arch") == spec.arch
            and dict(entry.clip or {}).get("pretrained") == spec.pretrained
        ):
            folder = manager.models_dir / entry.id
            weights = [folder / f for f in entry.files if (folder / f).is_file()]
            if weights:
                return ClipSpec(
                    arch=spec.arch,
                    pretrained=spec.pretrained,
                    quick_gelu=spec.quick_gelu,
                    weights_path=str(weights[0]),
                )
            if not manager.runtime.allow_download:
                raise ModelNotFound(
                    f"CLIP {spec.arch}/{spec.pretrained} is not installed in {folder}; fetch it with "
                    f"`python -m icg download {entry.id}`"
                )
    return spec


def load_clip(spec: ClipSpec, manager: ModelManager):
    from icg.clip_encoder import ClipEncoder

    return ClipEncoder.load(
        spec, device=manager.device, dtype=manager.dtype, cache_dir=manager.models_dir / "cache" / "open_clip"
    )


def load_tokenizer(name: str | None, manager: ModelManager):
    from transformers import AutoTokenizer

    name = manager.runtime.tokenizer or name or "gpt2-tokenizer"
    path = Path(name).expanduser()
    if not path.is_dir():
        entry = _entry(name)
        if entry is None:
            raise ModelNotFound(f"tokenizer {name!r} is neither a folder nor a known tokenizer id")
        path = _install(entry, manager)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a loadable tokenizer folder ({err})") from err


def load_captioner(name: str, manager: ModelManager):
    resolved = resolve_model(name, manager)
    if resolved.kind == "clip-prefix":
        return _load_prefix(name, resolved, manager)
    from icg.sbg.captioner import load_sbg_captioner

    return load_sbg_captioner(name, resolved, manager)


def _load_prefix(name: str, resolved: ResolvedModel, manager: ModelManager):
    from icg.captioners.prefix import PrefixCaptioner, load_prefix_model

    entry = resolved.entry
    path = resolved.path
    overrides: dict[str, Any] = {}
    if entry is not None:
        overrides = {
            "normalize": entry.normalize,
            "clip": dict(entry.clip or DEFAULT_CLIP),
            "decoding": dict(entry.decoding),
        }
        converted = path / "config.json"
        if not converted.is_file():
            path = next((path / f for f in entry.files if (path / f).is_file()), path)
    model, cfg = load_prefix_model(path, **overrides) if path.is_file() else load_prefix_model(path)
    model.to(manager.device)
    model.gpt.to(manager.dtype)
    tokenizer = load_tokenizer(cfg.tokenizer, manager)
    decoding = from_dict(DecodingConfig, cfg.decoding, where=f"{name} decoding defaults")
    return PrefixCaptioner(
        model,
        tokenizer,
        model_id=entry.id if entry else name,
        normalize=cfg.normalize,
        decoding=decoding,
        clip_spec=resolve_clip(cfg.clip, manager),
    )
