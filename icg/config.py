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
from icg.options import DECODING

T = TypeVar("T")



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


def _default(name: str) -> Any:
    return DECODING[name].default


@dataclass(frozen=True)
class DecodingConfig:
    """How a captioner turns language-model logits into tokens.

    ``greedy`` is the reference decoding of the published CLIP-prefix numbers; ``beam`` is ClipCap's
    alternative; ``sample`` (top-k / top-p / temperature, seeded) is how SBG draws its candidates. The
    user-facing fields, their defaults and bounds are declared once in ``icg.options.DECODING``; ``stop``
    and ``stop_at_eos`` belong to the model. A seed of -1 means "draw one" (the captioner does, and
    reports it), the same as None.
    """

    strategy: str = _default("strategy")
    max_new_tokens: int = _default("max_new_tokens")
    stop: str | None = "."  # text of the token that ends a caption; None: only EOS ends it
    stop_at_eos: bool = True
    num_beams: int = _default("num_beams")
    length_penalty: float = _default("length_penalty")
    num_samples: int = _default("num_samples")
    top_k: int = _default("top_k")
    top_p: float = _default("top_p")
    temperature: float = _default("temperature")
    repetition_penalty: float = _default("repetition_penalty")
    no_repeat_ngram_size: int = _default("no_repeat_ngram_size")
    seed: int | None = _default("seed")

    def __post_init__(self) -> None:
        for option in DECODING:
            value = option.check(getattr(self, option.name), "decoding", front_end=False)
            if option.name == "seed" and value is not None and value < 0:
                value = None
            object.__setattr__(self, option.name, value)

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
