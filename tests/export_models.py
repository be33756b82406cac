"""Small non-reference base models for export tests, importable as `--base module:callable`."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer stack over (N, C, L) windows -> (N, K) logits."""

    def __init__(self, channels: int = 3, d_model: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.transpose(1, 2))  # (N, L, C) -> (N, L, D)
        return self.head(self.encoder(h).mean(1))


class ConvNet(nn.Module):
    """Conv2d feature extractor over (N, 1, H, W) images -> (N, K)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.mean((2, 3)))


def build_encoder() -> nn.Module:
    torch.manual_seed(1)
    return Encoder()


def build_convnet() -> nn.Module:
    torch.manual_seed(2)
    return ConvNet()
