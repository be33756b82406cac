"""The MQTT inference pipeline against its two limits, side by side in one run.

    (a) raw pipe     paho publisher -> Mosquitto -> paho subscriber, same payloads, QoS 1
    (b) onnxruntime  batched throughput of the reference bundle (adapter active), no MQTT
    (c) pipeline     paho publisher -> Mosquitto -> edge-runtime -> Mosquitto -> paho subscriber

For JSON and binary payloads: messages/s (closed loop: at most WINDOW messages unanswered)
and p50/p99 end-to-end latency (publish -> result received, one clock); then (c) again at
half of its measured capacity (open loop, paced) for the latency target, and (a) at that
same rate for comparison. Target: (c) >= 0.7 x min(a, b), and p99 at half load
< 3 x batching.max_wait_ms.

Then drift monitoring's cost (benchmarks/pipeline_drift.py): (c) against two fresh
runtimes, `[drift] enabled = true` and `false`, in `--drift-rounds` interleaved rounds of
`--drift-seconds`. Target: msg/s with drift on >= 0.95 x off.

    .venv/bin/python benchmarks/pipeline.py [--bundle DIR] [--seconds 3] [--in-process]
        [--drift-rounds 5] [--drift-seconds 2] [--quick] [--no-write] [--json FILE]

Writes the tables into docs/BENCHMARKS.md under "## Pipeline (benchmarks/pipeline.py)".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from pipeline_drift import drift_cost, drift_table  # noqa: E402
from pipeline_load import RAW_TOPIC, WINDOW, Payloads, RunningService, measure  # noqa: E402
from reference_bundle import build_bundle, sample_windows  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from edge.bundle import read_manifest  # noqa: E402
from edge.contract import Normalizer, TopicLayout  # noqa: E402
from edge.engine import Engine, load_adapter_file  # noqa: E402
from export.demo.local_broker import start_broker, write_runtime_config  # noqa: E402

TITLE = "Pipeline (benchmarks/pipeline.py)"
DEVICE = "gw-bench"
LINE = "line-a"  # routed to the bundle's adapter: the more expensive path
TOPICS = TopicLayout(device=DEVICE)  # the default prefix, "factory"
SENSOR_TOPIC = TOPICS.sensors(LINE, "imu")
BATCHING = {"max_batch": 32, "max_wait_ms": 10}
QUICK = {"seconds": 0.5, "drift_rounds": 2, "drift_seconds": 0.5, "train_seconds": 1.0}


# --------------------------------------------------------------------------------------------
# (b) onnxruntime alone, (c) the service
# --------------------------------------------------------------------------------------------

def engine_rows_per_s(bundle: Path, threads: int, seconds: float) -> float:
    """Batched inference as the service runs it: max_batch normalised windows, adapter on."""
    manifest = read_manifest(bundle)
    entry = manifest.adapter(LINE)
    engine = Engine(bundle / manifest.base.file, threads=threads)
    lora = load_adapter_file(bundle / entry.file)
    x, _, _ = sample_windows()
    norm = Normalizer.from_preprocessing(entry.preprocessing, x.shape[1])
    n = BATCHING["max_batch"]
    batch = norm.apply(np.resize(x, (n, *x.shape[1:])))  # (max_batch, C, L)
    for _ in range(20):
        engine.run(batch, lora)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.run(batch, lora)
        rows += n
    return rows / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def table(rows: list[dict], max_wait_ms: float) -> str:
    head = ("| payload | bytes | (a) raw pipe msg/s | (b) onnxruntime rows/s | "
            "(c) pipeline msg/s | (c) / min(a, b) | (a) p50 / p99 ms | "
            "(c) p50 / p99 ms, full load | half load msg/s | (a) p50 / p99 ms, half load | "
            "(c) p50 / p99 ms, half load | targets |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        a, b, c, half, a_half = r["a"], r["b"], r["c"], r["half"], r["a_half"]
        ratio = c["rate"] / min(a["rate"], b)
        ok = ratio >= 0.7 and half["p99"] < 3 * max_wait_ms
        verdict = (f"{'pass' if ok else 'FAIL'} (ratio {'>=' if ratio >= 0.7 else '<'} 0.7, "
                   f"p99 {'<' if half['p99'] < 3 * max_wait_ms else '>='} "
                   f"{3 * max_wait_ms:g} ms)")
        lines.append(f"| {r['kind']} | {r['size']} | {a['rate']:,.0f} | {b:,.0f} | "
                     f"{c['rate']:,.0f} | {ratio:.2f} | {a['p50']:.1f} / {a['p99']:.1f} | "
                     f"{c['p50']:.1f} / {c['p99']:.1f} | {half['rate']:,.0f} | "
                     f"{a_half['p50']:.1f} / {a_half['p99']:.1f} | "
                     f"{half['p50']:.1f} / {half['p99']:.1f} | {verdict} |")
    return head + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--in-process", action="store_true",
                        help="run edge-runtime in this process instead of a subprocess")
    parser.add_argument("--drift-rounds", type=int, default=5,
                        help="rounds of drift on / off per payload kind")
    parser.add_argument("--drift-seconds", type=float, default=2.0,
                        help="length of each run of a drift round")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + ", ".join(f"{k} {v:g}" for k, v in QUICK.items()))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.drift_rounds, args.drift_seconds = (
            QUICK["seconds"], QUICK["drift_rounds"], QUICK["drift_seconds"])
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or build_bundle(
            work / "train", seconds=QUICK["train_seconds"] if args.quick else 3.0)
        broker = start_broker(work / "mosquitto")
        try:
            res = run_all(work, broker.port, bundle, args)
        finally:
            broker.stop()
    body = report(res, args)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if not args.no_write:
        print(f"written to {write_section(TITLE, body)}")
    return 0


def runtime_sections(threads: int) -> dict:
    """The runtime config of every measured edge-runtime (write_runtime_config keywords)."""
    return {"lines": {LINE: {"adapter": LINE}}, "device": {"threads": threads},
            "batching": BATCHING,
            "limits": {"max_payload_bytes": 1 << 20, "queue_bound": 10 * WINDOW},
            "topics": {"stats_interval_s": 10}}


def run_all(work: Path, port: int, bundle: Path, args) -> dict:
    """(b) first, then for each payload kind (a) and (c) back to back, so that a busy
    machine hurts both sides of the ratio alike (the service ignores the raw-pipe topic);
    then drift on against off, at the half-load rates (c) found."""
    b = engine_rows_per_s(bundle, args.threads, args.seconds)
    sections = runtime_sections(args.threads)
    config = write_runtime_config(work, port=port, bundle=bundle, device_id=DEVICE, **sections)
    service = RunningService(config, args.in_process, work / "service.log")
    rows = []
    try:
        service.wait_online(port, TOPICS.status)
        for kind in ("json", "binary"):
            payloads = Payloads(kind)
            answers = [TOPICS.results(LINE), TOPICS.errors]
            c, half = measure(port, SENSOR_TOPIC, answers, payloads, args.seconds)
            a, a_half = measure(port, RAW_TOPIC, [RAW_TOPIC], payloads, args.seconds,
                                rate=half["rate"])
            rows.append({"kind": kind, "size": payloads.size, "a": a, "b": b, "c": c,
                         "half": half, "a_half": a_half})
    finally:
        service.stop_checked()
    drift = drift_cost(work, port, bundle, sections, LINE,
                       {r["kind"]: r["half"]["rate"] for r in rows}, args.drift_seconds,
                       args.drift_rounds, args.in_process)
    return {"rows": rows, "drift": drift}


def report(res: dict, args) -> str:
    mode = "in-process" if args.in_process else "a subprocess (`edge-runtime run`)"
    quick = "A `--quick` smoke run: too short to be a measurement.\n\n" if args.quick else ""
    return (quick + f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; Mosquitto "
            f"{mosquitto_version()} on loopback.\n\n"
            f"QoS 1 everywhere; {args.seconds:g} s per run; real BasicMotions windows (6 x 100) "
            f"on one line routed to a LoRA adapter; batching max_batch "
            f"{BATCHING['max_batch']}, max_wait_ms {BATCHING['max_wait_ms']}; onnxruntime "
            f"threads {args.threads}; edge-runtime as {mode}, its results going through the "
            "on-disk outbox (outbox.synchronous = \"full\": one fsync per batch before the "
            "batch's sensor messages are acknowledged), drift monitoring on (the default). "
            f"Throughput is closed loop (at most {WINDOW} messages unanswered); latency is "
            "publish -> result received on one clock. Half load is an open-loop run at half "
            "of (c)'s measured rate, repeated through the raw pipe (a) at the same rate for "
            "comparison.\n\n"
            + table(res["rows"], BATCHING["max_wait_ms"]) + "\n"
            + drift_table(res["drift"], args.drift_seconds))


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0] if "version" in out else "?"


if __name__ == "__main__":
    sys.exit(main())
