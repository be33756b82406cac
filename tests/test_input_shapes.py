"""Inputs other than windows, end to end: (N, 30) feature vectors (scikit-learn's breast
cancer measurements) and (N, 1, 8, 8) images (its digit scans), each through a tiny base
pretrained here, a LoRA adapter trained with `export.train`, `attach` and `merge`
(tests/shape_models.py, the `shape_lines` fixture). A gateway serving them over MQTT is
tests/test_shapes_served.py, which the gateway venv runs too.

Workstation only (torch, scikit-learn).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.bundle import read_manifest, read_reference_inputs
from edge.contract import Normalizer
from edge.engine import Engine, load_adapter_file
from export.data import load_dataset

ERRORS = "factory/gw-test/errors"
WAIT_S = 60.0
BIN = "application/octet-stream"


@pytest.fixture(params=["features", "images"])
def line(request, shape_lines):
    return shape_lines[request.param]


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
