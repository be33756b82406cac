"""Where each microsecond of a window goes in the running gateway: edge-runtime as a
subprocess under closed-loop load (benchmarks/pipeline_load.py), sampled by py-spy, its CPU
time read per thread from /proc.

For each payload kind: a warm-up, then `--seconds` of closed-loop load during which py-spy
records every thread's stack `--rate` times a second and /proc/<pid>/task/<tid>/stat gives
each thread's CPU time. A thread's CPU per window is split over stages in proportion to its
samples; a sample's stage is the innermost frame that belongs to a known stage (json, numpy
and threading frames count for the caller that used them).

    .venv/bin/python benchmarks/profile_pipeline.py [--bundle DIR] [--seconds 5] [--rate 200]
        [--no-write] [--json FILE]

Writes its tables into docs/BENCHMARKS.md under "## Pipeline profile (...)". Needs py-spy
(the dev extra) and ptrace rights over the child process (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from pipeline import DEVICE, LINE, SENSOR_TOPIC, TOPICS, runtime_sections  # noqa: E402
from pipeline_load import PHASE, Payloads, RunningService, Sink, client, closed_loop  # noqa: E402
from reference_bundle import build_bundle  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from export.demo.local_broker import start_broker, write_runtime_config  # noqa: E402

TITLE = "Pipeline profile (benchmarks/profile_pipeline.py)"
TICK = os.sysconf("SC_CLK_TCK")
# (frame substring, stage), tried in order against each frame from the leaf up: the first
# frame that matches any entry names the sample's stage.
STAGES = [
    ("onnxruntime", "onnxruntime run"),
    ("edge/outbox.py", "outbox (SQLite insert, commit, fsync)"),
    ("edge/delivery.py", "delivery (outbox -> publish, acks)"),
    ("edge/committer.py", "delivery (outbox -> publish, acks)"),
    ("edge/contract/preprocessing.py", "normalisation"),
    ("edge/drift/", "drift monitor"),
    ("encode_", "encode result"),
    ("softmax (edge/codec.py)", "encode result"),
    ("edge/codec.py", "decode sensor message (parse, checks)"),
    ("edge/batching.py", "batching (queue, stack)"),
    ("edge/engine.py", "engine (feeds, outputs)"),
    ("edge/dedupe.py", "dedupe"),
    ("edge/routing.py", "routing"),
    ("edge/inbox.py", "inbox (receive, hand-off)"),
    ("edge/mqtt_wire.py", "paho-mqtt + mqtt_wire (socket, packets, properties)"),
    ("edge/mqtt.py", "MQTT client glue"),
    ("edge/service.py", "service (dispatch)"),
    ("edge/", "edge, other"),
    ("paho", "paho-mqtt + mqtt_wire (socket, packets, properties)"),
]


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for needle, stage in STAGES:
            if needle in frame:
                return stage
    return "other (interpreter, threading, idle waits)"


def parse_raw(text: str) -> dict[int, Counter]:
    """py-spy raw output with --threads -> {native thread id: Counter(stage -> samples)}, and
    the thread names under key -tid (a str Counter key "name")."""
    per_thread: dict[int, Counter] = defaultdict(Counter)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("thread ("):
            continue
        head, *frames = stack.split(";")
        tid = int(head[len("thread ("):head.index(")")])
        name = head.split(": ", 1)[1] if ": " in head else f"tid {tid}"
        per_thread[tid][stage_of(frames)] += int(count)
        per_thread[tid]["\0name:" + name] = 1
    return per_thread


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def profile_kind(port: int, pids: dict[str, int], kind: str, seconds: float, rate: int,
                 work: Path, base: int) -> dict:
    """Closed-loop load of `kind` while py-spy records; CPU us per answered window of the
    service, per thread and per stage, and of the other processes in `pids` (broker, load)."""
    pid = pids["edge-runtime"]
    payloads = Payloads(kind)
    sink = Sink(port, [TOPICS.results(LINE), TOPICS.errors], from_json=True, base=base)
    pub = client(port)
    try:
        closed_loop(pub, sink, payloads, SENSOR_TOPIC, 1.0, first=base)  # warm-up
        load = threading.Thread(target=closed_loop, args=(pub, sink, payloads, SENSOR_TOPIC,
                                                          seconds + 2.0, base + PHASE))
        load.start()
        time.sleep(0.5)
        raw = work / f"{kind}.txt"
        cpu0, count0 = task_cpu(pid), sink.count
        others0 = {name: process_cpu(p) for name, p in pids.items()}
        wall0 = time.perf_counter()
        subprocess.run([shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                        "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", str(rate), "-f",
                        "raw", "--threads", "--nolineno", "--nonblocking", "-o", str(raw)],
                       check=True, capture_output=True)
        cpu1, count1 = task_cpu(pid), sink.count
        wall = time.perf_counter() - wall0
        others = {name: process_cpu(p) - others0[name] for name, p in pids.items()}
        load.join()
    finally:
        pub.disconnect()
        pub.loop_stop()
        sink.close()
    windows = count1 - count0
    res = attribute(parse_raw(raw.read_text()), cpu0, cpu1, windows, kind)
    res["processes"] = {name: used * 1e6 / max(windows, 1) for name, used in others.items()}
    res["cores_busy"] = sum(others.values()) / wall  # all three processes, of os.cpu_count()
    return res


def attribute(samples: dict[int, Counter], cpu0: dict[int, float], cpu1: dict[int, float],
              windows: int, kind: str) -> dict:
    """Each thread's CPU seconds over the recording, per window, split over its stages."""
    threads, stages = [], Counter()
    for tid, used in cpu1.items():
        us = (used - cpu0.get(tid, 0.0)) * 1e6 / max(windows, 1)
        counts = samples.get(tid, Counter())
        name = next((k[6:] for k in counts if k.startswith("\0name:")), f"tid {tid}")
        real = {k: v for k, v in counts.items() if not k.startswith("\0")}
        total = sum(real.values())
        if us < 1 and not total:
            continue
        split = {k: us * v / total for k, v in real.items()} if total else {"unsampled": us}
        stages.update(split)
        threads.append({"thread": name, "us": us, "stages": split})
    return {"kind": kind, "windows": windows, "threads": sorted(threads, key=lambda t: -t["us"]),
            "stages": dict(stages.most_common()), "us": sum(t["us"] for t in threads)}


def tables(results: list[dict], seconds: float) -> str:
    kinds = [r["kind"] for r in results]
    names = list(dict.fromkeys(s for r in results for s in r["stages"]))
    head = ("| stage | " + " | ".join(f"{k} us / window" for k in kinds) + " | "
            + " | ".join(f"{k} share" for k in kinds) + " |\n|---|"
            + "---:|" * (2 * len(kinds)) + "\n")
    rows = [f"| {n} | " + " | ".join(f"{r['stages'].get(n, 0):.0f}" for r in results) + " | "
            + " | ".join(f"{100 * r['stages'].get(n, 0) / r['us']:.0f}%" for r in results)
            + " |" for n in names]
    rows.append("| **all threads** | " + " | ".join(f"**{r['us']:.0f}**" for r in results)
                + " | " + " | ".join("100%" for _ in results) + " |")
    procs = ["| process | " + " | ".join(f"{k} CPU us / window" for k in kinds) + " |",
             "|---|" + "---:|" * len(kinds)]
    procs += [f"| {name} | " + " | ".join(f"{r['processes'][name]:.0f}" for r in results)
              + " |" for name in results[0]["processes"]]
    procs.append("| cores busy (all three) | " + " | ".join(f"{r['cores_busy']:.2f}"
                                                         for r in results) + " |")
    per_thread = []
    for r in results:
        top = "; ".join(f"{t['thread']} {t['us']:.0f} us ("
                        + ", ".join(f"{s} {v:.0f}" for s, v in
                                    sorted(t["stages"].items(), key=lambda kv: -kv[1])[:3])
                        + ")" for t in r["threads"][:6])
        per_thread.append(f"- {r['kind']}, {r['windows']} windows in {seconds:g} s: {top}")
    return ("\n".join(procs) + "\n\n" + verdict(results) + head + "\n".join(rows)
            + "\n\nPer thread (CPU us per window; its top stages):\n\n"
            + "\n".join(per_thread) + "\n")


def verdict(results: list[dict]) -> str:
    """What the busy cores say: a gateway short of CPU, or one serialised by its GIL."""
    cores, idle = os.cpu_count() or 1, []
    for r in results:
        service = r["processes"]["edge-runtime"] * r["windows"] / 1e6  # CPU s over the run
        idle.append((r["kind"], r["cores_busy"], service))
    if all(busy < cores - 0.5 for _, busy, _ in idle):
        return ("All three processes together kept " + " and ".join(
            f"{busy:.2f} ({kind})" for kind, busy, _ in idle) + f" of {cores} cores busy: "
            "under full load the gateway is not short of CPU but serialised, one Python "
            "process whose threads (paho's network loop, the worker, the outbox sender) take "
            "turns on one interpreter lock. Fewer microseconds per window in any thread, or "
            "more processes, are what raise its rate.\n\n")
    return "The processes kept the cores busy: the machine's CPU is the limit.\n\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--seconds", type=float, default=5.0, help="recording per kind")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw stacks (<kind>.txt) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-profile-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = args.bundle or build_bundle(work / "train", seconds=3.0)
        broker = start_broker(work / "mosquitto")
        config = write_runtime_config(work, port=broker.port, bundle=bundle, device_id=DEVICE,
                                      **runtime_sections(1))
        service = RunningService(config, False, work / "service.log")
        try:
            service.wait_online(broker.port, TOPICS.status)
            pids = {"edge-runtime": service.proc.pid, "mosquitto": broker.proc.pid,
                    "load (publisher + sink, this process)": os.getpid()}
            results = [profile_kind(broker.port, pids, kind, args.seconds, args.rate, work,
                                    base=10 * n * PHASE)
                       for n, kind in enumerate(("json", "binary"))]
        finally:
            service.stop_checked()
            broker.stop()
    body = (f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; py-spy "
            f"{args.rate} samples/s.\n\nThe pipeline of benchmarks/pipeline.py (one line, LoRA "
            "adapter, max_batch 32, max_wait_ms 10, outbox synchronous = \"full\", drift on) "
            "under closed-loop load; CPU time per answered window from /proc per thread, "
            "split over stages by py-spy's samples of that thread (a thread waiting for the "
            "GIL counts as sampled, so small stages of busy threads are rough).\n\n"
            + tables(results, args.seconds))
    print(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_write:
        print(f"written to {write_section(TITLE, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
