"""Worker processes against one: how fast edge-runtime drains a backlog of windows, with the
load generator out of the way.

The closed loop of benchmarks/pipeline.py shares this machine's cores between the load
generator (one Python process, the limit of the raw pipe), Mosquitto and the gateway, so it
cannot show what a second worker adds. Here, for each worker count: the runtime starts once
(its persistent sessions and shared subscription are made) and stops; N real BasicMotions
windows are published at QoS 1 while nothing runs, so the broker queues them in the
sessions; the runtime starts again and drains them, its results counted by `mosquitto_sub`
(C, its own process). Rate = answered windows between the first and the last result, over
that time (start-up and warm-up excluded). Every window must be answered exactly once.

    .venv/bin/python benchmarks/pipeline_scaling.py [--windows 8000] [--workers 1,2]
        [--kinds json,binary] [--no-write] [--json FILE]

Writes its table into docs/BENCHMARKS.md under "## Worker scaling (...)".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from pipeline import DEVICE, LINE, SENSOR_TOPIC, TOPICS, runtime_sections  # noqa: E402
from pipeline_load import Payloads, RunningService, client  # noqa: E402
from reference_bundle import build_bundle  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from export.demo.local_broker import start_broker, write_runtime_config  # noqa: E402

TITLE = "Worker scaling (benchmarks/pipeline_scaling.py)"
PERSISTENT = {"clean_start": False, "session_expiry": 600}


def drain_rate(work: Path, port: int, bundle: Path, workers: int, kind: str,
               windows: int) -> dict:
    """Publish `windows` while the runtime is down, then time how fast it answers them."""
    work.mkdir(parents=True)
    sections = runtime_sections(1, workers)
    sections["topics"] = {**sections["topics"], "stats_interval_s": 1}
    config = write_runtime_config(work, port=port, bundle=bundle, device_id=DEVICE,
                                  broker=PERSISTENT, **sections)
    first = RunningService(config, False, work / "first.log")
    first.wait_online(port, TOPICS.status)
    time.sleep(3.0)  # every worker has subscribed (warm-up: about a second each)
    first.stop_checked()
    publish_all(port, Payloads(kind), windows)
    results = work / "results.txt"
    sink = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                             "-t", TOPICS.results(LINE), "-F", "%U %p"],
                            stdout=open(results, "w"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    service = RunningService(config, False, work / "drain.log")
    try:
        deadline = time.monotonic() + 300
        while _lines(results) < windows and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        service.stop_checked()
        sink.terminate()
        sink.wait(10)
    return summarise(results, windows, workers, kind)


def publish_all(port: int, payloads: Payloads, windows: int) -> None:
    pub = client(port)
    infos = []
    for i in range(windows):
        body, props = payloads.message(i)
        infos.append(pub.publish(SENSOR_TOPIC, body, qos=1, properties=props))
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def summarise(results: Path, windows: int, workers: int, kind: str) -> dict:
    stamps, ids = [], []
    for line in results.read_text().splitlines():
        stamp, _, payload = line.partition(" ")
        stamps.append(float(stamp))
        ids.append(json.loads(payload)["id"])
    span = max(stamps) - min(stamps)
    return {"workers": workers, "kind": kind, "windows": windows, "answered": len(set(ids)),
            "duplicates": len(ids) - len(set(ids)), "seconds": span,
            "rate": (len(ids) - 1) / span if span > 0 else 0.0}


def table(rows: list[dict]) -> str:
    one = {r["kind"]: r["rate"] for r in rows if r["workers"] == 1}
    out = ("| payload | workers | windows | answered | duplicates | drain s | msg/s | "
           "x one worker |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        ratio = f"{r['rate'] / one[r['kind']]:.2f}" if r["kind"] in one else "-"
        out += (f"| {r['kind']} | {r['workers']} | {r['windows']} | {r['answered']} | "
                f"{r['duplicates']} | {r['seconds']:.2f} | {r['rate']:,.0f} | {ratio} |\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--kinds", default="json,binary", help="payload kinds to measure")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-scaling-") as tmp:
        work = Path(tmp)
        bundle = build_bundle(work / "train", seconds=3.0)
        for kind in args.kinds.split(","):
            for workers in counts:  # a fresh broker each: no session of an earlier run
                broker = start_broker(work / f"mosquitto-{kind}-{workers}")
                try:
                    rows.append(drain_rate(work / f"{kind}-{workers}", broker.port, bundle,
                                           workers, kind, args.windows))
                finally:
                    broker.stop()
    body = (f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; {os.cpu_count()} cores "
            "seen by Python.\n\nA backlog of real BasicMotions windows (QoS 1, one line, "
            "LoRA adapter, outbox.synchronous = \"full\", drift on) queued in the runtime's "
            "persistent sessions while it was stopped, then drained; results counted by "
            "mosquitto_sub. msg/s between the first and the last result. Only the broker and "
            "the runtime run meanwhile.\n\n" + table(rows))
    print(body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        print(f"written to {write_section(TITLE, body)}")
    bad = [r for r in rows if r["answered"] != r["windows"] or r["duplicates"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
