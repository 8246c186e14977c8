"""Mapping networks from a CLIP feature to a GPT-2 prefix, and their shape-based detection.

The module and parameter names match the published checkpoints (``clip_project.*`` keys), so a
predecessor ``state_dict`` loads without renaming:

- ``mlp``: ``model.0`` Linear(clip_dim -> hidden), Tanh, ``model.2`` Linear(hidden -> P * E)
- ``linear``: one Linear(clip_dim -> P * E)
- ``transformer``: ClipCap's transformer mapper (``linear``, ``prefix_const``, ``transformer.layers.*``)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from icg.errors import CheckpointError

MAPPER_KINDS = ("mlp", "linear", "transformer")


@dataclass(frozen=True)
class MapperConfig:
    kind: str  # one of MAPPER_KINDS
    clip_dim: int
    embed_dim: int  # GPT-2 embedding width E
    prefix_length: int  # P
    hidden_dim: int | None = None  # mlp only
    clip_length: int | None = None  # transformer only
    num_layers: int | None = None  # transformer only
    num_heads: int = 8  # transformer only; not visible in the shapes


class MlpMapper(nn.Module):
    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        out = cfg.embed_dim * cfg.prefix_length
        self.model = nn.Sequential(
            nn.Linear(cfg.clip_dim, cfg.hidden_dim), nn.Tanh(), nn.Linear(cfg.hidden_dim, out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, P*E)
        return self.model(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim)
        self.to_keys_values = nn.Linear(dim, dim * 2)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.to_queries(x).reshape(b, n, h, c // h).transpose(1, 2)  # (B, h, n, d)
        kv = self.to_keys_values(x).reshape(b, n, 2, h, c // h)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.project(out)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _FeedForward(dim, dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Stack(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(dim, num_heads) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the CLIP feature becomes ``clip_length`` tokens, a learned constant
    supplies ``prefix_length`` more, and the transformer's outputs at the constant's positions are the
    prefix."""

    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        self.clip_length = cfg.clip_length
        self.linear = nn.Linear(cfg.clip_dim, cfg.clip_length * cfg.embed_dim)
        self.prefix_const = nn.Parameter(torch.zeros(cfg.prefix_length, cfg.embed_dim))
        self.transformer = _Stack(cfg.embed_dim, cfg.num_heads, cfg.num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = self.linear(x).view(b, self.clip_length, -1)
        const = self.prefix_const.unsqueeze(0).expand(b, -1, -1)
        out = self.transformer(torch.cat((tokens, const), dim=1))[:, self.clip_length :]
        return out.reshape(b, -1)


def build_mapper(cfg: MapperConfig) -> nn.Module:
    if cfg.kind == "mlp":
        return MlpMapper(cfg)
    if cfg.kind == "linear":
        return nn.Linear(cfg.clip_dim, cfg.embed_dim * cfg.prefix_length)
    if cfg.kind == "transformer":
        return TransformerMapper(cfg)
    raise CheckpointError(f"unknown mapper kind {cfg.kind!r}; expected one of {', '.join(MAPPER_KINDS)}")


def infer_mapper_config(
    state: dict[str, torch.Tensor],
    embed_dim: int,
    *,
    num_heads: int = 8,
    prefix_length: int | None = None,
    source: str = "checkpoint",
) -> MapperConfig:
    """Tell the mapper architecture from the shapes of its ``clip_project.*`` tensors (prefix stripped)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}

    def need(key: str, ndim: int) -> tuple[int, ...]:
        shape = shapes.get(key)
        if shape is None or len(shape) != ndim:
            raise CheckpointError(f"{source}: mapper tensor {key!r} missing or not {ndim}-D (found {shape})")
        return shape

    def prefix_len(out_features: int) -> int:
        if out_features % embed_dim:
            raise CheckpointError(
                f"{source}: mapper output size {out_features} is not a multiple of "
                f"the GPT-2 width {embed_dim}"
            )
        return out_features // embed_dim

    if "model.0.weight" in shapes:
        hidden, clip_dim = need("model.0.weight", 2)
        out, hidden2 = need("model.2.weight", 2)
        if hidden2 != hidden:
            raise CheckpointError(f"{source}: MLP layers do not chain ({hidden} -> {hidden2})")
        if any(re.fullmatch(r"model\.[4-9]\.weight", k) for k in shapes):
            raise CheckpointError(f"{source}: MLP mappers with more than two layers are not supported")
        return MapperConfig("mlp", clip_dim, embed_dim, prefix_len(out), hidden_dim=hidden)
    if "prefix_const" in shapes:
        plen, width = need("prefix_const", 2)
        if width != embed_dim:
            raise CheckpointError(f"{source}: prefix_const width {width} != GPT-2 width {embed_dim}")
        out, clip_dim = need("linear.weight", 2)
        layers = {int(m.group(1)) for k in shapes if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
        if not layers:
            raise CheckpointError(f"{source}: transformer mapper without layers")
        return MapperConfig(
            "transformer",
            clip_dim,
            embed_dim,
            plen,
            clip_length=prefix_len(out),
            num_layers=max(layers) + 1,
            num_heads=num_heads,
        )
    if "weight" in shapes:
        out, clip_dim = need("weight", 2)
        plen = prefix_len(out)
        if prefix_length is not None and plen != prefix_length:
            raise CheckpointError(
                f"{source}: linear mapper gives {plen} prefix tokens, expected {prefix_length}"
            )
        return MapperConfig("linear", clip_dim, embed_dim, plen)
    raise CheckpointError(
        f"{source}: no known mapper layout in clip_project.* (keys: {', '.join(sorted(shapes)[:6])}...)"
    )
