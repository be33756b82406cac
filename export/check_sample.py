"""The validation sample an adapter directory keeps for base updates (`edge-export
check-adapters`): a few of the held-out windows it was scored on at training, with their labels
and the answers it gave, so a new base can be checked against what the adapter achieved.

    OUT/check_sample.npz   X (N, *sample) float32: raw samples ((N, C, L) windows, (N, F),
                           (N, C, H, W)), as a gateway receives them (before
                           the adapter's normalisation); y (N,) int64 labels and pred (N,)
                           int64 the adapter's answers at training, both indices into
                           class_names (K,) str
    edge_adapter.json      "check_sample": {file, sha256, bytes, windows, split, values,
                           accuracy, class_counts}: `accuracy` is the adapter's on exactly
                           these windows, the figure a new base is held to

N is at most SAMPLE_CAP, drawn per class in proportion (every class keeps its share of the
held-out windows). Adapters trained before this existed have no sample: the check says so.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.contract.shapes import MAX_RANK
from edge.errors import AdapterError
from export.fitting import predict

__all__ = ["SAMPLE_CAP", "SAMPLE_FILE", "SAMPLE_KEY", "CheckSample", "make_sample",
           "read_sample", "sample_indices"]

SAMPLE_KEY = "check_sample"  # its record's key in edge_adapter.json
SAMPLE_FILE = "check_sample.npz"
SAMPLE_CAP = 256  # windows: ACSF1's 100 test windows at length 256 are ~100 KB
SEED = 0


@dataclass
class CheckSample:
    """Raw samples X (N, *sample) float32, labels y (N,) and the adapter's answers pred (N,) at
    training (int64 into class_names); `accuracy` is mean(pred == y), as recorded."""

    X: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    class_names: list[str]
    split: str

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.pred == self.y))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, X=self.X, y=self.y, pred=self.pred,
                            class_names=np.asarray(self.class_names, dtype=str))
        return buffer.getvalue()

    def record(self, blob: bytes) -> dict[str, Any]:
        """The metadata entry for this sample stored as `blob` (SAMPLE_FILE's bytes)."""
        counts = np.bincount(self.y, minlength=len(self.class_names))
        return {"file": SAMPLE_FILE, "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob), "windows": len(self.y), "split": self.split,
                "values": "raw", "accuracy": self.accuracy,
                "class_counts": [int(c) for c in counts]}


def sample_indices(y: np.ndarray, classes: int, cap: int = SAMPLE_CAP,
                   seed: int = SEED) -> np.ndarray:
    """Sorted indices of at most `cap` of the windows with labels y (N,): all of them when
    they fit, else each class's share of `cap` (largest remainders round up), drawn at
    random with `seed` within each class."""
    if len(y) <= cap:
        return np.arange(len(y))
    counts = np.bincount(y, minlength=classes)  # (K,)
    exact = cap * counts / len(y)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact, kind="stable")[: cap - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:quota[c]] for c in range(classes)]
    return np.sort(np.concatenate(picked))


def make_sample(model: nn.Module, raw: np.ndarray, x: torch.Tensor, y: torch.Tensor,
                class_names: list[str], split: str) -> CheckSample:
    """The sample of the held-out windows: `raw` (N, *sample) as recorded, `x` the same windows
    normalised as the model trained, `y` (N,) their labels; the model answers the chosen ones."""
    labels = y.numpy().astype(np.int64)
    keep = sample_indices(labels, len(class_names))
    pick = torch.from_numpy(keep)
    with torch.no_grad():
        pred = predict(model, x[pick]).numpy().astype(np.int64)
    return CheckSample(np.ascontiguousarray(raw[keep], dtype=np.float32), labels[keep], pred,
                       list(class_names), split)


def read_sample(path: Path, meta: dict) -> CheckSample | None:
    """The sample adapter directory `path` keeps, checked against its record in `meta`
    (edge_adapter.json); None when it records none (trained before samples existed)."""
    record = meta.get(SAMPLE_KEY)
    if record is None:
        return None
    name = record.get("file") if isinstance(record, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise AdapterError(f"{path}: edge_adapter.json: {SAMPLE_KEY} does not name a file "
                           "of the adapter directory")
    file = path / name
    try:
        blob = file.read_bytes()
    except OSError as exc:
        raise AdapterError(f"{file}: cannot be read ({exc.strerror or exc}); edge_adapter.json "
                           "records it") from None
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise AdapterError(f"{file}: sha256 differs from the one edge_adapter.json records "
                           "(changed or damaged)")
    return _decode(blob, file, meta.get("class_names"), str(record.get("split", "")))


def _decode(blob: bytes, file: Path, class_names: Any, split: str) -> CheckSample:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            X, y, pred = data["X"], data["y"], data["pred"]
            names = [str(n) for n in data["class_names"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise AdapterError(f"{file}: not a check sample ({exc})") from None
    problem = _problem(X, y, pred, names, class_names)
    if problem:
        raise AdapterError(f"{file}: {problem}")
    return CheckSample(X, y.astype(np.int64), pred.astype(np.int64), names, split)


def _problem(X: np.ndarray, y: np.ndarray, pred: np.ndarray, names: list[str],
             class_names: Any) -> str | None:
    if not 2 <= X.ndim <= MAX_RANK + 1 or X.dtype != np.float32 or not len(X):
        return (f"X is {X.dtype} {list(X.shape)}; a sample holds (N, C, L) float32 windows "
                "(or (N, F), (N, C, H, W) samples)")
    if not np.isfinite(X).all():
        return "X holds NaN or Inf values"
    for key, labels in (("y", y), ("pred", pred)):
        if labels.shape != (len(X),) or labels.dtype.kind not in "iu":
            return f"{key} is {labels.dtype} {list(labels.shape)}; expected ({len(X)},) integers"
        if labels.min() < 0 or labels.max() >= len(names):
            return f"{key} holds labels outside 0..{len(names) - 1}"
    if class_names is not None and names != list(class_names):
        return f"class names {names} differ from the adapter's {list(class_names)}"
    return None
