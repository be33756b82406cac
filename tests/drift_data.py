"""Real lines for the drift tests and benchmarks/drift.py: a model, its training windows'
profile, and the shifts a line's inputs go through. Torch-free (the gateway run imports it).

    line = bundle_line(bundle_dir)           # BasicMotions: the fixture bundle's base model
    line = centroid_line("GunPoint")         # ucr data (sktime): a nearest-centroid model
    probs = line.predict(x_raw)              # (n, K) softmax scores, onnxruntime or numpy
    mean, std, top, cls, features = line.observations(x_raw)   # features (n, D) or None
    shifted = SHIFTS["gain"](x_raw, line)    # gain x2, offset +1 std, noise, swap, foreign

The profile is what the export side stores (edge/drift/profile.py): decile histograms of
each raw training window's per-channel mean and std, the predicted class mix and the
top-score histogram of the model's outputs on the training windows; for a bundle, the
profile its manifest carries (with the penultimate-feature statistics the centroid lines,
which have no features, lack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import read_manifest
from edge.codec import softmax
from edge.contract import Normalizer
from edge.drift.monitor import window_stats
from edge.drift.profile import ClassProfile, DriftProfile, InputProfile, histogram


@dataclass
class Line:
    """One line's model and data: raw train / test windows (N, C, L) float32."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]  # raw (n, C, L) -> scores (n, K)
    train: np.ndarray
    test: np.ndarray
    class_names: list[str]
    profile: DriftProfile | None = None
    features: Callable[[np.ndarray], np.ndarray] | None = None  # raw -> (n, D) penultimate

    def __post_init__(self) -> None:
        if self.profile is None:
            self.profile = make_profile(self.train, self.predict(self.train), self.class_names)

    def observations(self, x: np.ndarray) -> tuple[np.ndarray | None, ...]:
        """What the gateway's drift watch gets for raw windows x: mean, std (n, C), top,
        cls (n,), features (n, D) or None."""
        mean, std = window_stats(x)
        probs = self.predict(x)
        features = None if self.features is None else self.features(x)
        return mean, std, probs.max(axis=1), probs.argmax(axis=1), features


def make_profile(x: np.ndarray, probs: np.ndarray, class_names: list[str]) -> DriftProfile:
    """The reference profile of raw windows x (N, C, L) and the model's scores on them."""
    mean, std = window_stats(x)
    shares = np.bincount(probs.argmax(axis=1), minlength=len(class_names)) / len(x)
    top = probs.max(axis=1)
    return DriftProfile(
        n_windows=len(x),
        inputs=InputProfile(window_mean=[histogram(mean[:, c]) for c in range(x.shape[1])],
                            window_std=[histogram(std[:, c]) for c in range(x.shape[1])]),
        classes=ClassProfile(names=list(class_names), shares=shares.tolist()),
        top_score=histogram(top), top_score_mean=float(top.mean()))


def bundle_line(bundle: Path, train: np.ndarray, test: np.ndarray) -> Line:
    """The bundle's base model run by onnxruntime on its own normalisation, with the drift
    profile its manifest carries (computed at export) and its features output."""
    from edge.engine import Engine

    manifest = read_manifest(bundle)
    engine = Engine(bundle / "base.onnx", bind="off")
    norm = Normalizer.from_preprocessing(manifest.base.preprocessing, train.shape[1])

    def outputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return engine.run_with_features(norm.apply(np.array(x, np.float32)))

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(outputs(x)[0][:, :len(manifest.base.class_names)])

    features = None if engine.features_output is None else (lambda x: outputs(x)[1])
    return Line("BasicMotions", predict, train, test, list(manifest.base.class_names),
                manifest.base.drift_profile, features)


def centroid_line(dataset: str) -> Line:
    """A UCR dataset (sktime's copy) with a nearest-centroid model on normalised windows:
    scores are the softmax of minus the squared distance per sample to each class centroid."""
    from export.data import load_dataset

    train = load_dataset(f"ucr:{dataset}:train")
    test = load_dataset(f"ucr:{dataset}:test", class_names=train.class_names)
    norm = Normalizer.from_data(train.X)
    z = norm.apply(train.X.copy())
    centroids = np.stack([z[train.y == k].mean(axis=0) for k in range(train.num_classes)])
    scale = float(np.median(((z - centroids[train.y]) ** 2).mean(axis=(1, 2))))

    def predict(x: np.ndarray) -> np.ndarray:
        zx = norm.apply(np.array(x, np.float32))  # (n, C, L)
        d = ((zx[:, None] - centroids[None]) ** 2).mean(axis=(2, 3))  # (n, K)
        return softmax(-d / scale)

    return Line(dataset, predict, train.X, test.X, train.class_names)


# -- shifts: raw windows (n, C, L) -> shifted copies -------------------------------------------
def _channel_std(line: Line) -> np.ndarray:
    return line.train.std(axis=(0, 2), keepdims=True)[0]  # (C, 1)


def foreign_windows(line: Line, other: np.ndarray) -> np.ndarray:
    """Windows of another dataset (N', C', L'), fitted to the line's shape: channels cycled,
    time resampled linearly."""
    _, c, length = line.train.shape
    other = other[:, np.arange(c) % other.shape[1]]
    t_old = np.linspace(0.0, 1.0, other.shape[2])
    t_new = np.linspace(0.0, 1.0, length)
    flat = other.reshape(-1, other.shape[2])
    out = np.stack([np.interp(t_new, t_old, row) for row in flat])  # rows: N'*C
    return out.reshape(len(other), c, length).astype(np.float32)


SHIFTS: dict[str, Callable[[np.ndarray, Line, np.random.Generator], np.ndarray]] = {
    "gain x2": lambda x, line, rng: x * 2.0,
    "offset +1 std": lambda x, line, rng: x + _channel_std(line),
    "noise 0.5 std": lambda x, line, rng: x + rng.normal(size=x.shape) * 0.5 * _channel_std(line),
    "swapped channels": lambda x, line, rng: x[:, ::-1] if x.shape[1] > 1 else x,
}


def feed(monitor, obs: tuple[np.ndarray | None, ...], rows: np.ndarray | slice):
    """Rows of `obs` (mean, std, top, cls, features) into a DriftMonitor, as the watch
    feeds it (features -> Mahalanobis distances); its Evaluation or None."""
    mean, std, top, cls, features = (None if a is None else a[rows] for a in obs)
    return monitor.observe(mean, std, top, cls, monitor.distances(features))


def stream(monitor, obs: tuple[np.ndarray | None, ...], order: np.ndarray,
           batch: int = 8) -> list:
    """Feed the rows `order` of `obs` in batches; the evaluations."""
    out = []
    for start in range(0, len(order), batch):
        ev = feed(monitor, obs, order[start:start + batch])
        if ev is not None:
            out.append(ev)
    return out


def trained_line(dataset: str, out: Path, epochs: int = 60, seed: int = 0) -> Line:
    """A reference model trained from scratch on a UCR dataset (`edge-export train --method
    full`, a stratified 20% held out), run in torch, with the drift profile train wrote."""
    import json

    import torch

    from export.data import load_dataset
    from export.features import features_of, head_path
    from export.train import train

    train_ds = load_dataset(f"ucr:{dataset}:train")
    length = train_ds.length
    # the smallest patch >= 8 that divides the length into at most 96 tokens (the reference
    # model's own choice, the largest divisor <= 8, gives ACSF1's 1460 samples 292 tokens)
    patch = next(p for p in range(max(8, -(-length // 96)), length + 1) if length % p == 0)
    result = train(data=f"ucr:{dataset}:train", method="full", epochs=epochs, seed=seed,
                   model_config={"patch": patch}, out=out, force=True, progress=False)
    model, norm = result.model.eval(), result.channel_stats
    meta = json.loads((Path(out) / "edge_model.json").read_text())
    test = load_dataset(f"ucr:{dataset}:test", class_names=result.class_names)
    x0 = torch.from_numpy(norm.apply(train_ds.X[:2].copy()))
    path = head_path(model, (x0,))

    def outputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = features_of(model, torch.from_numpy(norm.apply(np.array(x, np.float32))),
                                    path)
        return logits.numpy(), feats.numpy()

    return Line(dataset, lambda x: softmax(outputs(x)[0]), train_ds.X, test.X,
                list(result.class_names), DriftProfile.model_validate(meta["drift_profile"]),
                lambda x: outputs(x)[1])
