"""The pilot's running cost, measured on a real adapter (a tiny base and LoRA trained on
BasicMotions) exported both ways; figures checked against the files, never timings."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from edge.errors import AdapterError, ConfigError  # noqa: E402
from export.pilot.running_cost import (  # noqa: E402
    MAX_ADAPTERS,
    MAX_SESSIONS,
    measure_running_cost,
    measured_counts,
    memory_note,
)
from export.train import train  # noqa: E402

LINES = 3
TINY = {"d_model": 32, "depth": 1, "heads": 2, "patch": 10}  # 100-sample windows
FAST = {"epochs": 2, "batch_size": 16, "progress": False}
DATA = "ucr:BasicMotions:train"
KEYS = {"lines", "bytes_per_line", "disk_bytes", "memory_bytes", "memory_note", "swap_ms",
        "latency_ms"}
PAIRS = {"bytes_per_line": ("adapter", "full_model"), "disk_bytes": ("attached", "merged"),
         "memory_bytes": ("attached", "merged"), "swap_ms": ("adapter_swap", "model_reload"),
         "latency_ms": ("attached", "merged")}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny base pretrained (full) on BasicMotions."""
    out = tmp_path_factory.mktemp("runcost") / "base"
    train(data=DATA, method="full", model_config=TINY, out=out, **FAST)
    return out / "model.safetensors"


# LoRA r4 on train()'s default targets (slots padded to the default rank 8), and a
# bottleneck of 16 on the MLP (slots of its own width, above the default rank).
CASES = [("lora", 4, None), ("bottleneck", 16, "mlp.fc1,mlp.fc2")]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case[0])
def trained(request, base, tmp_path_factory) -> dict[str, Path]:
    method, rank, targets = request.param
    tmp = tmp_path_factory.mktemp(method)
    train(data=DATA, weights=base, method=method, rank=rank, targets=targets,
          out=tmp / method, **FAST)
    return {"weights": base, "adapter": tmp / method, "tmp": tmp}


@pytest.fixture(scope="module")
def measured(trained) -> tuple[dict, Path]:
    work = trained["tmp"] / "work"
    cost = measure_running_cost(base="reference", weights=trained["weights"],
                                adapter_dir=trained["adapter"], lines=LINES, workdir=work)
    return cost, work


def test_every_figure_is_there_and_positive(measured):
    cost, _ = measured
    assert set(cost) == KEYS
    assert cost["lines"] == LINES and cost["latency_ms"]["batch"] == 1
    for group, keys in PAIRS.items():
        assert set(cost[group]) >= set(keys), group
        for key in keys:
            value = cost[group][key]
            assert isinstance(value, (int, float)) and value > 0, (group, key, value)
    assert isinstance(cost["memory_note"], str) and "fresh process" in cost["memory_note"]
    assert "scaled" not in cost["memory_note"]  # 3 lines: every one measured


def test_bytes_are_the_files_on_disk(measured):
    cost, work = measured
    base = work / "bundle" / "base.onnx"
    (adapter,) = (work / "bundle" / "adapters").glob("*.onnx_adapter")
    merged = work / "model.onnx"
    assert cost["bytes_per_line"] == {"adapter": adapter.stat().st_size,
                                      "full_model": merged.stat().st_size}
    assert cost["disk_bytes"] == {
        "attached": base.stat().st_size + LINES * adapter.stat().st_size,
        "merged": LINES * merged.stat().st_size}
    assert cost["disk_bytes"]["attached"] < cost["disk_bytes"]["merged"]
    assert cost["bytes_per_line"]["adapter"] < cost["bytes_per_line"]["full_model"]


def test_workdir_holds_only_the_exports(measured):
    _, work = measured
    assert sorted(p.name for p in work.iterdir()) == ["bundle", "model.onnx"]


def test_no_lines_is_a_config_error(trained, tmp_path):
    with pytest.raises(ConfigError, match="--lines 0"):
        measure_running_cost(base="reference", weights=trained["weights"],
                             adapter_dir=trained["adapter"], lines=0, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_missing_adapter_is_one_line_and_writes_nothing(base, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        measure_running_cost(base="reference", weights=base, adapter_dir=tmp_path / "none",
                             lines=2, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_many_lines_are_measured_capped_and_said_so():
    assert measured_counts(3, 1 << 20) == (3, 3)
    assert measured_counts(1000, 1 << 20) == (MAX_ADAPTERS, MAX_SESSIONS)
    assert measured_counts(10, 1 << 30) == (10, 1)  # a 1 GiB model: one session measured
    note = memory_note(1000, MAX_ADAPTERS, 1)
    assert f"adapters measured for {MAX_ADAPTERS} line(s) and scaled linearly to 1000" in note
    assert "merged sessions measured for 1 line(s)" in note
    assert "scaled" not in memory_note(5, 5, 5)
