"""Frozen configuration records shared by the captioners, the CLI and the front ends.

Every record round-trips through plain dicts (``to_dict`` / ``from_dict``) so it can be stored as JSON
beside a checkpoint, sent over the API, or shown to the user. Unknown keys are refused with a
``ConfigError`` that names them, so a typo in a settings file never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from icg.errors import ConfigError

T = TypeVar("T")

STRATEGIES = ("greedy", "beam", "sample")


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, refusing keys it does not define."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        place = f" in {where}" if where else ""
        raise ConfigError(f"unknown {cls.__name__} setting(s){place}: {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"invalid {cls.__name__}{' in ' + where if where else ''}: {err}") from err


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@dataclass(frozen=True)
class DecodingConfig:
    """How a captioner turns language-model logits into tokens.

    ``greedy`` is the reference decoding of the published CLIP-prefix numbers; ``beam`` is ClipCap's
    alternative; ``sample`` (top-k / top-p / temperature, seeded) is how SBG draws its candidates.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 67
    stop: str | None = "."  # text of the token that ends a caption; None: only EOS ends it
    stop_at_eos: bool = True
    num_beams: int = 5
    length_penalty: float = 1.0
    num_samples: int = 1
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"decoding strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.num_beams < 1 or self.num_samples < 1:
            raise ConfigError("num_beams and num_samples must be at least 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be 0 (off) or positive, not {self.top_k}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, not {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be positive, not {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError("no_repeat_ngram_size must be 0 (off) or positive")

    def replace(self, **changes: Any) -> DecodingConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load: an open_clip architecture plus a pretrained tag, or local files.

    ``config_path`` is an open_clip model config (JSON with ``embed_dim``, ``vision_cfg``, ``text_cfg``)
    registered under its file stem; ``weights_path`` a state dict (``.safetensors``, or a tensors-only
    ``.pt``/``.bin``). With ``weights_path`` set nothing is downloaded.
    """

    arch: str = "ViT-L-14"
    pretrained: str | None = "openai"
    quick_gelu: bool = True
    config_path: str | None = None
    weights_path: str | None = None

    @property
    def id(self) -> str:
        if self.weights_path:
            return f"{self.arch}@{self.weights_path}"
        return f"{self.arch}/{self.pretrained}"
