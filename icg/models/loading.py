"""Turn a model name into loaded objects: the default factories of the model manager.

A captioner name resolves, in this order, to:

1. an existing path: a file or folder that a registered captioner kind detects
   (``icg.captioners.kinds``: a predecessor CLIP-prefix ``.pt`` state_dict, an ICG CLIP-prefix folder,
   a Hugging Face GPT-2 folder for SBG, ...), loaded by that kind's ``load``;
2. a registry id: its folder in the models folder. A model that is not installed yet is installed on
   demand: originals found in its folder are converted, files already in the Hugging Face cache are
   copied in, a CLIP another tool keeps (``icg.models.clip_sources``) is used, and anything else is
   downloaded only when ``RuntimeConfig.allow_download`` is set (else ``ModelNotFound`` names the
   ``python -m icg download`` command to run);
3. a user's own model: ``<models folder>/<name>`` holding one of the folder formats above (what
   ``python -m icg import`` writes, or what training saved).

Registry facts (CLIP, feature normalisation, decoding defaults) win over what a model folder says.
CLIPs named by architecture + pretrained tag that the registry knows load from the registry's file in the
models folder (no open_clip download); other CLIPs are open_clip's business.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icg.captioners import kinds
from icg.config import ClipSpec, from_dict
from icg.errors import CheckpointError, ConfigError, ModelNotFound

if TYPE_CHECKING:
    from icg.models.manager import ModelManager
    from icg.models.registry import ModelEntry

log = logging.getLogger(__name__)

DEFAULT_CLIP = {"arch": "ViT-L-14", "pretrained": "openai"}
DEFAULT_TOKENIZER = "gpt2-tokenizer"
DEFAULT_VOCABULARY = "sbg-vocabulary"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a captioner's files are, what kind it is, and the settings its kind resolved
    (``ModelKind.settings``; for ``sbg``: ``clip``, ``normalize``, ``vocabulary``, ``tokenizer``,
    ``decoding``)."""

    kind: str  # a captioner kind of icg.captioners.kinds
    path: Path
    entry: ModelEntry | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ detection
def detect_kind(path: Path) -> str:
    """What a file or folder holds, from its contents (never from its name alone): the name of the
    first registered kind (``icg.captioners.kinds``) that claims it; ``CheckpointError`` otherwise."""
    return kinds.detect(Path(path)).name


def describe_folder(folder: Path) -> tuple[str, str]:
    """``(kind, one-line description)`` of a complete model folder; ``CheckpointError`` when it is not
    one (a config without its weights, an unreadable config, an unknown layout)."""
    kind = kinds.detect(Path(folder))
    if kind.describe is None:
        raise CheckpointError(f"{folder}: a {kind.title} can't be described")
    return kind.name, kind.describe(Path(folder))


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
    (originals to convert, the Hugging Face cache, another tool's CLIP) or downloads are allowed. A
    pointer file whose target is gone is named in the error when nothing else is found."""
    from icg.errors import DownloadError
    from icg.models.download import (
        download_model,
        manual_instructions,
        pointer_problems,
        present,
        ready_to_convert,
    )
    from icg.models.paths import model_dir

    root = manager.models_dir
    folder = model_dir(entry, root)
    if present(entry, root):
        return folder
    allowed = manager.runtime.allow_download
    dirs = manager.runtime.clip_dirs
    stale = pointer_problems(entry, root)  # said before the pointer is replaced by the search below
    if ready_to_convert(entry, root) or allowed:
        download_model(entry, root, offline=None if allowed else True, progress=False, clip_dirs=dirs)
        return folder
    try:  # offline: only what is already on this machine (other tools' caches)
        download_model(entry, root, offline=True, progress=False, clip_dirs=dirs)
        return folder
    except DownloadError:
        pass
    missing = f"model {entry.id!r} ({entry.display_name}) is not installed in {root}"
    if stale:
        missing += f" ({'; '.join(stale)})"
    if entry.manual_only:
        raise ModelNotFound(f"{missing}\n{manual_instructions(entry, root)}")
    raise ModelNotFound(
        f"{missing}; fetch it with `python -m icg download {entry.id}` "
        f"(or import a copy you have with `python -m icg import FILE --as {entry.id}`)"
    )


# ------------------------------------------------------------------------------------------ names
def resolve_model(name: str, manager: ModelManager) -> ResolvedModel:
    """A captioner name -> its kind, its files and (SBG) its settings; see the module docstring."""
    path = Path(name).expanduser()
    if path.exists():
        return _resolved(path, None)
    entry = _entry(name)
    if entry is not None:
        if not kinds.get(entry.kind).captioner:
            raise ModelNotFound(f"{name!r} is a {entry.kind}, not a captioning model")
        return _resolved(_install(entry, manager), entry)
    local = manager.models_dir / name
    if name and not name.startswith(".") and local.is_dir():
        return _resolved(local, None)
    raise ModelNotFound(
        f"{name!r} is neither a file, a folder, a known model id nor a model in {manager.models_dir} "
        "(see `python -m icg models`)"
    )


def _resolved(path: Path, entry: ModelEntry | None) -> ResolvedModel:
    kind = kinds.get(entry.kind) if entry is not None else kinds.detect(path)
    if not kind.captioner:
        raise ModelNotFound(f"{path} holds a {kind.name}, not a captioning model")
    meta = kind.settings(path, entry) if kind.settings is not None else {}
    return ResolvedModel(kind.name, path, entry, meta)


def resolve_vocabulary(name: str | None, manager: ModelManager) -> Path:
    """The ``vocabulary.json`` for a vocabulary name: a registry id (installed on demand), a file, a
    folder holding ``vocabulary.json``, or a user's vocabulary folder in the models folder."""
    from icg.sbg.kind import VOCABULARY, VOCABULARY_FILE

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
        if entry.kind != VOCABULARY.name:
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
    from icg.models.pointers import installed_file

    folder = _install(entry, manager)
    weights = installed_file(folder, entry.required_files[0]) or folder / entry.required_files[0]
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
    return open_tokenizer(path)


def open_tokenizer(path: Path):
    """The tokenizer saved in ``path``. A folder saved by a newer transformers names a tokenizer class this
    one does not know (transformers 5 writes ``TokenizersBackend``, which the WebUI's 4.30 lacks); every ICG
    captioner uses GPT-2's byte-level BPE, so such a folder is read by the generic fast tokenizer from its
    ``tokenizer.json`` (or GPT-2's from ``vocab.json`` + ``merges.txt``) instead of failing."""
    from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except ValueError as err:
        if "does not exist" not in str(err):
            raise CheckpointError(f"{path}: not a loadable tokenizer folder ({err})") from err
        log.info("%s: %s; reading it as a GPT-2 byte-level BPE tokenizer", path, err)
    except OSError as err:
        raise CheckpointError(f"{path}: not a loadable tokenizer folder ({err})") from err
    generic = PreTrainedTokenizerFast if (path / "tokenizer.json").is_file() else GPT2TokenizerFast
    try:
        return generic.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a loadable tokenizer folder ({err})") from err


# ------------------------------------------------------------------------------------------ captioners
def load_captioner(name: str, manager: ModelManager):
    """The captioner ``name`` resolves to, loaded by its kind (``icg.captioners.kinds``)."""
    resolved = resolve_model(name, manager)
    return kinds.get(resolved.kind).load(name, resolved, manager)
