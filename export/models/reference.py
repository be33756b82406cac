"""The bundled reference sensor model: a 1-D conv stem and a small transformer encoder.

Every layer an adapter may target is a plain `nn.Linear` or `nn.Conv1d` leaf with a stable
name (`stem.conv1`, `blocks.0.attn.q`, `blocks.1.mlp.fc2`, `head`, ...), and attention is
written out with matmul/softmax rather than `nn.MultiheadAttention`, whose fused in-projection
LoRA cannot target and whose export is harder to follow. The forward pass only uses ops that
trace to ONNX (opset 17) with a dynamic batch axis.

Shapes: B batch, C input channels, L window length, T = L / patch tokens, D = d_model,
H heads, K classes. The patch must divide L; left unset, it is the largest divisor of L up
to DEFAULT_PATCH (L = 100: patch 5), and `config` records the one chosen.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from edge.errors import ConfigError

__all__ = ["DEFAULT_PATCH", "SensorTransformer", "build_reference", "fitting_patch"]

DEFAULT_PATCH = 8


def fitting_patch(length: int, most: int = DEFAULT_PATCH) -> int:
    """The largest patch up to `most` that divides `length` (1 always does)."""
    return max(p for p in range(1, min(most, length) + 1) if length % p == 0)


class ConvStem(nn.Module):
    """(B, C, L) -> (B, D, T): a local conv, then non-overlapping patches."""

    def __init__(self, in_channels: int, d_model: int, patch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, d_model, kernel_size=7, padding=3)
        self.act = nn.GELU()
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))  # (B, D, L)
        return self.conv2(x)  # (B, D, T)


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections (LoRA targets)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (d_model // heads) ** -0.5
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # traced as Shape ops, so the batch axis stays dynamic in ONNX
        # (B, T, D) -> (B, T, H, D/H) -> (B, H, T, D/H)
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        v = self.v(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (B, H, T, T)
        att = self.attn_drop(torch.softmax(att, dim=-1))
        out = torch.matmul(att, v)  # (B, H, T, D/H)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_drop(self.o(out))


class Mlp(nn.Module):
    """(B, T, D) -> (B, T, D) through a hidden width of D * mlp_ratio."""

    def __init__(self, d_model: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_model * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_model * mlp_ratio, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))  # (B, T, D * mlp_ratio)
        return self.drop(self.fc2(x))  # (B, T, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = Mlp(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, T, D)
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class SensorTransformer(nn.Module):
    """Multichannel windows (B, C, L) -> class logits (B, K).

    `config` holds every constructor argument, so `build_reference(model.config)` rebuilds
    the same architecture.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        length: int = 256,
        d_model: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        patch: int | None = None,
        dropout: float = 0.1,
        window_norm: bool = False,
    ) -> None:
        super().__init__()
        if patch is None and _positive_int(length):
            patch = fitting_patch(length)
        self.config: dict[str, Any] = {
            "in_channels": in_channels, "num_classes": num_classes, "length": length,
            "d_model": d_model, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio,
            "patch": patch, "dropout": dropout, "window_norm": window_norm,
        }  # fmt: skip
        _check_config(self.config)
        tokens = length // patch
        self.stem = ConvStem(in_channels, d_model, patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d_model))  # (1, T, D) learned
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config["window_norm"]:
            # Each window and channel z-normalised, in the graph: sensor scales span orders of
            # magnitude between machines (PLAID peaks: 0.01 to 450), which one mean/std per
            # channel cannot even out. The gateway needs nothing extra.
            mean = x.mean(dim=-1, keepdim=True)  # (B, C, 1)
            std = (x - mean).pow(2).mean(dim=-1, keepdim=True).sqrt()  # (B, C, 1)
            x = (x - mean) / (std + 1e-3)
        x = self.stem(x)  # (B, C, L) -> (B, D, T)
        x = self.drop(x.transpose(1, 2) + self.pos)  # (B, T, D)
        for block in self.blocks:
            x = block(x)  # (B, T, D)
        x = self.norm(x).mean(dim=1)  # mean over tokens: (B, D)
        return self.head(x)  # (B, K)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_config(cfg: dict[str, Any]) -> None:
    """Reject values the architecture cannot take, naming the argument."""
    for key in ("in_channels", "num_classes", "length", "d_model", "depth", "heads",
                "mlp_ratio", "patch"):  # fmt: skip
        value = cfg[key]
        if not _positive_int(value):
            raise ConfigError(f"reference model: {key} must be a positive integer, got {value!r}")
    if cfg["num_classes"] < 2:
        raise ConfigError(f"reference model: num_classes must be >= 2, got {cfg['num_classes']}")
    length, patch = cfg["length"], cfg["patch"]
    if length % patch:
        raise ConfigError(
            f"reference model: length {length} is not divisible by patch {patch}; set "
            f"--model-config patch={fitting_patch(length, patch)} (the largest divisor of "
            f"{length} up to {patch}), or leave patch unset to have it chosen"
        )
    if cfg["d_model"] % cfg["heads"]:
        raise ConfigError(
            f"reference model: d_model {cfg['d_model']} is not divisible by heads {cfg['heads']}"
        )
    dropout = cfg["dropout"]
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not (0.0 <= dropout < 1.0)
    ):
        raise ConfigError(f"reference model: dropout must be in [0, 1), got {dropout!r}")


def build_reference(config: dict[str, Any]) -> SensorTransformer:
    """Build a `SensorTransformer` from a `model.config` dict; unknown keys are a ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError(f"reference model config must be a dict, got {type(config).__name__}")
    allowed = list(inspect.signature(SensorTransformer.__init__).parameters)[1:]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ConfigError(
            f"reference model: unknown config key(s) {unknown}; allowed: {', '.join(allowed)}"
        )
    missing = [k for k in ("in_channels", "num_classes") if k not in config]
    if missing:
        raise ConfigError(f"reference model: config lacks {' and '.join(missing)}")
    return SensorTransformer(**config)
