"""The ``sbg`` and ``sbg-vocabulary`` kinds: how an SBG generator and its keyword vocabulary are
detected, described, loaded, imported and converted.

An SBG generator is a Hugging Face GPT-2 folder (``config.json`` with ``model_type: gpt2`` +
``model.safetensors``) plus ``icg.json``: the CLIP, vocabulary and tokenizer it runs with. A vocabulary
is ``vocabulary.json``, converted once from the published ``all_labels.pkl`` + ``encyclopedia.pkl`` (read
by the refuse-all-globals unpickler). ``icg.models`` is imported only inside the functions, so importing
this module never imports ``icg.models`` back.
"""

from __future__ import annotations

import re
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
from icg.captioners.limits import check_gpt2_config, check_gpt2_folder
from icg.errors import CheckpointError, ConfigError
from icg.sinks import atomic_write_json

META_FILE = "icg.json"
META_FORMAT = "icg-sbg"
META_VERSION = 1
_META_KEYS = frozenset({"format", "version", "clip", "normalize", "vocabulary", "tokenizer", "decoding"})
VOCABULARY_FILE = "vocabulary.json"
VOCABULARY_FORMAT = "icg-sbg-vocabulary"
PICKLES = ("all_labels.pkl", "encyclopedia.pkl")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
DECODING = MappingProxyType({"num_candidates": 5, "top_k": 50, "temperature": 1.0})


# ------------------------------------------------------------------------------------------ settings
def read_sbg_meta(folder: Path) -> dict[str, Any]:
    """The ``icg.json`` of an imported SBG folder (``{}`` when there is none), validated."""
    file = Path(folder) / META_FILE
    if not file.is_file():
        return {}
    data = read_json(file)
    if not isinstance(data, dict) or data.get("format") != META_FORMAT:
        raise CheckpointError(f"{file}: not an ICG SBG settings file (format {META_FORMAT!r})")
    if data.get("version", 0) > META_VERSION:
        raise CheckpointError(f"{file}: version {data['version']} is newer than this ICG understands")
    unknown = sorted(set(data) - _META_KEYS)
    if unknown:
        raise CheckpointError(f"{file}: unknown setting(s) {', '.join(unknown)}")
    for key in ("vocabulary", "tokenizer"):  # relative paths are relative to the model folder
        value = data.get(key)
        if isinstance(value, str) and value.startswith(("./", "../")):
            data[key] = str((Path(folder) / value).resolve())
    return data


def sbg_meta(folder: Path, entry) -> dict[str, Any]:
    """An SBG model's settings: registry facts > its ``icg.json`` > the defaults.

    ``tokenizer`` is the model folder itself when it ships tokenizer files and names no tokenizer."""
    from icg.models.loading import DEFAULT_CLIP, DEFAULT_TOKENIZER, DEFAULT_VOCABULARY, required_of_kind

    folder = Path(folder)
    stored = read_sbg_meta(folder)
    own_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
    meta: dict[str, Any] = {
        "clip": dict(DEFAULT_CLIP),
        "normalize": True,
        "vocabulary": required_of_kind(entry, VOCABULARY.name, DEFAULT_VOCABULARY),
        "tokenizer": str(folder) if own_tokenizer else DEFAULT_TOKENIZER,
        "decoding": dict(DECODING),
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


# ------------------------------------------------------------------------------------------ the generator
def _is_gpt2(path: Path) -> bool:
    config = folder_config(path)
    return config is not None and config.get("model_type") == "gpt2"


def _describe(folder: Path) -> str:
    from icg.models.loading import clip_label

    if not any((folder / name).is_file() for name in WEIGHTS):
        raise CheckpointError(f"{folder}: GPT-2 config.json without model.safetensors")
    meta = sbg_meta(folder, None)
    return f"SBG generator (vocabulary {meta['vocabulary']}, CLIP {clip_label(meta['clip'])})"


def _load(name: str, resolved, manager):
    from icg.sbg.captioner import load_sbg_captioner

    check_gpt2_folder(resolved.path)  # the loader reports a missing config in its own words
    return load_sbg_captioner(name, resolved, manager)


def _recognise(paths: Sequence[Path], probe: Probe) -> bool:
    if len(paths) != 1:
        return False
    path = paths[0]
    if path.is_dir():
        return _is_gpt2(path)
    return path.suffix in WEIGHT_SUFFIXES and any(
        re.match(r"(transformer\.)?(wte|h\.\d+)\.", k) for k in probe.tensor_names(path)
    )


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


def _vocabulary_ref(value: str | None, root: Path, registry: Mapping[str, Any]) -> str:
    from icg.models.loading import DEFAULT_VOCABULARY

    if not value:
        return DEFAULT_VOCABULARY
    path = Path(value).expanduser()
    if path.is_file() or (path.is_dir() and (path / VOCABULARY_FILE).is_file()):
        return str(path.resolve())
    entry = registry.get(value)
    if entry is not None:
        if entry.kind != VOCABULARY.name:
            raise ConfigError(f"--vocabulary {value!r} is a {entry.kind}, not an SBG vocabulary")
        return value
    if (root / value / VOCABULARY_FILE).is_file():
        return value
    raise ConfigError(f"--vocabulary {value!r} is neither a vocabulary id, a vocabulary.json nor its folder")


def _import(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    from icg.models.importer import (
        clip_feature_dim,
        copy_file,
        full_clip,
        single_source,
        tokenizer_ref,
    )
    from icg.models.loading import DEFAULT_CLIP, DEFAULT_TOKENIZER, clip_label, parse_clip

    src = single_source(paths, "sbg")
    own_tokenizer = False
    if src.is_dir():
        if not (src / "config.json").is_file():
            raise CheckpointError(f"{src}: an SBG generator folder needs config.json (a GPT-2 config)")
        config = read_json(src / "config.json")
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type != "gpt2":
            raise CheckpointError(f"{src / 'config.json'}: not a GPT-2 config (model_type {model_type!r})")
        check_gpt2_config(config, str(src / "config.json"))
        if (src / "model.safetensors.index.json").is_file():
            raise CheckpointError(f"{src}: sharded checkpoints are not supported; save it as one file")
        weights = next((src / n for n in WEIGHTS if (src / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{src}: no model.safetensors (or pytorch_model.bin) in this folder")
        for name in ("generation_config.json", *TOKENIZER_FILES):
            if (src / name).is_file():
                copy_file(src / name, out / name)
                own_tokenizer = own_tokenizer or name in ("tokenizer.json", "vocab.json")
    else:
        if src.suffix not in WEIGHT_SUFFIXES:
            raise ConfigError(f"{src}: an SBG generator is a GPT-2 folder or its weights file")
        weights, config = src, None
    state = None if weights.suffix == ".safetensors" else read_state(weights)
    shapes = tensor_shapes(weights) if state is None else {k: tuple(v.shape) for k, v in state.items()}
    if config is None:
        config = _gpt2_config_from_shapes(shapes, job.n_head, str(src))
    elif job.n_head is not None and job.n_head != config.get("n_head"):
        raise ConfigError(
            f"{src}: --n-head {job.n_head} contradicts config.json's n_head {config.get('n_head')}"
        )
    check_gpt2(shapes, config, str(src))
    atomic_write_json(out / "config.json", config, sort_keys=True)
    if state is None:
        copy_file(weights, out / "model.safetensors")
    else:
        _save_state_safetensors(state, out / "model.safetensors")
    meta: dict[str, Any] = {"format": META_FORMAT, "version": META_VERSION}
    if job.entry is not None:
        meta["clip"] = full_clip(job.entry.clip or DEFAULT_CLIP)
        meta["normalize"] = job.entry.normalize
        meta["decoding"] = dict(job.entry.decoding)
    else:
        clip = full_clip(parse_clip(job.clip) if job.clip else DEFAULT_CLIP)
        clip_feature_dim(clip)  # an architecture open_clip does not know is refused now, not at caption time
        meta["clip"] = clip
        meta["normalize"] = True if job.normalize is None else job.normalize
        meta["decoding"] = dict(DECODING)
    meta["vocabulary"] = _vocabulary_ref(job.vocabulary, job.root, job.registry)
    if job.tokenizer:
        meta["tokenizer"] = tokenizer_ref(job.tokenizer)
    elif not own_tokenizer:
        meta["tokenizer"] = DEFAULT_TOKENIZER
    atomic_write_json(out / META_FILE, meta, sort_keys=True)
    return (
        f"SBG generator: GPT-2 {config['n_layer']} layers x {config['n_embd']} ({config['n_head']} heads), "
        f"{config['vocab_size']} tokens; CLIP {clip_label(meta['clip'])}, vocabulary {meta['vocabulary']}, "
        f"tokenizer {meta.get('tokenizer', 'in the folder')}"
    )


# ------------------------------------------------------------------------------------------ the vocabulary
def _is_vocabulary(path: Path) -> bool:
    if path.is_file():
        data = read_json(path) if path.suffix == ".json" else None
        return isinstance(data, dict) and data.get("format") == VOCABULARY_FORMAT
    return (path / VOCABULARY_FILE).is_file()


def _describe_vocabulary(folder: Path) -> str:
    data = read_json(folder / VOCABULARY_FILE)
    if not isinstance(data, dict) or data.get("format") != VOCABULARY_FORMAT:
        raise CheckpointError(f"{folder / VOCABULARY_FILE}: not an ICG SBG vocabulary")
    return f"SBG vocabulary ({len(data.get('labels') or [])} keywords)"


def _recognise_vocabulary(paths: Sequence[Path], probe: Probe) -> bool:
    if len(paths) == 2:
        return all(p.is_file() and p.suffix == ".pkl" for p in paths)
    if len(paths) != 1:
        return False
    path = paths[0]
    if path.is_dir():
        return _is_vocabulary(path) or all((path / name).is_file() for name in PICKLES)
    return path.suffix == ".pkl" or _is_vocabulary(path)


def _vocabulary_inputs(paths: Sequence[Path]) -> tuple[Path, Path] | Path:
    """The (all_labels.pkl, encyclopedia.pkl) pair, or one vocabulary.json."""
    from icg.models.safe_pickle import safe_load

    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        labels, ency = (folder / name for name in PICKLES)
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


def _import_vocabulary(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    from icg.models.importer import copy_file
    from icg.sbg.vocab import Vocabulary, convert_pickles

    inputs = _vocabulary_inputs(paths)
    if isinstance(inputs, Path):
        vocab = Vocabulary.from_json(inputs)
        copy_file(inputs, out / VOCABULARY_FILE)
    else:
        vocab = convert_pickles(inputs[0], inputs[1], out / VOCABULARY_FILE)
        job.originals = list(inputs)
    subs = sum(len(s) for s in vocab.hierarchy.values())
    return f"SBG vocabulary: {len(vocab.labels)} keywords, {subs} sub-categories"


def _convert_vocabulary(entry, folder: Path, out: Path) -> None:
    from icg.sbg.vocab import convert_pickles

    convert_pickles(*(folder / name for name in PICKLES), out / VOCABULARY_FILE)


KIND = ModelKind(
    name="sbg",
    title="SBG generator",
    formats="a GPT-2 (SBG) folder",
    detect=_is_gpt2,
    describe=_describe,
    settings=sbg_meta,
    load=_load,
    recognise=_recognise,
    import_files=_import,
    registry_needs=("clip",),
    decoding=DECODING,
)
VOCABULARY = ModelKind(
    name="sbg-vocabulary",
    title="SBG vocabulary",
    formats="an SBG vocabulary (vocabulary.json, or all_labels.pkl + encyclopedia.pkl)",
    detect=_is_vocabulary,
    describe=_describe_vocabulary,
    recognise=_recognise_vocabulary,
    import_files=_import_vocabulary,
    convert=Conversion(outputs=(VOCABULARY_FILE,), inputs=PICKLES, run=_convert_vocabulary),
)
#: Registered by icg.captioners.kinds (BUILTIN_MODULES) on first use.
KINDS = (KIND, VOCABULARY)
