"""The benchmarks run end to end in their quick mode. No timing is asserted (a shared CI
box makes them meaningless); what is checked is that every part ran and that the variants
being compared computed the same outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.demo.local_broker import MOSQUITTO

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_swap_benchmark_quick(tmp_path):
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed (make mosquitto)")
    out = tmp_path / "swap.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "swap.py"), "--quick",
                           "--no-write", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    swap = res["swap"]
    # every swap answered: the gateway's own times (retained state) and the bench's
    assert {swap[k]["n"] for k in ("switch", "save", "installed", "e2e", "reload")} == {20}
    assert 0 <= swap["switch"]["p50"] <= swap["installed"]["p50"] <= swap["command"]["p50"]
    assert swap["errors"] == 0 and swap["results"] > 0
    assert swap["score_diff"] < 1e-4  # served results = the engine alone on the same window
    assert swap["merged_diff"] < 1e-4  # the reload baseline is the same model
    assert swap["merged_diff_real"] < 1e-3  # ... at the demo's model size too
    assert [r["rows"] for r in res["mixed"]["rows"]] == [8, 32]
    assert all(r["max_abs_diff"] < 1e-4 for r in res["mixed"]["rows"])  # bank = 8 runs
    kinds = {(r["kind"], r["size"], r["n"]) for r in res["memory"]}
    assert kinds == {(kind, size, n) for size in ("tiny", "real")
                     for kind, n in (("attached", 1), ("attached", 10), ("merged", 2))} | {
        ("bank", "tiny", 10)}
    assert all(r["files"] > 0 for r in res["memory"])
    assert "written to" not in proc.stdout  # --no-write: printed, docs/ untouched
    assert "Targets: switch p99" in proc.stdout


@pytest.mark.timeout(240)
def test_soak_quick(tmp_path):
    """The soak in miniature: steady load, adapter swaps and a broker restart; nothing lost,
    no answer computed twice, the runtime exits 0. The long run is `benchmarks/soak.py`."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed (make mosquitto)")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"),
                           "--minutes", "0.3", "--swap-every", "4", "--no-write",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=230)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["exit_code"] == 0 and res["swaps"] >= 3
    assert res["sent"] > 0 and res["lost"] == 0 and res["errors"] == 0
    assert res["received"] == res["sent"]


@pytest.mark.timeout(240)
def test_pipeline_quick(tmp_path):
    """The pipeline benchmark in miniature, drift on against off included: every message
    answered on both runtimes, and the "on" runtime's monitor evaluated the line (the
    benchmark itself refuses an empty comparison; the ratio is not asserted)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed (make mosquitto)")
    out = tmp_path / "pipeline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--quick",
                           "--workers", "1", "--no-write", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())  # two workers: test_pipeline_scaling_quick
    assert [(r["workers"], r["kind"]) for r in res["rows"]] == [(1, "json"), (1, "binary")]
    for row in res["rows"]:  # 2 interleaved rounds of (a) and (c), nothing lost in any
        assert len(row["rounds"]) == 2 and len(row["ratios"]) == 2 and row["lost"] == 0
        assert all(r[k]["lost"] == 0 for r in row["rounds"] for k in ("a", "c", "half", "a_half"))
        assert {row["ratio_verdict"], row["p99_verdict"]} <= {"pass", "FAIL", "cannot judge"}
        cpu = row["cpu"]  # machine CPU per message each side; the runtime's share of (c)
        assert cpu["a"] > 0 and cpu["c"] > cpu["runtime"] > 0 and cpu["c_cores"] > 0
    assert "Machine CPU per message in the closed loops" in proc.stdout
    drift = res["drift"]
    assert {(r["kind"], r["rounds"], r["lost"], r["errors"]) for r in drift["rows"]} == {
        ("json", 2, 0, 0), ("binary", 2, 0, 0)}
    assert {(r["side"], r["round"]) for r in drift["runs"]} == {
        (side, n) for side in ("on", "off") for n in (0, 1)}
    assert all(r["closed"]["rate"] > 0 and r["half"]["rate"] > 0 for r in drift["runs"])
    seen = drift["drift"]
    assert set(seen["states"]) <= {"ok", "warn", "drift"} and seen["windows"] > 0
    assert set(seen["indicators"]) == {"input_psi", "class_psi", "score_psi", "score_drop",
                                       "ood_share"}  # the bundle outputs features
    assert "written to" not in proc.stdout  # --no-write: printed, docs/ untouched
    assert "Drift monitoring on against off" in proc.stdout
    for mode in ("per_result", "per_batch"):  # Sparkplug and metrics on against off
        integration = res["integration"][mode]
        assert {(r["kind"], r["rounds"], r["lost"], r["errors"])
                for r in integration["rows"]} == {("json", 2, 0, 0), ("binary", 2, 0, 0)}
        assert integration["sparkplug"]["NBIRTH"] >= 1 and integration["sparkplug"]["DDATA"]
        assert integration["scrapes"] > 0
    assert "Plant integration on against off" in proc.stdout


@pytest.mark.timeout(240)
def test_pipeline_scaling_quick(tmp_path):
    """The worker-scaling benchmark in miniature: a backlog drained by one and by two worker
    processes, every window answered exactly once (the script exits 1 otherwise)."""
    rows = _broker_benchmark("pipeline_scaling.py", ["--windows", "200", "--kinds", "json"],
                             tmp_path, timeout=230)
    assert [(r["workers"], r["answered"], r["duplicates"]) for r in rows] == [
        (1, 200, 0), (2, 200, 0)]
    assert all(r["rate"] > 0 for r in rows)


@pytest.mark.timeout(120)
def test_mqtt_wire_quick(tmp_path):
    """The receive-path benchmark in miniature: stock paho and the lean client each drain a
    queued backlog of both payload kinds, every message arriving (exit 1 otherwise)."""
    rows = _broker_benchmark("mqtt_wire.py", ["--windows", "200", "--rounds", "2"], tmp_path,
                             timeout=110)
    assert [(r["kind"], r["lost"]) for r in rows] == [("json", 0), ("binary", 0)]
    assert all(len(r["runs"][v]) == 2 and all(x["received"] == 200 for x in r["runs"][v])
               for r in rows for v in ("stock", "lean"))


def _broker_benchmark(script: str, args: list[str], tmp_path: Path, timeout: float):
    """Run benchmarks/<script> with `args` --no-write; its --json results (it must exit 0).
    Skips where Mosquitto is not installed."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed (make mosquitto)")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args,
                           "--no-write", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())
