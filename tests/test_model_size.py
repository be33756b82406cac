"""benchmarks/model_size.py's pooled pretraining set: several bundled sets as one npz whose
classes keep the set they came from, read back by load_dataset like any user's file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from export.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _bench(monkeypatch):
    """benchmarks/model_size.py as a module (it reorders sys.path on import: restored after)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("model_size_bench",
                                                  ROOT / "benchmarks" / "model_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooled_sets_keep_prefixed_class_names(tmp_path, monkeypatch):
    bench = _bench(monkeypatch)
    assert not set(bench.PRETRAIN_SETS) & {"ArrowHead", "ItalyPowerDemand", "ACSF1"}
    paths = bench.write_pooled(("GunPoint", "OSULeaf"), tmp_path, length=64)
    train = load_dataset(paths["train"])
    test = load_dataset(paths["test"], class_names=train.class_names)
    parts = {name: (load_dataset(f"ucr:{name}:train", length=64),
                    load_dataset(f"ucr:{name}:test", length=64)) for name in ("GunPoint",
                                                                              "OSULeaf")}
    gun, osu = parts["GunPoint"], parts["OSULeaf"]
    assert train.class_names == ([f"GunPoint:{c}" for c in gun[0].class_names]
                                 + [f"OSULeaf:{c}" for c in osu[0].class_names])
    assert train.X.shape == (len(gun[0]) + len(osu[0]), 1, 64)
    for pooled, (g, o) in ((train, (gun[0], osu[0])), (test, (gun[1], osu[1]))):
        np.testing.assert_array_equal(pooled.X, np.concatenate([g.X, o.X]))
        # each window keeps its class: OSULeaf's ids follow GunPoint's 2 classes
        np.testing.assert_array_equal(pooled.y, np.concatenate([g.y, o.y + g.num_classes]))
