"""The MQTT inference pipeline against its two limits, side by side in one run.

    (a) raw pipe     paho publisher -> Mosquitto -> subscriber, same payloads, QoS 1
    (b) onnxruntime  batched throughput of the reference bundle (adapter active), no MQTT
    (c) pipeline     paho publisher -> Mosquitto -> edge-runtime -> Mosquitto -> subscriber

The subscriber reads with edge.mqtt_wire.LeanClient, as the gateway does: (a) is what the
pipe carries, not what stock paho's receive path can take. (a0), a closed loop after (a)
in each round, is the raw pipe with a stock paho subscriber: the baseline the 0.8 target
was first set against (docs/BENCHMARKS.md before 2026-12-02), judged alongside.

For each `--workers` count (edge-runtime's worker processes, docs/WORKERS.md) and for JSON
and binary payloads, in `--rounds` interleaved rounds of (a) and (c) (the order
alternating): messages/s (closed loop: at most WINDOW messages unanswered) and p50/p99
end-to-end latency (publish -> result received, one clock); then (c) again at half of its
measured capacity (open loop, paced) for the latency target, and (a) at that same rate.
Medians over rounds, and each round's ratio: the baseline itself moves between runs, so a
target is judged only when every round is on the same side of it. Targets: (c) >= 0.8 x
min(a, b), and p99 at half load < 3 x batching.max_wait_ms. Scaling: (c) with N workers
over (c) with one.

Then drift monitoring's cost (benchmarks/pipeline_drift.py): (c) against two fresh
runtimes, `[drift] enabled = true` and `false`, in `--drift-rounds` interleaved rounds of
`--drift-seconds`. Target: msg/s with drift on >= 0.95 x off. And plant integration's
(benchmarks/pipeline_integration.py): Sparkplug B and Prometheus on against off, the same
way. Target: >= 0.9 x off.

    .venv/bin/python benchmarks/pipeline.py [--bundle DIR] [--seconds 3] [--in-process]
        [--rounds 5] [--workers 1,2] [--drift-rounds 5]
        [--drift-seconds 2] [--quick] [--no-write] [--json FILE]

Writes the tables into docs/BENCHMARKS.md under "## Pipeline (benchmarks/pipeline.py)".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from pipeline_drift import drift_cost, drift_table  # noqa: E402
from pipeline_integration import integration_cost, integration_table  # noqa: E402
from pipeline_load import RAW_TOPIC, SPAN, WINDOW, Payloads, RunningService, measure  # noqa: E402
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
QUICK = {"seconds": 0.5, "rounds": 2, "drift_rounds": 2, "drift_seconds": 0.5,
         "train_seconds": 1.0}
RATIO_TARGET = 0.8  # (c) / min(a, b), each round
P99_TARGET_MS = 3 * BATCHING["max_wait_ms"]  # half load, with one inference well inside


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

def table(rows: list[dict]) -> str:
    head = ("| workers | payload | bytes | (a) raw pipe msg/s | (b) onnxruntime rows/s | "
            "(c) pipeline msg/s | (c) / min(a, b) | per-round ratios | (a) max / min | "
            "(a) p50 / p99 ms | (c) p50 / p99 ms, full load | half load msg/s | "
            "(a) p50 / p99 ms, half load | (c) p50 / p99 ms, half load | (c) p99 per round | "
            "lost / errors | ratio >= 0.8 | p99 < 30 ms | (a0) stock paho sink msg/s | "
            "(c) / min(a0, b) | per-round | ratio (a0) >= 0.8 |\n"
            "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|"
            "---:|---:|---|---|\n")
    lines = []
    for r in rows:
        a, c, half, a_half = r["a"], r["c"], r["half"], r["a_half"]
        lines.append(f"| {r['workers']} | {r['kind']} | {r['size']} | {a['rate']:,.0f} | "
                     f"{r['b']:,.0f} | {c['rate']:,.0f} | {r['ratio']:.2f} | "
                     f"{_span(r['ratios'], '.2f')} | "
                     f"{r['baseline_spread']:.2f} | {a['p50']:.1f} / {a['p99']:.1f} | "
                     f"{c['p50']:.1f} / {c['p99']:.1f} | {half['rate']:,.0f} | "
                     f"{a_half['p50']:.1f} / {a_half['p99']:.1f} | "
                     f"{half['p50']:.1f} / {half['p99']:.1f} | {_span(r['p99s'], '.1f')} | "
                     f"{r['lost']} / {r['errors']} | {r['ratio_verdict']} | "
                     f"{r['p99_verdict']} | {r['a0']['rate']:,.0f} | {r['stock_ratio']:.2f} | "
                     f"{_span(r['stock_ratios'], '.2f')} | {r['stock_ratio_verdict']} |")
    return head + "\n".join(lines) + "\n"


def _span(values: list[float], fmt: str) -> str:
    return f"{min(values):{fmt}} .. {max(values):{fmt}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--in-process", action="store_true",
                        help="run edge-runtime in this process instead of a subprocess")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds of (a) and (c) per payload kind")
    parser.add_argument("--workers", default="1,2",
                        help="edge-runtime worker process counts to measure, comma-separated")
    parser.add_argument("--drift-rounds", type=int, default=5,
                        help="rounds of drift on / off per payload kind")
    parser.add_argument("--drift-seconds", type=float, default=2.0,
                        help="length of each run of a drift round")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + ", ".join(f"{k} {v:g}" for k, v in QUICK.items()))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.drift_rounds < 1 and not args.no_write:
        parser.error("--drift-rounds 0 leaves out sections of docs/BENCHMARKS.md: "
                     "add --no-write")
    if args.quick:
        args.seconds, args.rounds, args.drift_rounds, args.drift_seconds = (
            QUICK["seconds"], QUICK["rounds"], QUICK["drift_rounds"], QUICK["drift_seconds"])
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


def runtime_sections(threads: int, workers: int = 1) -> dict:
    """The runtime config of every measured edge-runtime (write_runtime_config keywords)."""
    return {"lines": {LINE: {"adapter": LINE}}, "device": {"threads": threads},
            "batching": BATCHING,
            "limits": {"max_payload_bytes": 1 << 20, "queue_bound": 10 * WINDOW},
            "topics": {"stats_interval_s": 10}, "workers": {"count": workers}}


def run_all(work: Path, port: int, bundle: Path, args) -> dict:
    """(b) first, then for each payload kind `args.rounds` rounds of (a) and (c) back to back,
    the order alternating (c, a, then a, c, ...) so that a busy machine weighs on both sides
    of each round's ratio alike (the service ignores the raw-pipe topic); then drift on
    against off, at the half-load rates (c) found."""
    b = engine_rows_per_s(bundle, args.threads, args.seconds)
    rows = []
    for workers in (int(n) for n in str(args.workers).split(",")):
        rows += workers_rows(work / f"workers-{workers}", port, bundle, b, workers, args)
    sections = runtime_sections(args.threads)
    half_rates = {r["kind"]: r["half"]["rate"] for r in rows if r["workers"] == 1}
    if not args.drift_rounds:  # a look at the pipeline alone (--no-write)
        return {"rows": rows, "drift": None, "integration": None}
    drift = drift_cost(work, port, bundle, sections, LINE, half_rates, args.drift_seconds,
                       args.drift_rounds, args.in_process)
    integration = integration_cost(work, port, bundle, sections, LINE, half_rates,
                                   args.drift_seconds, args.drift_rounds, args.in_process)
    return {"rows": rows, "drift": drift, "integration": integration}


def workers_rows(work: Path, port: int, bundle: Path, b: float, workers: int, args
                 ) -> list[dict]:
    """One edge-runtime with `workers` processes: the rounds of each payload kind."""
    work.mkdir()
    config = write_runtime_config(work, port=port, bundle=bundle, device_id=DEVICE,
                                  **runtime_sections(args.threads, workers))
    in_process = args.in_process and workers == 1  # a supervisor runs as a subprocess
    service = RunningService(config, in_process, work / "service.log")
    rows = []
    try:
        service.wait_online(port, TOPICS.status)
        for kind in ("json", "binary"):
            rounds = interleaved_rounds(port, Payloads(kind), args.rounds, args.seconds,
                                        service.process)
            rows.append({"workers": workers, "kind": kind, "size": Payloads(kind).size,
                         "b": b, "rounds": rounds, **summarise(rounds, b)})
    finally:
        service.stop_checked()
    return rows


def scaling_lines(rows: list[dict]) -> str:
    """(c) with N workers over (c) with one, per payload kind (medians of separate runs)."""
    one = {r["kind"]: r["c"]["rate"] for r in rows if r["workers"] == 1}
    out = [f"- {r['kind']}, {r['workers']} workers: {r['c']['rate']:,.0f} msg/s, "
           f"{r['c']['rate'] / one[r['kind']]:.2f} x one worker"
           for r in rows if r["workers"] != 1 and r["kind"] in one]
    return ("Scaling with worker processes ((c) medians, each count its own run):\n\n"
            + "\n".join(out) + "\n\n") if out else ""


def cpu_lines(rows: list[dict]) -> str:
    """Where the ratio comes from: machine CPU per message on each side of the closed loop,
    and what 0.8 would leave the runtime even if (c) kept every core busy."""
    out, cores = [], psutil.cpu_count() or 1
    for r in rows:
        cpu = r["cpu"]
        a, c, g = cpu["a"], cpu["c"], cpu["runtime"]
        if math.isnan(g):  # in-process: the runtime's CPU is this process's
            continue
        most = a * cores / (RATIO_TARGET * cpu["a_cores"])  # (c) us per window 0.8 allows
        budget = most - (c - g)
        left = (f"leaving edge-runtime {budget:.0f} us per window" if budget > 0 else
                "less than the rest alone: no runtime reaches 0.8 on this machine")
        out.append(f"- {r['kind']}, {r['workers']} worker{'s' * (r['workers'] > 1)}: (a) "
                   f"{a:.0f} us per message ({cpu['a_cores']:.2f} cores busy), (c) {c:.0f} us "
                   f"per window ({cpu['c_cores']:.2f} cores busy): edge-runtime {g:.0f} us, "
                   f"the rest (load generator, broker, both directions) {c - g:.0f} us. "
                   f"0.8 with all {cores} cores busy needs (c) <= {most:.0f} us, {left}")
    if not out:
        return ""
    return ("Machine CPU per message in the closed loops (medians; /proc/stat busy time over "
            "answered messages; edge-runtime: its process and workers). A rate is the busy "
            "cores over the CPU per message, so (c) / (a) = ((a) us / (c) us) x ((c) cores "
            "busy / (a) cores busy):\n\n" + "\n".join(out) + "\n\n")


def interleaved_rounds(port: int, payloads: Payloads, rounds: int, seconds: float,
                       runtime: psutil.Process | None = None) -> list[dict]:
    """Per round: (c) closed loop then open loop at half its rate, and (a) closed loop then
    open loop at that same rate; (c) first in even rounds, (a) first in odd ones (at the
    previous round's half rate). Ids never repeat across rounds (the dedupe window)."""
    out: list[dict] = []
    answers = [TOPICS.results(LINE), TOPICS.errors]
    for r in range(rounds):
        base = 2 * r * SPAN
        rate = out[-1]["half"]["rate"] if out else None
        first_c = r % 2 == 0 or rate is None
        entry: dict = {}
        for side in (("c", "a") if first_c else ("a", "c")):
            if side == "c":
                entry["c"], entry["half"] = measure(port, SENSOR_TOPIC, answers, payloads,
                                                    seconds, rate=rate, base=base,
                                                    runtime=runtime)
                rate = entry["half"]["rate"] if rate is None else rate
            else:
                entry["a"], entry["a_half"] = measure(port, RAW_TOPIC, [RAW_TOPIC], payloads,
                                                      seconds, rate=rate, base=base + SPAN)
                entry["a0"], _ = measure(port, RAW_TOPIC, [RAW_TOPIC], payloads, seconds,
                                         base=base + SPAN + SPAN // 2, paced=False,
                                         sink_class=mqtt.Client)
        out.append(entry)
    return out


def summarise(rounds: list[dict], b: float) -> dict:
    """Medians over rounds of every figure, each round's ratio (c) / min(a, b), and the
    verdicts: a target is judged only when every round falls on the same side of it."""
    def med(part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in rounds)

    ratios = [r["c"]["rate"] / min(r["a"]["rate"], b) for r in rounds]
    stock_ratios = [r["c"]["rate"] / min(r["a0"]["rate"], b) for r in rounds]
    p99s = [r["half"]["p99"] for r in rounds]
    fig = {part: {key: med(part, key) for key in ("rate", "p50", "p99")}
           for part in ("a", "c", "half", "a_half")}
    spread = max(r["a"]["rate"] for r in rounds) / min(r["a"]["rate"] for r in rounds)
    fig["a0"] = {"rate": med("a0", "rate")}
    fig["cpu"] = {"a": med("a", "cpu_us"), "c": med("c", "cpu_us"),
                  "a_cores": med("a", "cores_busy"), "c_cores": med("c", "cores_busy"),
                  "runtime": statistics.median(r["c"].get("runtime_cpu_us", math.nan)
                                               for r in rounds)}
    return {**fig, "ratio": statistics.median(ratios), "ratios": ratios, "p99s": p99s,
            "stock_ratio": statistics.median(stock_ratios), "stock_ratios": stock_ratios,
            "stock_ratio_verdict": verdict(stock_ratios, RATIO_TARGET, above=True),
            "baseline_spread": spread,
            "lost": sum(r[p]["lost"] for r in rounds
                        for p in ("a", "a0", "c", "half", "a_half")),
            "errors": sum(r[p]["errors"] for r in rounds for p in ("c", "half")),
            "ratio_verdict": verdict(ratios, RATIO_TARGET, above=True),
            "p99_verdict": verdict(p99s, P99_TARGET_MS, above=False)}


def verdict(values: list[float], target: float, *, above: bool) -> str:
    """"pass" / "FAIL" when every round is on one side of `target`, else "cannot judge"."""
    good = [v >= target if above else v < target for v in values]
    return "pass" if all(good) else "FAIL" if not any(good) else "cannot judge"


def report(res: dict, args) -> str:
    mode = "in-process" if args.in_process else "a subprocess (`edge-runtime run`)"
    quick = "A `--quick` smoke run: too short to be a measurement.\n\n" if args.quick else ""
    return (quick + f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; Mosquitto "
            f"{mosquitto_version()} on loopback.\n\n"
            f"QoS 1 everywhere; real BasicMotions windows (6 x 100) on one line routed to a "
            f"LoRA adapter; batching max_batch {BATCHING['max_batch']}, max_wait_ms "
            f"{BATCHING['max_wait_ms']}; onnxruntime threads {args.threads}; edge-runtime as "
            f"{mode}, its results going through the on-disk outbox (outbox.synchronous = "
            "\"full\"), drift monitoring on (the default). "
            f"{args.rounds} interleaved rounds per payload, each of (c) and (a) back to back "
            "((c) first in even rounds, (a) first in odd ones), each side a 0.5 s warm-up, "
            f"{args.seconds:g} s closed loop (at most {WINDOW} messages unanswered) and "
            f"{args.seconds:g} s open loop at half of (c)'s closed-loop rate (the same rate "
            "for (a)); figures are medians over rounds, latency publish -> answer on one "
            "clock. A target is judged only when every round falls on the same side of it; "
            "otherwise the spread is too wide and the verdict says \"cannot judge\". "
            "(a) max / min is the spread of the baseline itself across rounds. The "
            "subscriber reads with edge.mqtt_wire.LeanClient, as the gateway does, so (a) is "
            "what the pipe carries; (a0) is the same raw pipe read by a stock paho client "
            "(closed loop only, after (a) in each round), the baseline of the 0.8 target "
            "until 2026-12-02.\n\n"
            + table(res["rows"]) + "\n" + cpu_lines(res["rows"]) + scaling_lines(res["rows"])
            + ("Drift and plant integration: not measured (--drift-rounds 0).\n"
               if res["drift"] is None else drift_table(res["drift"], args.drift_seconds)
               + "\n" + integration_table(res["integration"], args.drift_seconds)))


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0] if "version" in out else "?"


if __name__ == "__main__":
    sys.exit(main())
