"""edge-export through click's runner: train, inspect, one-line errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edge.errors import DataError  # noqa: E402
from export.cli import main  # noqa: E402
from export.data import load_dataset  # noqa: E402

TINY = ["--model-config", "d_model=16", "--model-config", "depth=1",
        "--model-config", "heads=2", "--length", "64"]
FAST = ["--epochs", "2", "--batch-size", "16", "--no-progress"]




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli_data")
    out = {}
    for name, spec in (("arrow", "ucr:ArrowHead:train"), ("gun", "ucr:GunPoint:train")):
        ds = load_dataset(spec, length=64)
        out[name] = tmp / f"{name}.npz"
        np.savez(out[name], X=ds.X, y=np.asarray(ds.class_names)[ds.y])
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, Path]:
    """A tiny base (full, on ArrowHead) and a LoRA adapter on GunPoint, both via the CLI."""
    tmp = tmp_path_factory.mktemp("cli_runs")
    runner = CliRunner()
    base = runner.invoke(main, ["train", "--method", "full", "--data", str(data["arrow"]),
                                "--out", str(tmp / "base"), *TINY, *FAST])
    assert base.exit_code == 0, base.output
    weights = tmp / "base" / "model.safetensors"
    lora = runner.invoke(main, ["train", "--weights", str(weights), "--data", str(data["gun"]),
                                "--method", "lora", "--rank", "4", "--targets", "q,v",
                                "--out", str(tmp / "line7"), *FAST])
    assert lora.exit_code == 0, lora.output
    assert "wrote" in lora.output and "accuracy" in lora.output
    return {"weights": weights, "adapter": tmp / "line7", "base_dir": tmp / "base"}


def test_train_writes_an_adapter_with_the_cli_options(trained):
    metrics = json.loads((trained["adapter"] / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["rank"] == 4 and metrics["alpha"] == 8
    assert metrics["targets"] == ["blocks.0.attn.q", "blocks.0.attn.v"]
    assert metrics["epochs"] == 2 and metrics["eval_split"] == "val"


def test_inspect_adapter_dir(trained):
    result = CliRunner().invoke(main, ["inspect", str(trained["adapter"])])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0].endswith(": lora")
    for phrase in ("base_fingerprint:", "file_bytes:", "r: 4", "class_names", "preprocessing",
                   "base_model.model.blocks.0.attn.q.lora_A.weight  float32 (4, 16)"):
        assert phrase in out


def test_inspect_json_and_weights(trained):
    runner = CliRunner()
    info = json.loads(runner.invoke(main, ["inspect", "--json", str(trained["adapter"])]).output)
    assert info["kind"] == "lora" and len(info["base_fingerprint"]) == 64
    assert info["tensors"]["base_model.model.head.weight"] == ["float32", [2, 16]]
    assert info["metadata"]["name"] == "line7"
    weights = runner.invoke(main, ["inspect", str(trained["base_dir"])])
    assert weights.exit_code == 0 and "weights" in weights.output.splitlines()[0]
    assert "stem.conv1.weight" in weights.output


def error_of(result) -> str:
    """The one stderr line of a failed command."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args, code, phrase", [
    (["train", "--data", "{tmp}/missing.npz", "--out", "{tmp}/o"], 3, "not found"),
    (["train", "--data", "{tmp}/empty.npz", "--out", "{tmp}/o"], 3, "empty file"),
    (["train", "--data", "{gun}", "--out", "{tmp}/o", "--weights", "{tmp}/nope.safetensors"],
     2, "--weights"),
    (["train", "--data", "{gun}", "--out", "{tmp}/o", "--rank", "0"], 2, "--rank"),
    (["train", "--data", "{gun}", "--out", "{tmp}/o", "--model-config", "d_model"], 2,
     "KEY=VALUE"),
    (["inspect", "{tmp}/nothing"], 2, "no such file"),
    (["inspect", "{tmp}/empty.npz"], 2, "not something inspect knows"),
])  # fmt: skip
def test_errors_are_one_line_with_the_exit_code(data, tmp_path, args, code, phrase):
    (tmp_path / "empty.npz").write_bytes(b"")
    args = [a.format(tmp=tmp_path, gun=data["gun"]) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    line = error_of(result)
    assert line.startswith("error: ") and phrase in line


def test_existing_out_is_refused_without_force(data, trained):
    result = CliRunner().invoke(main, ["train", "--data", str(data["gun"]), "--weights",
                                       str(trained["weights"]), "--out", str(trained["adapter"])])
    assert result.exit_code == 2 and "--force" in error_of(result)


def test_a_broken_adapter_dir_is_an_adapter_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{not json")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "bad")])
    assert result.exit_code == 4 and "not valid JSON" in error_of(result)


def test_debug_shows_the_traceback(tmp_path):
    args = ["--debug", "train", "--data", str(tmp_path / "missing.npz"), "--out",
            str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and isinstance(result.exception, DataError)
    assert "error: " not in result.stderr
