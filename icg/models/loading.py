"""Turn a model name into loaded objects: the default factories of the model manager.

A captioner name resolves, in this order, to:

1. an existing path: a predecessor CLIP-prefix ``.pt`` state_dict, an ICG CLIP-prefix folder
   (``config.json`` + ``model.safetensors``) or a Hugging Face GPT-2 folder (an SBG generator);
2. a registry id: its folder in the models folder. A model that is not installed yet is installed on
   demand: originals found in its folder are converted, files already in the Hugging Face cache are
   copied in, and anything else is downloaded only when ``RuntimeConfig.allow_download`` is set (else
   ``ModelNotFound`` names the ``python -m icg download`` command to run);
3. a user's own model: ``<models folder>/<name>`` holding one of the folder formats above (what
   ``python -m icg import`` writes, or what training saved).

Registry facts (CLIP, feature normalisation, decoding defaults) win over what a model folder says.
CLIPs named by architecture + pretrained tag that the registry knows load from the registry's file in the
models folder (no open_clip download); other CLIPs are open_clip's business.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.config import ClipSpec, DecodingConfig, from_dict
from icg.errors import CheckpointError, ConfigError, IcgError, ModelNotFound

if TYPE_CHECKING:
    from icg.models.manager import ModelManager
    from icg.models.registry import ModelEntry

log = logging.getLogger(__name__)

DEFAULT_CLIP = {"arch": "ViT-L-14", "pretrained": "openai"}
DEFAULT_TOKENIZER = "gpt2-tokenizer"
DEFAULT_VOCABULARY = "sbg-vocabulary"
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CAPTIONER_KINDS = ("clip-prefix", "sbg")

PREFIX_FORMAT = "icg-clip-prefix"
VOCABULARY_FILE = "vocabulary.json"
SBG_META_FILE = "icg.json"
SBG_META_FORMAT = "icg-sbg"
SBG_META_VERSION = 1
_SBG_META_KEYS = frozenset({"format", "version", "clip", "normalize", "vocabulary", "tokenizer", "decoding"})
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a captioner's files are, what kind it is, and (SBG) the settings it runs with.

    ``meta`` for ``sbg``: ``clip`` (ClipSpec fields), ``normalize``, ``vocabulary`` and ``tokenizer``
    (a registry id or a path, ready for ``resolve_vocabulary`` / ``load_tokenizer``), ``decoding``.
    """

    kind: str  # "clip-prefix" | "sbg"
    path: Path
    entry: ModelEntry | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ detection
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def detect_kind(path: Path) -> str:
    """What a file or folder holds, from its contents (never from its name alone):
    ``clip-prefix``, ``sbg`` or ``sbg-vocabulary``."""
    path = Path(path)
    if path.is_file():
        if path.suffix in STATE_SUFFIXES:
            return "clip-prefix"
        if path.suffix == ".json" and _read_json(path).get("format") == "icg-sbg-vocabulary":
            return "sbg-vocabulary"
        raise CheckpointError(f"{path}: not a model file (expected one of {', '.join(STATE_SUFFIXES)})")
    config = path / "config.json"
    if config.is_file():
        data = _read_json(config)
        if not isinstance(data, dict):
            raise CheckpointError(f"{config}: not a model config (a JSON object)")
        if data.get("format") == PREFIX_FORMAT:
            return "clip-prefix"
        if data.get("model_type") == "gpt2":
            return "sbg"
    if (path / VOCABULARY_FILE).is_file():
        return "sbg-vocabulary"
    raise CheckpointError(
        f"{path}: neither an ICG CLIP-prefix folder, a GPT-2 (SBG) folder nor an SBG vocabulary folder"
    )


def describe_folder(folder: Path) -> tuple[str, str]:
    """``(kind, one-line description)`` of a complete model folder; ``CheckpointError`` when it is not
    one (a config without its weights, an unreadable config, an unknown layout)."""
    folder = Path(folder)
    kind = detect_kind(folder)
    if kind == "clip-prefix":
        if not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"{folder}: config.json without model.safetensors")
        data = _read_json(folder / "config.json")
        mapper = data.get("mapper") or {}
        clip = data.get("clip") or DEFAULT_CLIP
        lm = data.get("lm") or {}
        return kind, (
            f"CLIP-prefix ({mapper.get('kind', '?')} mapper, GPT-2 {lm.get('n_layer', '?')} layers, "
            f"CLIP {clip_label(clip)})"
        )
    if kind == "sbg":
        if not any((folder / name).is_file() for name in _HF_WEIGHTS):
            raise CheckpointError(f"{folder}: GPT-2 config.json without model.safetensors")
        meta = sbg_meta(folder, None)
        return kind, f"SBG generator (vocabulary {meta['vocabulary']}, CLIP {clip_label(meta['clip'])})"
    data = _read_json(folder / VOCABULARY_FILE)
    if not isinstance(data, dict) or data.get("format") != "icg-sbg-vocabulary":
        raise CheckpointError(f"{folder / VOCABULARY_FILE}: not an ICG SBG vocabulary")
    return kind, f"SBG vocabulary ({len(data.get('labels') or [])} keywords)"


def clip_label(clip: Mapping[str, Any] | None) -> str:
    """``ViT-L-14/openai`` or the local folder of a CLIP given by files."""
    clip = clip or DEFAULT_CLIP
    if clip.get("weights_path"):
        return str(Path(str(clip["weights_path"])).parent)
    return f"{clip.get('arch')}/{clip.get('pretrained')}"


# ------------------------------------------------------------------------------------------ registry
def _entry(model_id: str) -> ModelEntry | None:
    from icg.models.registry import load_registry

    return load_registry().get(model_id)


def required_of_kind(entry: ModelEntry | None, kind: str, default: str) -> str:
    """The id of the first model of ``kind`` that ``entry`` requires (``default`` when none)."""
    if entry is None:
        return default
    from icg.models.registry import load_registry

    entries = load_registry()
    return next((r for r in entry.requires if r in entries and entries[r].kind == kind), default)


def _install(entry: ModelEntry, manager: ModelManager) -> Path:
    """The folder of an installed registry model, installing it first where that needs no permission
    (originals to convert, the Hugging Face cache) or downloads are allowed."""
    from icg.errors import DownloadError
    from icg.models.download import download_model, manual_instructions, present, ready_to_convert
    from icg.models.paths import model_dir

    root = manager.models_dir
    folder = model_dir(entry, root)
    if present(entry, root):
        return folder
    allowed = manager.runtime.allow_download
    if ready_to_convert(entry, root) or allowed:
        download_model(entry, root, offline=None if allowed else True, progress=False)
        return folder
    try:  # offline: only what is already on this machine (the Hugging Face cache)
        download_model(entry, root, offline=True, progress=False)
        return folder
    except DownloadError:
        pass
    if entry.manual_only:
        how = manual_instructions(entry, root)
    else:
        how = (
            f"fetch it with `python -m icg download {entry.id}` "
            f"(or import a copy you have with `python -m icg import FILE --as {entry.id}`)"
        )
    raise ModelNotFound(f"model {entry.id!r} ({entry.display_name}) is not installed in {root}; {how}")


# ------------------------------------------------------------------------------------------ names
def resolve_model(name: str, manager: ModelManager) -> ResolvedModel:
    """A captioner name -> its kind, its files and (SBG) its settings; see the module docstring."""
    path = Path(name).expanduser()
    if path.exists():
        return _resolved(detect_kind(path), path, None)
    entry = _entry(name)
    if entry is not None:
        if entry.kind not in CAPTIONER_KINDS:
            raise ModelNotFound(f"{name!r} is a {entry.kind}, not a captioning model")
        return _resolved(entry.kind, _install(entry, manager), entry)
    local = manager.models_dir / name
    if name and not name.startswith(".") and local.is_dir():
        return _resolved(detect_kind(local), local, None)
    raise ModelNotFound(
        f"{name!r} is neither a file, a folder, a known model id nor a model in {manager.models_dir} "
        "(see `python -m icg models`)"
    )


def _resolved(kind: str, path: Path, entry: ModelEntry | None) -> ResolvedModel:
    if kind not in CAPTIONER_KINDS:
        raise ModelNotFound(f"{path} holds a {kind}, not a captioning model")
    meta = sbg_meta(path, entry) if kind == "sbg" else {}
    return ResolvedModel(kind, path, entry, meta)


def read_sbg_meta(folder: Path) -> dict[str, Any]:
    """The ``icg.json`` of an imported SBG folder (``{}`` when there is none), validated."""
    file = Path(folder) / SBG_META_FILE
    if not file.is_file():
        return {}
    data = _read_json(file)
    if not isinstance(data, dict) or data.get("format") != SBG_META_FORMAT:
        raise CheckpointError(f"{file}: not an ICG SBG settings file (format {SBG_META_FORMAT!r})")
    if data.get("version", 0) > SBG_META_VERSION:
        raise CheckpointError(f"{file}: version {data['version']} is newer than this ICG understands")
    unknown = sorted(set(data) - _SBG_META_KEYS)
    if unknown:
        raise CheckpointError(f"{file}: unknown setting(s) {', '.join(unknown)}")
    for key in ("vocabulary", "tokenizer"):  # relative paths are relative to the model folder
        value = data.get(key)
        if isinstance(value, str) and value.startswith(("./", "../")):
            data[key] = str((Path(folder) / value).resolve())
    return data


def sbg_meta(folder: Path, entry: ModelEntry | None) -> dict[str, Any]:
    """An SBG model's settings: registry facts > its ``icg.json`` > the defaults.

    ``tokenizer`` is the model folder itself when it ships tokenizer files and names no tokenizer."""
    from icg.models.registry import DEFAULT_DECODING

    folder = Path(folder)
    stored = read_sbg_meta(folder)
    own_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
    meta: dict[str, Any] = {
        "clip": dict(DEFAULT_CLIP),
        "normalize": True,
        "vocabulary": required_of_kind(entry, "sbg-vocabulary", DEFAULT_VOCABULARY),
        "tokenizer": str(folder) if own_tokenizer else DEFAULT_TOKENIZER,
        "decoding": dict(DEFAULT_DECODING["sbg"]),
    }
    for key in ("clip", "normalize", "vocabulary", "tokenizer"):
        if stored.get(key) is not None:
            meta[key] = stored[key]
    meta["decoding"].update(stored.get("decoding") or {})
    if entry is not None:
        meta["clip"] = dict(entry.clip or DEFAULT_CLIP)
        meta["normalize"] = entry.normalize
        meta["tokenizer"] = required_of_kind(entry, "tokenizer", meta["tokenizer"])
        meta["decoding"].update(entry.decoding)
    return meta


def resolve_vocabulary(name: str | None, manager: ModelManager) -> Path:
    """The ``vocabulary.json`` for a vocabulary name: a registry id (installed on demand), a file, a
    folder holding ``vocabulary.json``, or a user's vocabulary folder in the models folder."""
    name = name or DEFAULT_VOCABULARY
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / VOCABULARY_FILE).is_file():
            return path / VOCABULARY_FILE
        raise ModelNotFound(f"{path}: no {VOCABULARY_FILE} in this folder")
    entry = _entry(name)
    if entry is not None:
        if entry.kind != "sbg-vocabulary":
            raise ModelNotFound(f"{name!r} is a {entry.kind}, not an SBG vocabulary")
        return _install(entry, manager) / VOCABULARY_FILE
    local = manager.models_dir / name / VOCABULARY_FILE
    if local.is_file():
        return local
    raise ModelNotFound(f"vocabulary {name!r} is neither a file, a folder nor a known vocabulary id")


# ------------------------------------------------------------------------------------------ CLIP
def parse_clip(value: str) -> dict[str, Any]:
    """A ``--clip`` value as ClipSpec fields: a CLIP folder (open_clip config + weights), a registry CLIP
    id, or ``ARCH/PRETRAINED`` (``ViT-B-32/openai``). OpenAI weights get QuickGELU."""
    from icg.clip_encoder import spec_from_folder

    path = Path(value).expanduser()
    if path.is_dir():
        spec = spec_from_folder(path.resolve())
        return dataclasses.asdict(spec)
    entry = _entry(value)
    if entry is not None:
        if entry.kind != "clip":
            raise ConfigError(f"{value!r} is a {entry.kind}, not a CLIP model")
        clip = dict(entry.clip or DEFAULT_CLIP)
        return {**clip, "quick_gelu": clip.get("pretrained") == "openai"}
    arch, sep, pretrained = value.partition("/")
    if not sep or not arch or not pretrained or "/" in pretrained:
        raise ConfigError(
            f"CLIP {value!r}: give ARCH/PRETRAINED (e.g. ViT-L-14/openai), a CLIP model id or a folder "
            "holding an open_clip config (*.json) and its weights"
        )
    return {"arch": arch, "pretrained": pretrained, "quick_gelu": pretrained == "openai"}


def _registry_clip(spec: ClipSpec) -> ModelEntry | None:
    from icg.models.registry import load_registry

    for entry in load_registry().values():
        clip = dict(entry.clip or {})
        if entry.kind == "clip" and (clip.get("arch"), clip.get("pretrained")) == (
            spec.arch,
            spec.pretrained,
        ):
            return entry
    return None


def resolve_clip(clip: Any, manager: ModelManager) -> ClipSpec:
    """A ClipSpec from the runtime override, else ``clip`` (ClipSpec fields, or a ``--clip`` string),
    else the default ViT-L-14/openai. A CLIP the registry knows loads from its installed file with
    QuickGELU for OpenAI weights; a missing one raises ``ModelNotFound`` naming the download command."""
    clip = manager.runtime.clip or clip or DEFAULT_CLIP
    if isinstance(clip, ClipSpec):
        spec = clip
    else:
        fields = parse_clip(clip) if isinstance(clip, str) else dict(clip)
        spec = from_dict(ClipSpec, fields, where="CLIP settings")
    if spec.weights_path:
        if not Path(spec.weights_path).is_file():
            raise ModelNotFound(f"CLIP weights {spec.weights_path} not found")
        return spec
    entry = _registry_clip(spec)
    if entry is None:
        return spec  # open_clip knows it (its cache, or its own download)
    folder = _install(entry, manager)
    weights = folder / entry.required_files[0]
    return ClipSpec(
        arch=spec.arch,
        pretrained=spec.pretrained,
        quick_gelu=True if spec.pretrained == "openai" else spec.quick_gelu,
        config_path=spec.config_path,
        weights_path=str(weights),
    )


def load_clip(spec: ClipSpec, manager: ModelManager):
    from icg.clip_encoder import ClipEncoder

    return ClipEncoder.load(
        spec, device=manager.device, dtype=manager.dtype, cache_dir=manager.models_dir / "cache" / "open_clip"
    )


# ------------------------------------------------------------------------------------------ tokenizer
def load_tokenizer(name: str | None, manager: ModelManager):
    """A GPT-2 tokenizer: the runtime override, else ``name`` (a folder, a registry id, or a user's
    tokenizer folder in the models folder), else the registry's ``gpt2-tokenizer``."""
    from transformers import AutoTokenizer

    name = manager.runtime.tokenizer or name or DEFAULT_TOKENIZER
    path = Path(name).expanduser()
    if not path.is_dir():
        entry = _entry(name)
        if entry is not None:
            path = _install(entry, manager)
        elif (manager.models_dir / name).is_dir() and not name.startswith("."):
            path = manager.models_dir / name
        else:
            raise ModelNotFound(f"tokenizer {name!r} is neither a folder nor a known tokenizer id")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a loadable tokenizer folder ({err})") from err


# ------------------------------------------------------------------------------------------ captioners
def load_captioner(name: str, manager: ModelManager):
    resolved = resolve_model(name, manager)
    if resolved.kind == "clip-prefix":
        return _load_prefix(name, resolved, manager)
    from icg.sbg.captioner import load_sbg_captioner

    return load_sbg_captioner(name, resolved, manager)


def _load_prefix(name: str, resolved: ResolvedModel, manager: ModelManager):
    from icg.captioners.prefix import PrefixCaptioner, load_prefix_model

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
    if len(tokenizer) > model.gpt.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(
            f"{resolved.path}: the tokenizer has {len(tokenizer)} tokens but the model's GPT-2 only "
            f"{model.gpt.get_input_embeddings().weight.shape[0]}: wrong tokenizer for this model"
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
