"""Inputs other than windows, end to end on real data shipped in wheels: scikit-learn's
breast-cancer measurements as (N, 30) feature vectors and its 8x8 digit scans as
(N, 1, 8, 8) images, with tiny `--base` builders for them (an MLP and a CNN with Conv2d).

    write_splits(kind, folder)   # -> {"base": npz, "line": npz, "test": npz}, real samples
    build_line(kind, folder)     # base pretrained (full) on "base", LoRA trained on "line",
                                 # exported attached (bundle/) and merged (model.onnx)

`--base shape_models:mlp` / `shape_models:cnn` (tests/ is on sys.path under pytest). Torch
and scikit-learn are imported by the functions that need them, so the gateway run can read
SHAPES without either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# kind -> (sample shape, `--base` spec, epochs to pretrain the base, epochs for the adapter)
SHAPES: dict[str, tuple[tuple[int, ...], str, int, int]] = {
    "features": ((30,), "shape_models:mlp", 30, 30),
    "images": ((1, 8, 8), "shape_models:cnn", 8, 8),
}


def mlp():
    """A base for (N, 30) feature vectors: two hidden Linear layers and a `head`."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.head = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 30) -> (N, 2)
            return self.head(self.body(x))

    torch.manual_seed(0)  # the same base whenever it is built without --weights
    return MLP()


def cnn():
    """A base for (N, 1, 8, 8) images: two Conv2d layers, a Linear and a `head`."""
    import torch
    from torch import nn

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2))  # (N, 16, 4, 4)
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU())
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8) -> (N, 10)
            return self.head(self.fc(self.conv(x)))

    torch.manual_seed(0)
    return CNN()


def real_samples(kind: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(X (N, *shape) float32, y (N,) int64, class names, names of axis 0) from the
    datasets scikit-learn ships: breast cancer (569 x 30) or digits (1797 x 1 x 8 x 8)."""
    from sklearn import datasets

    if kind == "features":
        data = datasets.load_breast_cancer()
        return (data.data.astype(np.float32), data.target.astype(np.int64),
                [str(n) for n in data.target_names], [str(n) for n in data.feature_names])
    data = datasets.load_digits()
    X = data.images.astype(np.float32)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    return X, data.target.astype(np.int64), [str(n) for n in data.target_names], ["gray"]


def write_splits(kind: str, folder: Path) -> dict[str, Path]:
    """The real samples split 40 / 40 / 20 (seeded) into base.npz (to pretrain the base),
    line.npz (the line's adapter) and test.npz; {split: path}."""
    X, y, classes, names = real_samples(kind)
    order = np.random.default_rng(0).permutation(len(X))
    cut = [int(len(X) * 0.4), int(len(X) * 0.8)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in zip(("base", "line", "test"), np.split(order, cut), strict=True):
        paths[split] = folder / f"{split}.npz"
        np.savez(paths[split], X=X[rows], y=y[rows], class_names=np.array(classes),
                 channel_names=np.array(names))
    return paths


@dataclass
class Line:
    """What `build_line` made: the data splits, the base weights, the adapter directory, the
    attached bundle and the merged model."""

    kind: str
    shape: tuple[int, ...]
    data: dict[str, Path]
    weights: Path
    adapter: Path
    bundle: Path
    merged: Path


def build_line(kind: str, folder: Path) -> Line:
    """Pretrain the base (`--method full`) on base.npz, train a LoRA adapter on line.npz
    with the Python API, export it attached (bundle/, adapter `line-a`) and merged."""
    from export.onnx.attach import export_attach
    from export.onnx.merge import export_merged
    from export.train import train

    shape, spec, base_epochs, line_epochs = SHAPES[kind]
    data = write_splits(kind, folder / "data")
    train(base=spec, data=data["base"], method="full", epochs=base_epochs, lr=3e-3,
          out=folder / "base", progress=False)
    weights = folder / "base" / "model.safetensors"
    train(base=spec, weights=weights, data=data["line"], test_data=data["test"], method="lora",
          rank=4, epochs=line_epochs, out=folder / "line-a", progress=False)
    bundle, merged = folder / "bundle", folder / "model.onnx"
    export_attach(base=spec, weights=weights, adapters=[folder / "line-a"], out=bundle,
                  data=data["line"], input_shape_=shape)
    export_merged(base=spec, weights=weights, adapter=folder / "line-a", out=merged,
                  data=data["line"], input_shape_=shape)
    return Line(kind, shape, data, weights, folder / "line-a", bundle, merged)
