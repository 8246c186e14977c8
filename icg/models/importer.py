"""Importing model files into the models folder, and converting downloaded originals.

``import_model`` (``python -m icg import``) takes files a person fetched by hand (the seed's MediaFire
links, the original ClipCap checkpoints) or trained, checks their tensor shapes against the kind of model
they claim to be, converts them and installs them as ``<models folder>/<id>/``:

- ``clip-prefix``: a predecessor ``.pt`` state_dict (read with ``torch.load(weights_only=True)``) or an
  ICG folder -> ``config.json`` + ``model.safetensors`` (``icg.captioners.prefix.save_prefix_model``);
- ``sbg``: a Hugging Face GPT-2 folder (or its lone weights file) -> the folder with ``model.safetensors``
  plus ``icg.json`` (the CLIP, vocabulary and tokenizer it runs with);
- ``sbg-vocabulary``: ``all_labels.pkl`` + ``encyclopedia.pkl`` (read by the refuse-all-globals
  unpickler) -> ``vocabulary.json``;
- ``tokenizer`` / ``clip`` (registry ids only): the registry's files, copied after a check.

When the id is a registry id, the registry's facts (CLIP, feature normalisation, prefix length, decoding)
apply. The import is atomic: everything is written into a hidden temporary folder inside the models
folder, checked, then renamed into place; an existing model folder is replaced only with ``force``.

``convert_downloaded`` is the conversion ``icg.models.download`` runs once after fetching an entry with
``convert_from``. Nothing here writes a pickle. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.errors import CheckpointError, ConfigError, IcgError, ModelNotFound
from icg.models.loading import (
    DEFAULT_CLIP,
    DEFAULT_TOKENIZER,
    DEFAULT_VOCABULARY,
    PREFIX_FORMAT,
    SBG_META_FILE,
    SBG_META_FORMAT,
    SBG_META_VERSION,
    VOCABULARY_FILE,
    clip_label,
    parse_clip,
    required_of_kind,
)
from icg.models.paths import ensure_dir, model_dir
from icg.models.registry import DEFAULT_DECODING, RESERVED_IDS, ModelEntry, load_registry

logger = logging.getLogger(__name__)

#: Kinds a user's own model may have (registry ids may also be ``tokenizer`` or ``clip``).
IMPORT_KINDS = ("clip-prefix", "sbg", "sbg-vocabulary")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ImportResult:
    """What ``import_model`` installed."""

    id: str
    kind: str
    folder: Path
    files: tuple[str, ...]
    details: str  # one line for a person: what was recognised and checked
    replaced: bool = False  # an existing folder was replaced (``force``)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "folder": str(self.folder), "files": list(self.files)}


# ------------------------------------------------------------------------------------------ helpers
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from err


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, without reading the data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def _read_state(path: Path) -> dict[str, Any]:
    from icg.clip_encoder import load_tensor_file

    return load_tensor_file(path)


def clip_feature_dim(clip: Mapping[str, Any]) -> int | None:
    """The feature width of a CLIP (ClipSpec fields); None when it can't be told here.

    A local CLIP reads its open_clip config; an architecture name asks open_clip's bundled configs, and
    one open_clip does not know is refused."""
    if clip.get("config_path"):
        data = _read_json(Path(str(clip["config_path"])))
        dim = data.get("embed_dim") if isinstance(data, dict) else None
        return int(dim) if isinstance(dim, int) else None
    arch = str(clip.get("arch") or "")
    if arch.startswith("hf-hub:"):
        return None
    try:
        import open_clip
    except ImportError:
        return None
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ConfigError(f"open_clip does not know the CLIP architecture {arch!r}")
    return int(config["embed_dim"])


def _full_clip(clip: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(clip)
    if "quick_gelu" not in out:
        out["quick_gelu"] = out.get("pretrained") == "openai"
    return out


def _check_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or model_id in RESERVED_IDS:
        raise ConfigError(
            f"{model_id!r} can't be a model id: use up to 64 lowercase letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (and not {', '.join(sorted(RESERVED_IDS))})"
        )


def _single(paths: Sequence[Path], kind: str) -> Path:
    if len(paths) != 1:
        raise ConfigError(f"a {kind} import takes one file or folder, got {len(paths)}")
    return paths[0]


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


# ------------------------------------------------------------------------------------------ kinds
def detect_import_kind(paths: Sequence[Path]) -> str:
    """Which kind of model ``paths`` hold, from their contents (tensor names, config fields)."""
    if len(paths) == 2 and all(p.is_file() and p.suffix == ".pkl" for p in paths):
        return "sbg-vocabulary"
    if len(paths) != 1:
        raise ConfigError(
            "give one file or folder to import (two files only for the vocabulary's all_labels.pkl and "
            "encyclopedia.pkl)"
        )
    path = paths[0]
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            data = _read_json(config)
            if isinstance(data, dict) and data.get("format") == PREFIX_FORMAT:
                return "clip-prefix"
            if isinstance(data, dict) and data.get("model_type") == "gpt2":
                return "sbg"
        if (path / VOCABULARY_FILE).is_file() or (
            (path / "all_labels.pkl").is_file() and (path / "encyclopedia.pkl").is_file()
        ):
            return "sbg-vocabulary"
        raise ConfigError(
            f"{path}: can't tell what this folder holds (expected an ICG CLIP-prefix folder, a GPT-2 folder "
            "with config.json, or all_labels.pkl + encyclopedia.pkl); name it with --kind"
        )
    if path.suffix == ".pkl":
        return "sbg-vocabulary"
    if path.suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and data.get("format") == "icg-sbg-vocabulary":
            return "sbg-vocabulary"
        raise ConfigError(f"{path}: not a vocabulary.json; import the folder that holds this config")
    if path.suffix in WEIGHT_SUFFIXES:
        keys = (_tensor_shapes(path) if path.suffix == ".safetensors" else _read_state(path)).keys()
        if any(k.startswith(("gpt.", "clip_project.")) for k in keys):
            return "clip-prefix"
        if any(re.match(r"(transformer\.)?(wte|h\.\d+)\.", k) for k in keys):
            return "sbg"
        raise CheckpointError(
            f"{path}: neither a CLIP-prefix state_dict (gpt.* and clip_project.* tensors) nor GPT-2 weights"
        )
    raise ConfigError(f"{path}: unknown file type {path.suffix or '(none)'}; name the kind with --kind")


# ------------------------------------------------------------------------------------------ CLIP-prefix
def convert_prefix_state(
    state: dict[str, Any],
    out: Path,
    *,
    source: str,
    base=None,
    clip: Mapping[str, Any] | None,
    normalize: bool,
    decoding: Mapping[str, Any] | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
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
                "trained on with --clip ARCH/PRETRAINED (e.g. ViT-B-32/openai for the original ClipCap "
                "checkpoints, which also need --no-normalize) or --clip FOLDER"
            )
        clip = dict(DEFAULT_CLIP)
    clip = _full_clip(clip)
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
        cfg, clip=clip, normalize=normalize, decoding=dict(decoding or {}), tokenizer=tokenizer
    )
    model = model_from_state(state, cfg, source=source)
    save_prefix_model(model, cfg, out)
    written = _tensor_shapes(out / "model.safetensors")
    expected = {k: tuple(v.shape) for k, v in state.items() if k in written}
    if written != expected:
        raise CheckpointError(f"{out}: the converted weights do not match {source}")
    return model, cfg


def _prefix_facts(entry: ModelEntry | None, clip: str | None, normalize: bool | None, base, source: str):
    """(clip fields or None, normalize, decoding, tokenizer) for a CLIP-prefix import."""
    if entry is not None:
        tokenizer = required_of_kind(entry, "tokenizer", DEFAULT_TOKENIZER)
        return dict(entry.clip or DEFAULT_CLIP), entry.normalize, dict(entry.decoding), tokenizer
    clip_fields = parse_clip(clip) if clip else (base.clip if base is not None and base.clip else None)
    if normalize is None:
        normalize = base.normalize if base is not None else True
    decoding = dict(base.decoding) if base is not None else {}
    tokenizer = base.tokenizer if base is not None else DEFAULT_TOKENIZER
    return clip_fields, normalize, decoding, tokenizer


def _build_prefix(paths, out: Path, *, entry, opts) -> str:
    from icg.captioners.prefix import PrefixModelConfig

    src = _single(paths, "clip-prefix")
    base = None
    if src.is_dir():
        config, weights = src / "config.json", src / "model.safetensors"
        if not config.is_file() or not weights.is_file():
            raise CheckpointError(f"{src}: a CLIP-prefix folder needs config.json and model.safetensors")
        base = PrefixModelConfig.from_json_dict(_read_json(config), where=str(config))
        state = _read_state(weights)
    elif src.suffix in WEIGHT_SUFFIXES:
        state = _read_state(src)
    else:
        raise ConfigError(f"{src}: a CLIP-prefix checkpoint is a {', '.join(WEIGHT_SUFFIXES)} file")
    clip, normalize, decoding, tokenizer = _prefix_facts(
        entry, opts["clip"], opts["normalize"], base, str(src)
    )
    if opts["tokenizer"]:
        tokenizer = _tokenizer_ref(opts["tokenizer"])
    _model, cfg = convert_prefix_state(
        state,
        out,
        source=str(src),
        base=base,
        clip=clip,
        normalize=normalize,
        decoding=decoding,
        tokenizer=tokenizer,
        n_head=opts["n_head"],
        mapper_heads=opts["mapper_heads"],
        prefix_length=entry.prefix_length if entry is not None else None,
    )
    m = cfg.mapper
    return (
        f"CLIP-prefix: {m.kind} mapper {m.clip_dim} -> {m.prefix_length} x {m.embed_dim}, "
        f"GPT-2 {cfg.lm['n_layer']} layers x {cfg.lm['n_embd']} ({cfg.lm['n_head']} heads), "
        f"CLIP {clip_label(cfg.clip)}, features {'normalised' if cfg.normalize else 'raw'}"
    )


# ------------------------------------------------------------------------------------------ SBG
def _gpt2_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k[len("transformer.") :] if k.startswith("transformer.") else k: v for k, v in shapes.items()}


def check_gpt2(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], source: str) -> None:
    """Check GPT-2 tensor shapes against its ``config.json``; ``CheckpointError`` naming the mismatch."""
    s = _gpt2_shapes(shapes)
    if "wte.weight" not in s or "wpe.weight" not in s:
        raise CheckpointError(f"{source}: GPT-2 tensors wte.weight / wpe.weight missing")
    vocab, width = s["wte.weight"]
    positions = s["wpe.weight"][0]
    layers = {int(m.group(1)) for k in s if (m := re.match(r"h\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    want = {
        "n_embd": (config.get("n_embd"), width, "the weights are {} wide"),
        "vocab_size": (config.get("vocab_size"), vocab, "the embedding has {} tokens"),
        "n_positions": (config.get("n_positions"), positions, "the position table has {} rows"),
        "n_layer": (config.get("n_layer"), n_layer, "the weights have {} layers"),
    }
    for name, (stated, actual, what) in want.items():
        if stated is not None and stated != actual:
            raise CheckpointError(f"{source}: config.json says {name} {stated}, but {what.format(actual)}")
    heads = config.get("n_head")
    if heads and width % heads:
        raise CheckpointError(f"{source}: config.json's n_head {heads} does not divide the width {width}")


def _gpt2_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], n_head: int | None, source: str):
    """A complete GPT-2 config (dict) for a lone weights file, sized from its tensors."""
    from transformers import GPT2Config

    s = _gpt2_shapes(shapes)
    try:
        vocab, width = s["wte.weight"]
        positions = s["wpe.weight"][0]
        inner = s["h.0.mlp.c_fc.weight"][1]
    except KeyError as err:
        raise CheckpointError(f"{source}: GPT-2 tensor {err.args[0]!r} missing") from err
    layers = {int(m.group(1)) for k in s if (m := re.match(r"h\.(\d+)\.", k))}
    if n_head is None:
        if width % 64:
            raise ConfigError(
                f"{source}: can't tell the attention heads of a {width}-wide GPT-2; give --n-head"
            )
        n_head = width // 64
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=width,
        n_layer=max(layers) + 1,
        n_head=n_head,
        n_inner=None if inner == 4 * width else inner,
    )
    data = cfg.to_dict()
    data["architectures"] = ["GPT2LMHeadModel"]
    return data


def _save_state_safetensors(state: dict[str, Any], dest: Path) -> None:
    """Write a torch state_dict as safetensors; a tied LM head (shared with wte) is stored once."""
    import torch
    from safetensors.torch import save_file

    state = dict(state)
    head, wte = state.get("lm_head.weight"), state.get("transformer.wte.weight")
    if head is not None and wte is not None and torch.equal(head, wte):
        state.pop("lm_head.weight")
    state = {k: v for k, v in state.items() if not re.search(r"\.attn\.(masked_)?bias$", k)}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()}, str(dest), metadata={"format": "pt"}
    )


def _tokenizer_ref(value: str) -> str:
    """A tokenizer reference to store: an absolute folder path or an id as given."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_dir() else value


def _vocabulary_ref(value: str | None, root: Path, registry: Mapping[str, ModelEntry]) -> str:
    if not value:
        return DEFAULT_VOCABULARY
    path = Path(value).expanduser()
    if path.is_file() or (path.is_dir() and (path / VOCABULARY_FILE).is_file()):
        return str(path.resolve())
    entry = registry.get(value)
    if entry is not None:
        if entry.kind != "sbg-vocabulary":
            raise ConfigError(f"--vocabulary {value!r} is a {entry.kind}, not an SBG vocabulary")
        return value
    if (root / value / VOCABULARY_FILE).is_file():
        return value
    raise ConfigError(f"--vocabulary {value!r} is neither a vocabulary id, a vocabulary.json nor its folder")


def _build_sbg(paths, out: Path, *, entry, opts) -> str:
    src = _single(paths, "sbg")
    source = str(src)
    own_tokenizer = False
    if src.is_dir():
        config_file = src / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{src}: an SBG generator folder needs config.json (a GPT-2 config)")
        config = _read_json(config_file)
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type != "gpt2":
            raise CheckpointError(f"{config_file}: not a GPT-2 config (model_type {model_type!r})")
        if (src / "model.safetensors.index.json").is_file():
            raise CheckpointError(f"{src}: sharded checkpoints are not supported; save it as one file")
        weights = next(
            (src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).is_file()), None
        )
        if weights is None:
            raise CheckpointError(f"{src}: no model.safetensors (or pytorch_model.bin) in this folder")
        for name in ("generation_config.json", *TOKENIZER_FILES):
            if (src / name).is_file():
                _copy(src / name, out / name)
                own_tokenizer = own_tokenizer or name in ("tokenizer.json", "vocab.json")
    else:
        if src.suffix not in WEIGHT_SUFFIXES:
            raise ConfigError(f"{src}: an SBG generator is a GPT-2 folder or its weights file")
        weights, config = src, None
    if weights.suffix == ".safetensors":
        shapes = _tensor_shapes(weights)
        state = None
    else:
        state = _read_state(weights)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    if config is None:
        config = _gpt2_config_from_shapes(shapes, opts["n_head"], source)
    elif opts["n_head"] is not None and opts["n_head"] != config.get("n_head"):
        raise ConfigError(
            f"{src}: --n-head {opts['n_head']} contradicts config.json's n_head {config.get('n_head')}"
        )
    check_gpt2(shapes, config, source)
    _write_json(out / "config.json", config)
    if state is None:
        _copy(weights, out / "model.safetensors")
    else:
        _save_state_safetensors(state, out / "model.safetensors")
    meta: dict[str, Any] = {"format": SBG_META_FORMAT, "version": SBG_META_VERSION}
    if entry is not None:
        meta["clip"] = _full_clip(entry.clip or DEFAULT_CLIP)
        meta["normalize"] = entry.normalize
        meta["decoding"] = dict(entry.decoding)
    else:
        clip = _full_clip(parse_clip(opts["clip"])) if opts["clip"] else _full_clip(DEFAULT_CLIP)
        clip_feature_dim(clip)  # an architecture open_clip does not know is refused now, not at caption time
        meta["clip"] = clip
        meta["normalize"] = True if opts["normalize"] is None else opts["normalize"]
        meta["decoding"] = dict(DEFAULT_DECODING["sbg"])
    meta["vocabulary"] = _vocabulary_ref(opts["vocabulary"], opts["root"], opts["registry"])
    if opts["tokenizer"]:
        meta["tokenizer"] = _tokenizer_ref(opts["tokenizer"])
    elif not own_tokenizer:
        meta["tokenizer"] = DEFAULT_TOKENIZER
    _write_json(out / SBG_META_FILE, meta)
    return (
        f"SBG generator: GPT-2 {config['n_layer']} layers x {config['n_embd']} ({config['n_head']} heads), "
        f"{config['vocab_size']} tokens; CLIP {clip_label(meta['clip'])}, vocabulary {meta['vocabulary']}, "
        f"tokenizer {meta.get('tokenizer', 'in the folder')}"
    )


# ------------------------------------------------------------------------------------------ vocabulary
def _vocabulary_inputs(paths: Sequence[Path]) -> tuple[Path, Path] | Path:
    """The (all_labels.pkl, encyclopedia.pkl) pair, or one vocabulary.json."""
    from icg.models.safe_pickle import safe_load

    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        labels, ency = folder / "all_labels.pkl", folder / "encyclopedia.pkl"
        if labels.is_file() and ency.is_file():
            return labels, ency
        if (folder / VOCABULARY_FILE).is_file():
            return folder / VOCABULARY_FILE
        raise ConfigError(f"{folder}: needs all_labels.pkl and encyclopedia.pkl (or vocabulary.json)")
    if len(paths) == 1 and paths[0].suffix == ".json":
        return paths[0]
    if len(paths) != 2 or not all(p.is_file() for p in paths):
        raise ConfigError(
            "an SBG vocabulary import takes the folder holding all_labels.pkl and encyclopedia.pkl, "
            "or those two files"
        )
    # Which is which, by structure: the labels are a list, the encyclopedia a dict.
    first = safe_load(paths[0])
    return (paths[1], paths[0]) if isinstance(first, dict) else (paths[0], paths[1])


def _build_vocabulary(paths, out: Path, *, entry, opts) -> str:
    from icg.sbg.vocab import Vocabulary, convert_pickles

    inputs = _vocabulary_inputs(paths)
    if isinstance(inputs, Path):
        vocab = Vocabulary.from_json(inputs)
        _copy(inputs, out / VOCABULARY_FILE)
    else:
        vocab = convert_pickles(inputs[0], inputs[1], out / VOCABULARY_FILE)
        opts["originals"] = list(inputs)
    subs = sum(len(s) for s in vocab.hierarchy.values())
    return f"SBG vocabulary: {len(vocab.labels)} keywords, {subs} sub-categories"


# ------------------------------------------------------------------------------------------ registry files
def _build_registry_files(paths, out: Path, *, entry, opts) -> str:
    """A tokenizer or CLIP registry entry: its files, found by name among ``paths`` (files or a folder)."""
    candidates: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            candidates.update({p.name: p for p in path.iterdir() if p.is_file()})
        else:
            candidates[path.name] = path
    wanted = entry.required_files
    if entry.kind == "clip" and len(wanted) == 1 and wanted[0] not in candidates and len(paths) == 1:
        src = paths[0]
        if src.is_file():
            if src.suffix not in TORCH_SUFFIXES:
                raise ConfigError(
                    f"{src}: {entry.id} is installed as {wanted[0]} (a tensors-only torch state_dict); "
                    f"give that file (a {src.suffix} can be used directly with --clip FOLDER instead)"
                )
            candidates[wanted[0]] = src
    missing = [f for f in wanted if f not in candidates]
    if missing:
        raise ConfigError(f"{entry.id} needs {', '.join(missing)}; not found in {', '.join(map(str, paths))}")
    for name in entry.files:
        if name in candidates:
            _copy(candidates[name], out / name)
    if entry.kind == "tokenizer":
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(out))
        except ImportError:
            return "tokenizer files copied (not checked: transformers is not installed)"
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{', '.join(map(str, paths))}: not a loadable tokenizer ({err})") from err
        return f"tokenizer: {len(tokenizer)} tokens"
    state = _read_state(out / wanted[0])
    if not any(k.startswith("visual.") for k in state):
        raise CheckpointError(f"{candidates[wanted[0]]}: not open_clip CLIP weights (no visual.* tensors)")
    proj = state.get("text_projection")
    dim = int(proj.shape[-1]) if proj is not None else None
    expected = clip_feature_dim(dict(entry.clip or {}))
    if dim is not None and expected is not None and dim != expected:
        raise CheckpointError(
            f"{candidates[wanted[0]]}: {dim}-dim CLIP features, but {clip_label(entry.clip)} has {expected}"
        )
    return f"CLIP {clip_label(entry.clip)}: {dim or '?'}-dim features"


_BUILDERS = {
    "clip-prefix": _build_prefix,
    "sbg": _build_sbg,
    "sbg-vocabulary": _build_vocabulary,
    "tokenizer": _build_registry_files,
    "clip": _build_registry_files,
}


# ------------------------------------------------------------------------------------------ import
def _describe_existing(dest: Path) -> str:
    names = sorted(p.name for p in dest.iterdir())[:4] if dest.is_dir() else []
    return ", ".join(names) or "empty"


def _make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` (created with the usual permissions, unlike ``mkdtemp``)."""
    for _ in range(100):
        path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"can't create a temporary folder in {parent}")


def _usual_modes(folder: Path) -> None:
    """Give the files in ``folder`` the permissions a new file gets here (the umask), not the private
    0600 that temporary-file writers use, so a shared models folder stays readable."""
    probe = folder / ".mode-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.chmod(mode)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _commit(tmp: Path, dest: Path, force: bool) -> bool:
    """Rename the finished ``tmp`` folder to ``dest``; replace ``dest`` only with ``force`` (an empty
    folder is no model: it is replaced without)."""
    if _is_empty_dir(dest):
        with contextlib.suppress(OSError):
            dest.rmdir()
    if dest.exists():
        if not force:
            raise ConfigError(
                f"{dest} already exists ({_describe_existing(dest)}); add --force to replace it"
            )
        old = dest.with_name(f".replaced-{dest.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.rename(tmp, dest)
    except OSError as err:
        raise ConfigError(f"can't install into {dest}: {err}") from err
    return False


def import_model(
    sources: Iterable[str | os.PathLike[str]],
    model_id: str,
    root: str | os.PathLike[str],
    *,
    kind: str | None = None,
    clip: str | None = None,
    normalize: bool | None = None,
    n_head: int | None = None,
    mapper_heads: int | None = None,
    tokenizer: str | None = None,
    vocabulary: str | None = None,
    keep_original: bool = False,
    force: bool = False,
    registry: Mapping[str, ModelEntry] | None = None,
) -> ImportResult:
    """Check, convert and install ``sources`` as ``<root>/<model_id>``; see the module docstring.

    ``kind`` defaults to the registry entry's kind, else to what the files hold. ``clip`` (ARCH/PRETRAINED,
    a CLIP id or a CLIP folder), ``normalize``, ``n_head``/``mapper_heads`` (invisible in the shapes),
    ``tokenizer`` and ``vocabulary`` (SBG) describe a user's own model; for a registry id the registry's
    facts apply and a contradicting option is refused. ``keep_original`` also copies the converted
    originals into the model folder. Raises ``IcgError`` subclasses naming the file and the problem.
    """
    entries = registry if registry is not None else load_registry()
    paths = [Path(p).expanduser() for p in sources]
    if not paths:
        raise ConfigError("nothing to import: give a file or folder")
    for path in paths:
        if not path.exists():
            raise ModelNotFound(f"{path}: no such file or folder")
    _check_id(model_id)
    entry = entries.get(model_id)
    if entry is not None:
        if kind is not None and kind != entry.kind:
            raise ConfigError(f"{model_id!r} is a {entry.kind} in the model registry, not a {kind}")
        kind = entry.kind
        _refuse_contradictions(entry, clip, normalize)
    elif kind is None:
        kind = detect_import_kind(paths)
    elif kind not in IMPORT_KINDS:
        raise ConfigError(f"unknown kind {kind!r}; one of {', '.join(IMPORT_KINDS)}")
    root_path = Path(root)
    dest = model_dir(model_id, root_path)
    if dest.exists() and not force and not _is_empty_dir(dest):  # fail early; checked again at the rename
        raise ConfigError(f"{dest} already exists ({_describe_existing(dest)}); add --force to replace it")
    ensure_dir(root_path)
    opts: dict[str, Any] = {
        "clip": clip,
        "normalize": normalize,
        "n_head": n_head,
        "mapper_heads": mapper_heads,
        "tokenizer": tokenizer,
        "vocabulary": vocabulary,
        "root": root_path,
        "registry": entries,
        "originals": [p for p in paths if p.is_file()],
    }
    tmp = _make_temp_dir(root_path, f".import-{model_id}-")
    try:
        details = _BUILDERS[kind](paths, tmp, entry=entry, opts=opts)
        if keep_original and kind in ("clip-prefix", "sbg", "sbg-vocabulary"):
            for original in opts["originals"]:
                if not (tmp / original.name).exists():
                    _copy(original, tmp / original.name)
        _usual_modes(tmp)
        files = tuple(sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()))
        replaced = _commit(tmp, dest, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("imported %s as %s into %s: %s", ", ".join(map(str, paths)), model_id, dest, details)
    return ImportResult(model_id, kind, dest, files, details, replaced)


def _refuse_contradictions(entry: ModelEntry, clip: str | None, normalize: bool | None) -> None:
    if clip is not None:
        given = parse_clip(clip)
        facts = dict(entry.clip or {})
        if (given.get("arch"), given.get("pretrained")) != (facts.get("arch"), facts.get("pretrained")):
            raise ConfigError(
                f"{entry.id!r} is registered with CLIP {clip_label(facts)}; --clip {clip} contradicts it "
                "(import it under an id of your own to use another CLIP)"
            )
    if normalize is not None and normalize != entry.normalize:
        raise ConfigError(
            f"{entry.id!r} is registered with {'normalised' if entry.normalize else 'raw'} CLIP features; "
            "import it under an id of your own to change that"
        )


# ------------------------------------------------------------------------------------------ downloads
def convert_downloaded(entry: ModelEntry, folder: Path, *, keep_original: bool = False) -> None:
    """Convert the downloaded ``convert_from`` files of ``entry`` in ``folder`` into its ``files``, then
    delete the originals unless ``keep_original``. The installed files appear only when complete (the
    config last), so a failure leaves the model "not present" and the originals in place."""
    folder = Path(folder)
    if entry.kind == "clip-prefix":
        src = folder / entry.convert_from[0]
        tmp = _make_temp_dir(folder, ".convert-")
        try:
            state = _read_state(src)
            tokenizer = required_of_kind(entry, "tokenizer", DEFAULT_TOKENIZER)
            convert_prefix_state(
                state,
                tmp,
                source=str(src),
                clip=dict(entry.clip or DEFAULT_CLIP),
                normalize=entry.normalize,
                decoding=dict(entry.decoding),
                tokenizer=tokenizer,
                prefix_length=entry.prefix_length,
            )
            del state
            _usual_modes(tmp)
            for name in ("model.safetensors", "config.json"):
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif entry.kind == "sbg-vocabulary":
        from icg.sbg.vocab import convert_pickles

        convert_pickles(folder / "all_labels.pkl", folder / "encyclopedia.pkl", folder / VOCABULARY_FILE)
    else:
        raise IcgError(f"{entry.id}: no converter for a {entry.kind} model")
    logger.info("converted %s of %s in %s", ", ".join(entry.convert_from), entry.id, folder)
    if not keep_original:
        for name in entry.convert_from:
            (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # huggingface_hub's note about the downloaded file
                (folder / ".cache" / "huggingface" / "download" / f"{name}.metadata").unlink()
