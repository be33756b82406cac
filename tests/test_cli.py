"""edge-export through click's runner: train, inspect, one-line errors and exit codes (the
same as edge-runtime's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edge import cli as edge_cli  # noqa: E402
from edge.errors import NO_ONNXRUNTIME, ConfigError, DataError  # noqa: E402
from export.adapters import ADAPTER_KINDS  # noqa: E402
from export.cli import main  # noqa: E402
from export.cli.training import train_command  # noqa: E402
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


def test_the_cli_and_the_kind_registry_load_without_torch():
    """`edge-export --help` and the `--method` choices never wait for torch."""
    import subprocess
    import sys

    code = ("import sys, export.cli, export.adapters\n"
            "print(sorted(export.adapters.ADAPTER_KINDS), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split("]")[-1].strip() == "False", out.stdout


def test_method_choices_are_train_methods():
    from export.train import METHODS

    choice = next(p for p in train_command.params if p.name == "method").type
    assert tuple(choice.choices) == METHODS and set(ADAPTER_KINDS) <= set(METHODS)


# -- both CLIs end errors alike (edge/cli_errors.py) -----------------------------------------


def _both(tmp_path: Path, config: Path, *, debug: bool = False) -> list:
    """`edge-runtime run --config F` and `edge-export merge --target F`: both load F first."""
    flag = ["--debug"] if debug else []
    runner = CliRunner()
    return [runner.invoke(edge_cli.main, [*flag, "run", "--config", str(config)]),
            runner.invoke(main, [*flag, "merge", "--target", str(config), "--adapter",
                                 str(tmp_path / "adapter"), "--out", str(tmp_path / "m.onnx")])]


def test_both_clis_print_the_same_error_lines_and_exit_code(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "gw 1"\n[broker]\nport = 70000\n')
    runtime, export = _both(tmp_path, bad)
    assert runtime.exit_code == export.exit_code == ConfigError.exit_code
    assert runtime.stderr == export.stderr and runtime.stdout == export.stdout == ""
    lines = runtime.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: ") for line in lines)
    single = tmp_path / "missing.toml"  # one problem: one line
    runtime, export = _both(tmp_path, single)
    assert runtime.exit_code == export.exit_code == ConfigError.exit_code
    assert runtime.stderr == export.stderr and len(runtime.stderr.splitlines()) == 1


def test_both_clis_keep_the_traceback_with_debug(tmp_path):
    for result in _both(tmp_path, tmp_path / "missing.toml", debug=True):
        assert isinstance(result.exception, ConfigError) and "error: " not in result.stderr


def test_both_clis_name_a_missing_onnxruntime_alike(tmp_path, monkeypatch):
    def no_ort(**kwargs):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(edge_cli, "run", no_ort)
    monkeypatch.setattr("export.onnx.merge.export_merged", no_ort)
    for debug in (False, True):
        results = _both(tmp_path, tmp_path / "missing.toml", debug=debug)
        assert [r.exit_code for r in results] == [2, 2]
        assert [r.stderr for r in results] == [f"error: {NO_ONNXRUNTIME}\n"] * 2
