"""The GPT-2 that training starts from: pretrained weights from a folder or the Hugging Face cache, or a
randomly initialised one of a named size (``tiny`` for tests and smoke runs, ``gpt2`` for the 124M shape).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from icg.captioners.limits import check_gpt2_config, check_gpt2_folder
from icg.errors import CheckpointError, ConfigError, ModelNotFound

log = logging.getLogger(__name__)

#: Random-initialisation presets (``--lm-config``); the vocabulary always follows the tokenizer.
LM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 128, "n_positions": 512},  # room for a 480-token block
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
}
DEFAULT_LM = "gpt2"


def load_lm(
    tokenizer,
    *,
    lm: str | None = None,
    lm_config: str | None = None,
    allow_download: bool = False,
    seed: int = 0,
):
    """A ``GPT2LMHeadModel`` to fine-tune.

    ``lm_config``: a preset name (``tiny``, ``gpt2``) or a GPT-2 ``config.json``: random weights.
    Otherwise ``lm``: a folder with a Hugging Face GPT-2 (config + weights), or a Hugging Face id looked up
    in the local cache (downloaded only with ``allow_download``). Default: ``gpt2``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if lm_config is not None:
        if lm is not None:
            raise ConfigError(
                "give either --lm (pretrained weights) or --lm-config (random weights), not both"
            )
        if lm_config in LM_PRESETS:
            fields = dict(LM_PRESETS[lm_config])
        else:
            path = Path(lm_config).expanduser()
            try:
                fields = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"--lm-config {lm_config!r}: neither a preset ({', '.join(LM_PRESETS)}) nor a readable "
                    f"GPT-2 config.json ({err})"
                ) from err
            if not isinstance(fields, dict):
                kind = type(fields).__name__
                raise ConfigError(f"{path}: a GPT-2 config must be a JSON object, not {kind}")
            if fields.get("model_type", "gpt2") != "gpt2":
                raise ConfigError(f"{path}: model_type {fields.get('model_type')!r}; only GPT-2 is supported")
        eos = tokenizer.eos_token_id
        fields.update(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos)
        for key in ("architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype"):
            fields.pop(key, None)
        where = f"--lm-config {lm_config}" if lm_config in LM_PRESETS else str(Path(lm_config).expanduser())
        # Sane sizes before anything is built: as written (GPT2Config's defaults filled in), then as
        # GPT2Config read them (it also takes aliases such as num_hidden_layers).
        check_gpt2_config({**GPT2Config().to_dict(), **fields}, where)
        try:
            config = GPT2Config(**fields)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: not a GPT-2 config ({err})") from err
        check_gpt2_config(config.to_dict(), where)
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        log.info("randomly initialised GPT-2 (%s, %.1fM parameters)", lm_config, _millions(model))
        return model

    name = lm or DEFAULT_LM
    path = Path(name).expanduser()
    source = str(path) if path.is_dir() else name
    if path.is_dir():  # --lm FOLDER, `train sbg --init`: sane sizes before transformers builds it
        check_gpt2_folder(path)
    try:
        model = GPT2LMHeadModel.from_pretrained(
            source, local_files_only=not (allow_download or path.is_dir())
        )
    except OSError as err:
        if path.is_dir():
            raise CheckpointError(f"{path}: not a loadable GPT-2 folder ({err})") from err
        raise ModelNotFound(
            f"GPT-2 weights {name!r} are not in the local Hugging Face cache; pass --download to fetch them, "
            "or --lm FOLDER with a GPT-2 folder (config.json + model.safetensors)"
        ) from err
    if model.config.model_type != "gpt2":
        raise CheckpointError(f"{source}: a {model.config.model_type} model; only GPT-2 is supported")
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"{source}: its vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
            f"({len(tokenizer)}); use the tokenizer it was trained with (--tokenizer)"
        )
    log.info("loaded GPT-2 from %s (%.1fM parameters)", source, _millions(model))
    return model


def tokenizer_reference(name: str | None) -> str:
    """What a checkpoint records as its tokenizer: a registry id as given, a folder as an absolute path."""
    name = name or "gpt2-tokenizer"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
