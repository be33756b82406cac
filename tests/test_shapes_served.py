"""A gateway serving inputs other than windows over a real Mosquitto: (30,) feature vectors
(scikit-learn's breast cancer measurements) and (1, 8, 8) images (its digit scans), each a
bundle with a LoRA adapter `line-a` (tests/shape_models.py), fed JSON and binary payloads of
that shape. Runs in the gateway venv too, on the checked-in bundles and held-out rows
(tests/data/gateway_bundles.tar.xz, part "shapes")."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from gateway_data import SHAPE_KINDS
from test_runtime import Collector, Publisher, exactly_once

from edge.bundle import read_manifest
from edge.codec import softmax
from edge.contract import Preprocessing
from edge.engine import Engine, load_adapter_file
from edge.mqtt import publish_properties
from export.demo.local_broker import write_runtime_config

WAIT_S = 60.0
BIN = "application/octet-stream"


def offline(bundle, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) of line-a on raw samples x (N, *shape), as onnxruntime gives
    them outside the gateway."""
    manifest = read_manifest(bundle)
    entry = manifest.adapter("line-a")
    pre = Preprocessing.from_dict(entry.preprocessing.to_dict())
    mean = np.asarray(pre.mean, np.float32).reshape(-1, *[1] * (x.ndim - 2))  # (C, 1, ...)
    std = np.asarray(pre.std, np.float32).reshape(mean.shape)
    logits = Engine(bundle / manifest.base.file).run(
        (x - mean) / std, load_adapter_file(bundle / entry.file))
    return softmax(logits[:, :len(entry.class_names)])


def bad_payloads(shape: tuple[int, ...], good: np.ndarray) -> list[tuple[str, bytes, object, str]]:
    """(name, payload, properties, words of the reason) of broken messages of one shape."""
    nested = good.tolist()
    deep = json.dumps({"id": "too deep", "values": good[..., None].tolist()}).encode()
    ragged = [*nested[:-1], nested[-1][:-1] if len(shape) > 1 else "x"]
    last = f"{shape[-1] - 1}"
    nan = good.copy()
    nan.flat[-1] = np.nan
    dims = ",".join(map(str, shape))
    wrong = ",".join(map(str, (*shape[:-1], shape[-1] + 1)))
    return [
        ("too deep", deep, None, " 0: expected a number, got list"),
        ("ragged", json.dumps({"id": "ragged", "values": ragged}).encode(), None,
         "values: " + ("channel" if len(shape) > 1 else "feature")),
        ("string", json.dumps({"id": "string", "values": "1,2"}).encode(), None,
         "got string"),
        ("NaN", json.dumps({"id": "NaN", "values": nan.tolist()}).encode(), None,
         f"{last}: NaN or Infinity"),
        ("short binary", good.astype("<f4").tobytes()[:-4], {"id": "short binary"},
         f"expected {'x'.join(map(str, shape))} float32 values"),
        ("shape property", good.astype("<f4").tobytes(), {"id": "shape property",
                                                          "shape": wrong},
         f"does not match the expected {dims}"),
        ("NaN binary", nan.astype("<f4").tobytes(), {"id": "NaN binary"}, "NaN or Infinity"),
    ]


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_the_gateway_serves_the_shape(kind, shape_bundles, mosquitto, started, tmp_path):
    """Real test samples as JSON (nested like the shape) and binary (C order, user property
    shape "d1,d2,..."): one result each, with the scores onnxruntime gives the same samples
    offline; broken payloads of the same shape get one error each and the service keeps
    serving; the drift watch evaluates the line (its statistics per feature or channel)."""
    bundle = shape_bundles / kind
    with np.load(shape_bundles / "samples" / f"{kind}.npz") as samples:
        x = samples["X"]  # (32, *shape) raw held-out rows
    shape = x.shape[1:]
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=bundle,
                                  lines={"line-a": {"adapter": "line-a"}},
                                  drift={"window": 8, "every": 4, "min_windows": 8,
                                         "publish_s": 0.0})
    collector = Collector(mosquitto.port)
    started(config)
    pub = Publisher(mosquitto.port)
    topic = "factory/line-a/sensors/cam-1"
    bad = bad_payloads(shape, x[0])
    for i, sample in enumerate(x):
        if i % 2:
            props = {"id": f"s{i}", "shape": ",".join(map(str, shape))}
            pub.raw(topic, sample.astype("<f4").tobytes(), publish_properties(BIN, props))
        else:
            pub.raw(topic, json.dumps({"id": f"s{i}", "values": sample.tolist()}).encode())
        if i < len(bad):
            name, payload, props, _ = bad[i]
            pub.raw(topic, payload, None if props is None else publish_properties(BIN, props))
    pub.close()
    ids = [f"s{i}" for i in range(len(x))] + [b[0] for b in bad]
    assert collector.wait(lambda c: len(c.answers()) >= len(ids), WAIT_S), collector.answers()
    time.sleep(0.2)  # a duplicate answer would show now
    exactly_once(collector.answers(), ids)
    want = offline(bundle, x)
    results = {d["id"]: d for d in collector.docs("/inference")}
    labels = read_manifest(bundle).adapter("line-a").class_names
    for i in range(len(x)):
        got = results[f"s{i}"]["scores"]
        np.testing.assert_allclose([got[n] for n in labels], want[i], atol=1e-5)
    errors = {d["id"]: d["reason"] for d in collector.docs("/errors")}
    for name, _, _, words in bad:
        assert words in errors[name], (name, errors[name])
    assert collector.wait(lambda c: any(d.get("windows", 0) >= 8
                                        for d in c.docs("/drift/line-a")), WAIT_S)
    drift = [d for d in collector.docs("/drift/line-a") if d.get("windows", 0) >= 8][-1]
    assert drift["state"] in ("ok", "warn", "drift")
    assert drift["indicators"] and all(math.isfinite(v) for v in drift["indicators"].values())
    collector.close()
