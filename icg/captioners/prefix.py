"""The CLIP-prefix captioner (ClipCap family): CLIP feature -> mapper -> GPT-2 prefix -> caption.

Two on-disk formats load here:

- the published predecessor format: one torch ``state_dict`` (``.pt``) with ``gpt.*`` (a
  GPT2LMHeadModel) and ``clip_project.*`` keys, read with ``torch.load(weights_only=True)``;
- the project's own: a folder with ``config.json`` (``PrefixModelConfig``) and ``model.safetensors``.

The mapper architecture and the GPT-2 size come from the tensor shapes; what shapes cannot tell
(CLIP model, whether features are normalised, the attention heads) comes from the config or registry.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icg.captioners.generation import generate
from icg.captioners.limits import check_gpt2_config, check_mapper_config
from icg.captioners.mappers import MapperConfig, build_mapper, infer_mapper_config
from icg.captioners.prefix_kind import FORMAT
from icg.captioners.result import Candidate, CaptionResult
from icg.config import ClipSpec, DecodingConfig, from_dict, to_dict
from icg.errors import CheckpointError, ConfigError
from icg.options import CaptionOptions
from icg.sinks import atomic_write_with
from icg.text import cut_caption, decode_tokens, finish_caption

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LM_KEYS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class PrefixModelConfig:
    """Everything needed to rebuild a CLIP-prefix model besides its weights."""

    mapper: MapperConfig
    lm: dict[str, Any]  # GPT2Config fields (see LM_KEYS)
    normalize: bool = True  # were the CLIP features L2-normalised in training?
    clip: dict[str, Any] | None = None  # ClipSpec fields of the CLIP it was trained with
    tokenizer: str = "gpt2-tokenizer"
    decoding: dict[str, Any] = field(default_factory=dict)  # DecodingConfig overrides
    format: str = FORMAT
    version: int = FORMAT_VERSION

    @property
    def prefix_length(self) -> int:
        return self.mapper.prefix_length

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], *, where: str) -> PrefixModelConfig:
        data = dict(data)
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not an ICG CLIP-prefix config (format={data.get('format')!r})")
        if data.get("version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: config version {data['version']} is newer than this ICG understands"
            )
        for name in ("mapper", "lm"):
            if not isinstance(data.get(name), dict):
                raise CheckpointError(f"{where}: {name} must be a JSON object, not {data.get(name)!r}")
        data["mapper"] = from_dict(MapperConfig, data["mapper"], where=where)
        cfg = from_dict(cls, data, where=where)
        check_mapper_config(cfg.mapper, where)  # before anything is built from the sizes
        check_gpt2_config(cfg.lm, f"{where} (lm)")
        return cfg


class PrefixCaptionModel(nn.Module):
    """The mapper plus an injected causal LM; parameter names match the published checkpoints."""

    def __init__(self, mapper: nn.Module, lm: nn.Module, prefix_length: int) -> None:
        super().__init__()
        self.clip_project = mapper
        self.gpt = lm
        self.prefix_length = prefix_length

    @property
    def embed_dim(self) -> int:
        return self.gpt.get_input_embeddings().weight.shape[1]

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) CLIP features -> (B, P, E) input embeddings in the LM's dtype."""
        mapper_dtype = next(self.clip_project.parameters()).dtype
        out = self.clip_project(features.to(mapper_dtype))
        return out.view(features.shape[0], self.prefix_length, -1).to(self.gpt.dtype)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        """Teacher-forced pass for training: the prefix then ``tokens``; ``labels`` already aligned to
        ``tokens`` (-100 where ignored). Returns the LM output (``loss`` set when labels are given)."""
        prefix = self.prefix(features)
        embeds = torch.cat([prefix, self.gpt.get_input_embeddings()(tokens)], dim=1)
        if labels is not None:
            ignore = labels.new_full((labels.shape[0], self.prefix_length), -100)
            labels = torch.cat([ignore, labels], dim=1)
        return self.gpt(inputs_embeds=embeds, labels=labels)

    def freeze_lm(self) -> None:
        for p in self.gpt.parameters():
            p.requires_grad_(False)


# ------------------------------------------------------------------------------------------- building
def build_lm(lm_config: dict[str, Any]) -> nn.Module:
    """A randomly initialised GPT-2 of the given size (no download); weights are loaded afterwards."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(lm_config)
    if cfg.get("vocab_size", 50257) <= 50256:  # GPT-2's default <|endoftext|> id would lie outside the vocab
        cfg.setdefault("bos_token_id", None)
        cfg.setdefault("eos_token_id", None)
    return GPT2LMHeadModel(GPT2Config(**cfg))


def infer_lm_config(
    lm_state: dict[str, torch.Tensor], *, n_head: int | None = None, source: str = "checkpoint"
) -> dict[str, Any]:
    """GPT-2 size from its tensors. Heads are invisible in the shapes: GPT-2 uses 64-wide heads."""
    try:
        vocab, width = lm_state["transformer.wte.weight"].shape
        positions = lm_state["transformer.wpe.weight"].shape[0]
        inner = lm_state["transformer.h.0.mlp.c_fc.weight"].shape[1]
    except KeyError as err:
        raise CheckpointError(f"{source}: GPT-2 tensor {err.args[0]!r} missing") from err
    layers = {int(m.group(1)) for k in lm_state if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if n_head is None:
        if width % 64:
            raise CheckpointError(
                f"{source}: cannot tell the attention heads of a {width}-wide GPT-2; give n_head explicitly"
            )
        n_head = width // 64
    tied = "lm_head.weight" not in lm_state or torch.equal(
        lm_state["lm_head.weight"], lm_state["transformer.wte.weight"]
    )
    return {
        "vocab_size": int(vocab),
        "n_positions": int(positions),
        "n_embd": int(width),
        "n_layer": max(layers) + 1,
        "n_head": int(n_head),
        "n_inner": None if inner == 4 * width else int(inner),
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": tied,
    }


def _split(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    lm = {k[4:]: v for k, v in state.items() if k.startswith("gpt.")}
    mapper = {k[13:]: v for k, v in state.items() if k.startswith("clip_project.")}
    other = [k for k in state if not k.startswith(("gpt.", "clip_project."))]
    if not lm or not mapper or other:
        raise CheckpointError(
            f"{source}: not a CLIP-prefix state_dict (expected only gpt.* and clip_project.* keys"
            + (f"; found {', '.join(other[:4])}" if other else "")
            + ")"
        )
    # Attention mask buffers that old transformers saved; they are rebuilt by the model.
    lm = {k: v for k, v in lm.items() if not re.search(r"\.attn\.(masked_)?bias$", k)}
    return lm, mapper


def config_from_state(
    state: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    n_head: int | None = None,
    mapper_heads: int = 8,
    normalize: bool = True,
    clip: dict | None = None,
    decoding: dict | None = None,
) -> PrefixModelConfig:
    lm_state, mapper_state = _split(state, source)
    lm_cfg = infer_lm_config(lm_state, n_head=n_head, source=source)
    mapper_cfg = infer_mapper_config(mapper_state, lm_cfg["n_embd"], num_heads=mapper_heads, source=source)
    return PrefixModelConfig(
        mapper=mapper_cfg, lm=lm_cfg, normalize=normalize, clip=clip, decoding=dict(decoding or {})
    )


def model_from_state(
    state: dict[str, torch.Tensor], cfg: PrefixModelConfig, *, source: str
) -> PrefixCaptionModel:
    from icg.models.fastload import load_into, no_init

    lm_state, mapper_state = _split(state, source)
    with no_init():  # every parameter is loaded below
        mapper = build_mapper(cfg.mapper)
        lm = build_lm({k: v for k, v in cfg.lm.items() if k in LM_KEYS})
    try:
        load_into(mapper, mapper_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: mapper weights do not fit {cfg.mapper.kind} mapper: {err}") from err
    lm_state = dict(lm_state)
    if cfg.lm.get("tie_word_embeddings", True):
        lm_state.pop("lm_head.weight", None)
    missing, unexpected = load_into(lm, lm_state, strict=False)
    if cfg.lm.get("tie_word_embeddings", True):
        lm.tie_weights()  # the head shares the loaded embedding, not the one the model was built with
    missing = [
        k
        for k in missing
        if not (k == "lm_head.weight" and cfg.lm.get("tie_word_embeddings", True))
        and not re.search(r"\.attn\.(masked_)?bias$", k)
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: GPT-2 weights do not fit the configured model"
            f" (missing: {', '.join(missing[:4]) or '-'}; unexpected: {', '.join(unexpected[:4]) or '-'})"
        )
    return PrefixCaptionModel(mapper, lm, cfg.prefix_length).eval()


# ------------------------------------------------------------------------------------------- files
def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    from icg.clip_encoder import load_tensor_file

    return load_tensor_file(path, mmap=True)


def load_prefix_model(path: str | Path, **overrides: Any) -> tuple[PrefixCaptionModel, PrefixModelConfig]:
    """Load either format. ``overrides`` (n_head, mapper_heads, normalize, clip, decoding) apply to the
    predecessor format, whose file carries no config."""
    path = Path(path)
    if path.is_dir():
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise CheckpointError(
                f"{path}: a CLIP-prefix model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{cfg_file}: unreadable config ({err})") from err
        cfg = PrefixModelConfig.from_json_dict(data, where=str(cfg_file))
        state = read_state_file(weights)
        return model_from_state(state, cfg, source=str(weights)), cfg
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    state = read_state_file(path)
    cfg = config_from_state(state, source=str(path), **overrides)
    return model_from_state(state, cfg, source=str(path)), cfg


def save_prefix_model(model: PrefixCaptionModel, cfg: PrefixModelConfig, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``folder`` atomically; a tied LM head is
    stored once."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"clip_project.{k}": v for k, v in model.clip_project.state_dict().items()}
    state.update(
        {
            f"gpt.{k}": v
            for k, v in model.gpt.state_dict().items()
            if not re.search(r"\.attn\.(masked_)?bias$", k)
        }
    )
    if cfg.lm.get("tie_word_embeddings", True):
        state.pop("gpt.lm_head.weight", None)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_with(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    atomic_write_with(
        folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(cfg.to_json() + "\n", encoding="utf-8")
    )
    return folder


# ------------------------------------------------------------------------------------------- captioner
class PrefixCaptioner:
    """Captions CLIP features with a ``PrefixCaptionModel`` and a GPT-2 tokenizer."""

    kind = "clip-prefix"

    def __init__(
        self,
        model: PrefixCaptionModel,
        tokenizer,
        *,
        model_id: str,
        normalize: bool = True,
        decoding: DecodingConfig | None = None,
        style: str = "clean",
        clip_spec: ClipSpec | None = None,
    ) -> None:
        self.model = model.eval()
        self.clip_spec = clip_spec  # the CLIP whose features this model was trained on
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.normalize = normalize
        self.decoding = decoding or DecodingConfig()
        self.style = style

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> PrefixCaptioner:
        self.model.to(device)
        return self

    def stop_ids(self, cfg: DecodingConfig) -> list[int]:
        ids = []
        if cfg.stop:
            ids.append(self.tokenizer.encode(cfg.stop)[0])
        if cfg.stop_at_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def decode(self, tokens: list[int], cfg: DecodingConfig, style: str | None = None) -> str:
        text = decode_tokens(self.tokenizer, tokens)
        return finish_caption(cut_caption(text, cfg.stop), style or self.style)

    def caption_features(
        self,
        features: torch.Tensor,
        decoding: DecodingConfig | None = None,
        options: CaptionOptions | None = None,
    ) -> list[CaptionResult]:
        """(B, C) CLIP features -> one ``CaptionResult`` per row. ``options.style`` overrides the
        model's style; keywords are refused (this captioner has none)."""
        options = options or CaptionOptions()
        if options.uses_keywords:
            raise ConfigError(
                f"keywords, force and ban are only for SBG models; {self.model_id!r} is a {self.kind} model"
            )
        cfg = decoding or self.decoding
        start = time.perf_counter()
        generators = None  # one per image, so a seed reproduces an image's samples in any batch
        if cfg.seed is not None:
            generators = [
                torch.Generator(device=self.device).manual_seed(cfg.seed) for _ in range(len(features))
            ]
        with torch.inference_mode():
            prefix = self.model.prefix(features.to(self.device))
            outs = generate(
                self.model.gpt,
                cfg=cfg,
                inputs_embeds=prefix,
                stop_ids=self.stop_ids(cfg),
                generator=generators,
            )
        per_image = (time.perf_counter() - start) / max(len(outs), 1)
        results = []
        for seqs in outs:
            seqs = sorted(seqs, key=lambda g: g.score, reverse=True)
            texts = [self.decode(g.tokens, cfg, options.style) for g in seqs]
            candidates = [Candidate(t, g.score) for t, g in zip(texts, seqs)] if len(seqs) > 1 else []
            results.append(
                CaptionResult(
                    caption=texts[0],
                    model=self.model_id,
                    candidates=candidates,
                    score_kind="logprob" if candidates else None,
                    decoding=to_dict(cfg),
                    seed=cfg.seed,
                    timings={"decode": per_image},
                )
            )
        return results
