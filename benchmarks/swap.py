"""Hot swap, mixed-adapter batches and memory per adapter, each against what a runtime
without adapter slots must do, side by side in one run.

    (1) swap latency  (a) the switch itself: the control plane builds and installs the new
                          routing table (the gateway's own `last.switch_ms`, retained state)
                      (b) activate -> first result of the new version, over Mosquitto into an
                          in-process Service while windows stream on the line
                      (c) baseline: a new InferenceSession of that version's merged model and
                          its first inference          (benchmarks/swap_latency.py)
    (2) mixed batches a `--bank 8` bundle runs rows of 8 adapter versions in one run, against
                      the same rows as 8 single-adapter runs  (benchmarks/swap_mixed.py)
    (3) memory        RSS growth with 1, 10, 100 adapters accepted and loaded in an
                      AdapterStore, against 10 merged-model sessions, for a tiny model and
                      one of the demo's size; a fresh subprocess each  (swap_memory.py)

Targets: switch p99 < 5 ms and >= 100x faster than the reload; mixed >= 2x faster at K = 8;
growth with 100 adapters of a realistic size <= 1.2x their total file size.

    .venv/bin/python benchmarks/swap.py [--swaps 200] [--quick] [--no-write] [--json FILE]

Writes the tables into docs/BENCHMARKS.md under "## Swap (benchmarks/swap.py)".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from report import machine_line, write_section  # noqa: E402
from swap_latency import BATCHING, LINE, RATE, swap_latency, swap_table, swap_versions  # noqa: E402
from swap_memory import memory, memory_table  # noqa: E402
from swap_mixed import mixed_batches, mixed_table  # noqa: E402
from swap_workspace import REAL_MODEL, merged_agreement, prepare  # noqa: E402

TITLE = "Swap (benchmarks/swap.py)"
FULL = {"swaps": 200, "seconds": 3.0, "merged": 10, "sizes": (8, 32, 64), "reps": 300,
        "memory": (1, 10, 100), "mem_reps": 3}
QUICK = {"swaps": 20, "seconds": 1.0, "merged": 2, "sizes": (8, 32), "reps": 20,
         "memory": (1, 10), "mem_reps": 1}


def run_all(work: Path, cfg: dict) -> dict:
    """Every part, with the seconds each took."""
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    ws = prepare(work, cfg)
    phases["prepare"] = (t1 := time.perf_counter()) - t0
    swap = swap_latency(work, ws, cfg["swaps"])
    swap["merged_diff"] = merged_agreement(ws["bundle"], ws["merged"], ws["versions"])
    swap["merged_diff_real"] = merged_agreement(ws["real"], ws["real_merged"],
                                                ws["real_versions"])
    phases["swap"] = (t2 := time.perf_counter()) - t1
    mixed = mixed_batches(work, ws, cfg["sizes"], cfg["reps"])
    swap["bank_switch"] = mixed.pop("bank_switch")
    phases["mixed"] = (t3 := time.perf_counter()) - t2
    mem = memory(work, cfg)
    phases["memory"] = time.perf_counter() - t3
    return {"ws": ws, "swap": swap, "mixed": mixed, "memory": mem, "phases": phases}


def report(res: dict, cfg: dict, seconds: float, load: tuple[float, float]) -> str:
    from pipeline import mosquitto_version

    phases = ", ".join(f"{k} {v:.0f} s" for k, v in res["phases"].items())
    return "\n\n".join([
        f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; Mosquitto "
        f"{mosquitto_version()} on loopback; load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end (other work on the machine); whole run {seconds:.0f} s "
        f"({phases}).",
        "Reference bundles trained on BasicMotions (6 x 100 windows), LoRA r4 on q, v, fc1: "
        f"a tiny base (d_model 32, depth 1) and one of the demo's size (d_model "
        f"{REAL_MODEL['d_model']}, depth {REAL_MODEL['depth']}, 4 heads). Versions 2.. are "
        "the trained adapter with lora_B scaled (tests/adapter_versions.py), each also "
        "merged into its own ONNX file by `export_merged`. onnxruntime 1 thread per session.",
        f"**Swap latency.** An in-process Service (tiny bundle) on a private Mosquitto, line "
        f"{LINE} streamed at {RATE} binary windows/s (batching max_batch "
        f"{BATCHING['max_batch']}, max_wait_ms {BATCHING['max_wait_ms']}), {cfg['swaps']} "
        f"activate commands (QoS 1) cycling through {len(swap_versions(res['ws']))} held, "
        "loaded versions. The gateway's rows are its own figures from the retained state "
        "(`factory/<device>/adapters/state`, `last` of the command's id); (b) ends when the "
        "subscriber receives the first result naming the new version (or the state), from "
        "the activate publish. After each swap, under the same load, (c) at both sizes and "
        "(c') run once each for the same version.",
        swap_table(res["swap"]),
        "**Mixed batches.** Rows of BasicMotions windows, row i for version 2 + i mod 8: one "
        "run of the --bank 8 bundle (bank tensors from the routing table, `adapter_index`) "
        "against 8 runs of the plain bundle, one per LoraAdapter (the gather of each "
        "adapter's rows included); medians, interleaved.",
        mixed_table(res["mixed"]["rows"]),
        "**Memory.** RSS (/proc/self/status) of a fresh subprocess before and after "
        "accepting n derived versions through `AdapterStore.accept` (unsigned envelopes, "
        "memory budget 1 GiB so all stay loaded) and running one inference with each, after "
        "two warm-up adapters; merged: n sessions each with one inference, after one warm-up "
        f"session. Median of {cfg['mem_reps']} subprocess(es), run in parallel.",
        memory_table(res["memory"]),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swaps", type=int, help="activate commands (default 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    cfg["swaps"] = args.swaps or cfg["swaps"]
    start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edge-swap-") as tmp:
        res = run_all(Path(tmp), cfg)
    body = report(res, cfg, time.perf_counter() - start, (load, os.getloadavg()[0]))
    print(body)
    if args.json:
        res.pop("ws")
        args.json.write_text(json.dumps(res, indent=1))
    if not args.no_write:
        print(f"\nwritten to {write_section(TITLE, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
