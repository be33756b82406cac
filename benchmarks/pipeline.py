"""The MQTT inference pipeline against its two limits, side by side in one run.

    (a) raw pipe     paho publisher -> Mosquitto -> paho subscriber, same payloads, QoS 1
    (b) onnxruntime  batched throughput of the reference bundle (adapter active), no MQTT
    (c) pipeline     paho publisher -> Mosquitto -> edge-runtime -> Mosquitto -> paho subscriber

For JSON and binary payloads: messages/s (closed loop: at most WINDOW messages unanswered)
and p50/p99 end-to-end latency (publish -> result received, one clock); then (c) again at
half of its measured capacity (open loop, paced) for the latency target, and (a) at that
same rate for comparison. Target: (c) >= 0.7 x min(a, b), and p99 at half load
< 3 x batching.max_wait_ms.

    .venv/bin/python benchmarks/pipeline.py [--bundle DIR] [--seconds 3] [--in-process]

Writes the table into docs/BENCHMARKS.md under "## Pipeline (benchmarks/pipeline.py)".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from reference_bundle import build_bundle, sample_windows  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from edge.bundle import read_manifest  # noqa: E402
from edge.contract import Normalizer, TopicLayout  # noqa: E402
from edge.engine import Engine, load_adapter_file  # noqa: E402
from edge.mqtt import MAX_INFLIGHT, publish_properties  # noqa: E402
from export.demo.local_broker import start_broker, subscriber, write_runtime_config  # noqa: E402

TITLE = "Pipeline (benchmarks/pipeline.py)"
DEVICE = "gw-bench"
LINE = "line-a"  # routed to the bundle's adapter: the more expensive path
TOPICS = TopicLayout(device=DEVICE)  # the default prefix, "factory"
SENSOR_TOPIC = TOPICS.sensors(LINE, "imu")
RAW_TOPIC = "bench/raw/imu"  # (a): outside the service's subscriptions
BATCHING = {"max_batch": 32, "max_wait_ms": 10}
WINDOW = 1000  # closed loop: most messages in flight (< queue_bound, so none is refused)
WARMUP = 300


# --------------------------------------------------------------------------------------------
# Payloads, publisher, sink
# --------------------------------------------------------------------------------------------

class Payloads:
    """Real BasicMotions windows as sensor messages; message i carries the id "<k><i>", k the
    kind's first letter: ids never repeat across kinds, or the runtime's dedupe window would
    take a later kind's messages for duplicates and answer none of them."""

    def __init__(self, kind: str) -> None:
        x, _, _ = sample_windows()
        self.kind = kind
        self.values = [json.dumps(w.tolist()) for w in x]  # JSON bodies, built once
        self.blobs = [w.astype("<f4").tobytes() for w in x]  # (C, L) little-endian float32
        self.shape = "{},{}".format(*x.shape[1:])

    def message(self, i: int) -> tuple[bytes, object]:
        k = i % len(self.blobs)
        msg_id = f"{self.kind[0]}{i}"
        if self.kind == "json":  # the id first, so the raw-pipe sink can read it cheaply
            return f'{{"id":"{msg_id}","values":{self.values[k]}}}'.encode(), None
        return self.blobs[k], publish_properties("application/octet-stream",
                                                 {"id": msg_id, "shape": self.shape})

    @property
    def size(self) -> int:
        return len(self.message(0)[0])


def client(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(MAX_INFLIGHT)  # the same window the service publishes with
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


class Sink:
    """Subscriber recording the arrival time of each id: from the user property `id` (raw
    pipe) or from the result JSON (pipeline)."""

    def __init__(self, port: int, topics: list[str], capacity: int, from_json: bool) -> None:
        self.arrived = np.zeros(capacity)  # perf_counter() per id, 0 = not yet
        self.count, self.errors = 0, 0
        self.cond = threading.Condition()
        self.from_json = from_json
        self.client = subscriber(port, topics, self._on_message)

    def _on_message(self, c, userdata, msg) -> None:
        now = time.perf_counter()
        payload = msg.payload
        if self.from_json:  # a result or an error
            doc = json.loads(payload)
            self.errors += "reason" in doc
            msg_id = doc.get("id")
        elif payload.startswith(b'{"id":"'):  # a raw JSON sensor message: id up front
            msg_id = payload[7:payload.index(b'"', 7)]
        else:  # a raw binary sensor message
            msg_id = dict(msg.properties.UserProperty)["id"]
        with self.cond:
            self.arrived[int(msg_id[1:])] = now  # "<kind letter><i>"
            self.count += 1
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------------------------
# Load patterns
# --------------------------------------------------------------------------------------------

def closed_loop(pub: mqtt.Client, sink: Sink, payloads: Payloads, topic: str,
                seconds: float, first: int) -> dict:
    """As fast as answers come back, at most WINDOW unanswered; ids from `first` on."""
    sent: dict[int, float] = {}
    count0, i, start = sink.count, first, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sink.wait_count(count0 + (i - first) - WINDOW + 1, 5.0)  # keep < WINDOW unanswered
        body, props = payloads.message(i)
        sent[i] = time.perf_counter()
        pub.publish(topic, body, qos=1, properties=props)
        i += 1
    return _finish(sink, sent, start, count0)


def open_loop(pub: mqtt.Client, sink: Sink, payloads: Payloads, topic: str, rate: float,
              seconds: float, first: int) -> dict:
    """`rate` messages/s on a fixed schedule, whatever comes back."""
    sent: dict[int, float] = {}
    count0, start = sink.count, time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body, props = payloads.message(first + k)
        sent[first + k] = time.perf_counter()
        pub.publish(topic, body, qos=1, properties=props)
    return _finish(sink, sent, start, count0)


def _finish(sink: Sink, sent: dict[int, float], start: float, count0: int) -> dict:
    """Wait for the answers; messages/s over the run and end-to-end latency percentiles."""
    sink.wait_count(count0 + len(sent), 60)
    ids = np.fromiter(sent, dtype=np.int64)
    arrived = sink.arrived[ids]
    done = arrived > 0
    lat = (arrived[done] - np.fromiter(sent.values(), dtype=np.float64)[done]) * 1000.0
    elapsed = arrived[done].max() - start
    return {"rate": float(done.sum() / elapsed), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "lost": int((~done).sum())}


def measure(port: int, topic: str, answers: list[str], payloads: Payloads, seconds: float,
            closed: bool = True, rate: float | None = None) -> tuple[dict | None, dict | None]:
    """Publish on `topic`, collect on `answers`: a warm-up, then a closed-loop throughput
    run and/or an open-loop run at `rate` (None: half the closed-loop rate). Ids are
    distinct across phases."""
    sink = Sink(port, answers, 4_000_000, from_json=topic == SENSOR_TOPIC)
    pub = client(port)
    try:
        closed_loop(pub, sink, payloads, topic, 0.5, first=0)  # sessions, caches, pages
        full = closed_loop(pub, sink, payloads, topic, seconds, first=1_000_000) \
            if closed else None
        rate = rate if rate is not None else full["rate"] / 2
        paced = open_loop(pub, sink, payloads, topic, rate, seconds, first=2_000_000)
        return full, paced
    finally:
        pub.disconnect()
        pub.loop_stop()
        sink.close()


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


class RunningService:
    """edge-runtime as a subprocess (the deployment) or in this process (`in_process`)."""

    def __init__(self, config: Path, in_process: bool, log: Path) -> None:
        self.proc, self.service = None, None
        if in_process:
            from edge.service import Service

            self.service = Service(config)
            self.service.start()
            return
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                          str(config), "--log-level", "warning"],
                                         env=env, cwd=ROOT, stdout=out, stderr=out)

    def wait_online(self, port: int) -> None:
        got = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = lambda cl, u, m: json.loads(m.payload)["state"] == "online" and got.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(TOPICS.status, qos=1)
        ok = got.wait(60)
        c.disconnect()
        c.loop_stop()
        if not ok:
            raise RuntimeError("edge-runtime did not come online")

    def stop(self) -> int:
        if self.service is not None:
            self.service.stop()
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


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
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or build_bundle(work / "train", seconds=3.0)
        broker = start_broker(work / "mosquitto")
        try:
            rows = run_all(work, broker.port, bundle, args)
        finally:
            broker.stop()
    body = report(rows, args)
    print(body)
    if not args.no_write:
        print(f"written to {write_section(TITLE, body)}")
    return 0


def run_all(work: Path, port: int, bundle: Path, args) -> list[dict]:
    """(b) first, then for each payload kind (a) and (c) back to back, so that a busy
    machine hurts both sides of the ratio alike. The service ignores the raw-pipe topic."""
    b = engine_rows_per_s(bundle, args.threads, args.seconds)
    config = write_runtime_config(
        work, port=port, bundle=bundle, device_id=DEVICE, lines={LINE: {"adapter": LINE}},
        device={"threads": args.threads}, batching=BATCHING,
        limits={"max_payload_bytes": 1 << 20, "queue_bound": 10 * WINDOW},
        topics={"stats_interval_s": 10})
    service = RunningService(config, args.in_process, work / "service.log")
    rows = []
    try:
        service.wait_online(port)
        for kind in ("json", "binary"):
            payloads = Payloads(kind)
            answers = [TOPICS.results(LINE), TOPICS.errors]
            c, half = measure(port, SENSOR_TOPIC, answers, payloads, args.seconds)
            a, a_half = measure(port, RAW_TOPIC, [RAW_TOPIC], payloads, args.seconds,
                                rate=half["rate"])
            rows.append({"kind": kind, "size": payloads.size, "a": a, "b": b, "c": c,
                         "half": half, "a_half": a_half})
    finally:
        code = service.stop()
    if code != 0:
        raise RuntimeError(f"edge-runtime exited {code}: {(work / 'service.log').read_text()}")
    return rows


def report(rows: list[dict], args) -> str:
    mode = "in-process" if args.in_process else "a subprocess (`edge-runtime run`)"
    return (f"{machine_line(('numpy', 'onnxruntime', 'paho-mqtt'))}; Mosquitto "
            f"{mosquitto_version()} on loopback.\n\n"
            f"QoS 1 everywhere; {args.seconds:g} s per run; real BasicMotions windows (6 x 100) "
            f"on one line routed to a LoRA adapter; batching max_batch "
            f"{BATCHING['max_batch']}, max_wait_ms {BATCHING['max_wait_ms']}; onnxruntime "
            f"threads {args.threads}; edge-runtime as {mode}, its results going through the "
            "on-disk outbox (outbox.synchronous = \"full\": one fsync per batch before the "
            "batch's sensor messages are acknowledged). Throughput is closed loop (at "
            f"most {WINDOW} messages unanswered); latency is publish -> result received on one "
            "clock. Half load is an open-loop run at half of (c)'s measured rate, repeated "
            "through the raw pipe (a) at the same rate for comparison.\n\n"
            + table(rows, BATCHING["max_wait_ms"]))


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0] if "version" in out else "?"


if __name__ == "__main__":
    sys.exit(main())
