"""Inputs other than windows, end to end: (N, 30) feature vectors (scikit-learn's breast
cancer measurements) and (N, 1, 8, 8) images (its digit scans), each through a tiny base
pretrained here, a LoRA adapter trained with `export.train`, `attach` and `merge`, and a
running gateway fed JSON and binary payloads of that shape over a real Mosquitto.

Workstation only (torch, scikit-learn): tests/shape_models.py builds everything.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from shape_models import build_line
from test_runtime import Collector, Publisher, exactly_once

from edge.bundle import read_manifest, read_reference_inputs
from edge.codec import softmax
from edge.contract import Normalizer, Preprocessing
from edge.engine import Engine, load_adapter_file
from edge.mqtt import publish_properties
from export.data import load_dataset
from export.demo.local_broker import write_runtime_config

ERRORS = "factory/gw-test/errors"
WAIT_S = 60.0
BIN = "application/octet-stream"


@pytest.fixture(scope="module", params=["features", "images"])
def line(request, tmp_path_factory):
    return build_line(request.param, tmp_path_factory.mktemp(request.param))


def test_training_records_the_sample_shape(line):
    """The adapter learnt its line (real data, held-out test split) and every record the
    gateway reads says the sample shape: the manifest's input, the preprocessing (per
    feature for (F,), per channel for (C, H, W)), the drift profile's channels."""
    metrics = json.loads((line.adapter / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["accuracy"] > 0.85
    manifest = read_manifest(line.bundle)
    assert manifest.inputs[0].shape == ["batch", *line.shape]
    entry = manifest.adapter("line-a")
    pre = entry.preprocessing
    assert pre.shape == list(line.shape) and pre.length is None
    assert pre.sample_shape == line.shape and len(pre.mean) == line.shape[0]
    assert set(pre.to_dict()) == {"shape", "channel_names", "mean", "std"}
    train = load_dataset(line.data["line"])
    assert pre.channel_names == train.channel_names  # the feature names, or ["gray"]
    if line.kind == "features":
        assert pre.channel_names[0] == "mean radius"
    want = Normalizer.from_data(train.X)  # --test-data given: all of line.npz trained
    assert want.rank == len(line.shape)
    np.testing.assert_array_equal(np.float32(pre.mean), want.mean)
    np.testing.assert_array_equal(np.float32(pre.std), want.std)
    assert entry.drift_profile.channels == line.shape[0]
    reference = read_reference_inputs(line.bundle, manifest)
    assert reference is not None and reference.shape[1:] == line.shape


def test_merged_model_equals_the_attached_bundle(line):
    """model.onnx (LoRA folded in) and base.onnx with the adapter file give the same logits
    on the real test samples, normalised as the manifest says."""
    manifest = read_manifest(line.bundle)
    entry = manifest.adapter("line-a")
    test = load_dataset(line.data["test"])
    x = Normalizer.from_preprocessing(entry.preprocessing, line.shape[0], len(line.shape)
                                      ).apply(test.X)  # (N, *shape)
    attached = Engine(line.bundle / manifest.base.file).run(
        x, load_adapter_file(line.bundle / entry.file))
    merged = Engine(line.merged).run(x)
    np.testing.assert_allclose(merged, attached, atol=1e-4)
    accuracy = float(np.mean(attached[:, :2 if line.kind == "features" else 10].argmax(1)
                             == test.y))
    assert accuracy > 0.85


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


def test_the_gateway_serves_the_shape(line, mosquitto, started, tmp_path):
    """Real test samples as JSON (nested like the shape) and binary (C order, user property
    shape "d1,d2,..."): one result each, with the scores onnxruntime gives the same samples
    offline; broken payloads of the same shape get one error each and the service keeps
    serving; the drift watch evaluates the line (its statistics per feature or channel)."""
    test = load_dataset(line.data["test"])
    x = test.X[:32]
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=line.bundle,
                                  lines={"line-a": {"adapter": "line-a"}},
                                  drift={"window": 8, "every": 4, "min_windows": 8,
                                         "publish_s": 0.0})
    collector = Collector(mosquitto.port)
    started(config)
    pub = Publisher(mosquitto.port)
    topic = "factory/line-a/sensors/cam-1"
    bad = bad_payloads(line.shape, x[0])
    for i, sample in enumerate(x):
        if i % 2:
            props = {"id": f"s{i}", "shape": ",".join(map(str, line.shape))}
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
    want = offline(line.bundle, x)
    results = {d["id"]: d for d in collector.docs("/inference")}
    labels = read_manifest(line.bundle).adapter("line-a").class_names
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


def test_check_adapters_scores_its_sample_of_that_shape(line):
    """The adapter's check sample (raw held-out samples of the line's shape) scores on the
    bundle as it did at training: the same base, the same answers."""
    from export.check_adapters import check_adapters

    report = check_adapters(bundle=line.bundle, adapters=[line.adapter])
    (result,) = report.adapters
    assert result.status == "ok", result.reason
    assert result.windows > 0 and result.changed == 0 and result.accuracy == result.recorded


def test_the_command_line_takes_the_input_shape(line, tmp_path):
    """`edge-export merge --input-shape 30 | 1,8,8`; a shape of 4 axes, or one that is not
    --data's, is one line naming the flag."""
    from click.testing import CliRunner

    from export.cli import main

    spec = f"shape_models:{'mlp' if line.kind == 'features' else 'cnn'}"
    args = ["merge", "--base", spec, "--weights", str(line.weights), "--adapter",
            str(line.adapter), "--data", str(line.data["line"])]
    dims = ",".join(map(str, line.shape))
    ok = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "m.onnx"), "--input-shape",
                                   dims])
    assert ok.exit_code == 0, ok.output
    assert Engine(tmp_path / "m.onnx").run(
        np.zeros((2, *line.shape), np.float32)).shape == (2, 2 if line.kind == "features" else 10)
    for bad, words in (("1,2,3,4", "1 to 3 axes"), ("6,5", "the model takes [6, 5]")):
        out = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad.onnx"),
                                        "--input-shape", bad])
        assert out.exit_code != 0 and words in out.output, out.output
        assert "--input-shape" in out.output and "Traceback" not in out.output
