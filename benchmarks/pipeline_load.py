"""The load side of the pipeline benchmarks: real sensor messages, a publisher, a sink that
times the answers, closed- and open-loop load, and edge-runtime as a subprocess (or in
this process). Used by benchmarks/pipeline.py and benchmarks/pipeline_drift.py.

    measure(port, topic, answers, Payloads("json"), seconds) -> (closed loop, half load)

Message ids are "<kind letter><i>": never repeated across kinds, nor (with `base`) across
the rounds sent to one runtime, or its dedupe window would take a later message for a
duplicate and answer none of them.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from reference_bundle import sample_windows  # noqa: E402

from edge.mqtt import MAX_INFLIGHT, no_delay, publish_properties  # noqa: E402
from edge.mqtt_wire import LeanClient  # noqa: E402
from export.demo.local_broker import subscriber  # noqa: E402

RAW_TOPIC = "bench/raw/imu"  # (a): outside the services' subscriptions
WINDOW = 1000  # closed loop: most messages in flight (< queue_bound, so none is refused)
PHASE = 1_000_000  # ids per phase of one measure() (warm-up, closed loop, open loop)
SPAN = 3 * PHASE  # ids one measure() may use, from its `base` on


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
    c.on_socket_open = no_delay  # as the service's own client
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


class Sink:
    """Subscriber recording the arrival time of each id, from `base` on: from the user
    property `id` (raw pipe) or from the result JSON (pipeline)."""

    def __init__(self, port: int, topics: list[str], from_json: bool, base: int = 0,
                 client_class: type[mqtt.Client] = LeanClient) -> None:
        self.arrived = np.zeros(SPAN)  # perf_counter() per id - base, 0 = not yet
        self.base = base
        self.count, self.errors, self.events = 0, 0, 0
        self.cond = threading.Condition()
        self.from_json = from_json
        # LeanClient reads as the gateway does: the pipe's capacity, not stock paho's
        self.client = subscriber(port, topics, self._on_message, client_class=client_class)

    def _on_message(self, c, userdata, msg) -> None:
        now = time.perf_counter()
        payload = msg.payload
        if self.from_json:  # a result, an error, or an event (no id: a drift state change)
            doc = json.loads(payload)
            msg_id = doc.get("id")
            if msg_id is None:
                self.events += 1
                return
            self.errors += "reason" in doc
        elif payload.startswith(b'{"id":"'):  # a raw JSON sensor message: id up front
            msg_id = payload[7:payload.index(b'"', 7)]
        else:  # a raw binary sensor message
            msg_id = dict(msg.properties.UserProperty)["id"]
        with self.cond:
            self.arrived[int(msg_id[1:]) - self.base] = now  # "<kind letter><i>"
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
                seconds: float, first: int, runtime: psutil.Process | None = None) -> dict:
    """As fast as answers come back, at most WINDOW unanswered; ids from `first` on. With
    the CPU spent meanwhile per answered message: the whole machine's, and `runtime`'s
    (its worker processes included)."""
    sent: dict[int, float] = {}
    cpu = CpuMeter(runtime)
    count0, errors0, i, start = sink.count, sink.errors, first, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sink.wait_count(count0 + (i - first) - WINDOW + 1, 5.0)  # keep < WINDOW unanswered
        body, props = payloads.message(i)
        sent[i] = time.perf_counter()
        pub.publish(topic, body, qos=1, properties=props)
        i += 1
    out = _finish(sink, sent, start, count0, errors0)
    return {**out, **cpu.per_message(len(sent) - out["lost"], time.perf_counter() - start)}


class CpuMeter:
    """CPU seconds from now on: the machine's busy time (all cores, /proc/stat) and one
    process tree's user + system time."""

    def __init__(self, runtime: psutil.Process | None = None) -> None:
        self.runtime = runtime
        self.machine0, self.runtime0 = _machine_busy_s(), _tree_cpu_s(runtime)

    def per_message(self, messages: int, wall_s: float) -> dict:
        """{"cpu_us": machine CPU us per message, "cores_busy": its mean busy cores, and
        with a runtime "runtime_cpu_us"}."""
        n = max(messages, 1)
        machine = _machine_busy_s() - self.machine0
        out = {"cpu_us": machine / n * 1e6, "cores_busy": machine / max(wall_s, 1e-9)}
        if self.runtime is not None:
            out["runtime_cpu_us"] = (_tree_cpu_s(self.runtime) - self.runtime0) / n * 1e6
        return out


def _machine_busy_s() -> float:
    """CPU seconds this machine's processes and kernel ran, all cores: not idle, iowait or
    steal (the hypervisor's other guests); guest time is counted in user already."""
    t = psutil.cpu_times()
    return sum(t) - sum(getattr(t, k, 0.0) for k in ("idle", "iowait", "steal", "guest",
                                                     "guest_nice"))


def _tree_cpu_s(proc: psutil.Process | None) -> float:
    """User + system CPU seconds of `proc` and its live children (0 for None)."""
    if proc is None:
        return 0.0
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:  # a worker that exited meanwhile
            continue
        total += t.user + t.system
    return total


def open_loop(pub: mqtt.Client, sink: Sink, payloads: Payloads, topic: str, rate: float,
              seconds: float, first: int) -> dict:
    """`rate` messages/s on a fixed schedule, whatever comes back."""
    sent: dict[int, float] = {}
    count0, errors0, start = sink.count, sink.errors, time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body, props = payloads.message(first + k)
        sent[first + k] = time.perf_counter()
        pub.publish(topic, body, qos=1, properties=props)
    return _finish(sink, sent, start, count0, errors0)


def _finish(sink: Sink, sent: dict[int, float], start: float, count0: int,
            errors0: int) -> dict:
    """Wait for the answers; messages/s over the run, end-to-end latency percentiles, and
    the answers that were errors (refusals) rather than results."""
    sink.wait_count(count0 + len(sent), 60)
    ids = np.fromiter(sent, dtype=np.int64) - sink.base
    arrived = sink.arrived[ids]
    done = arrived > 0
    lat = (arrived[done] - np.fromiter(sent.values(), dtype=np.float64)[done]) * 1000.0
    elapsed = arrived[done].max() - start
    return {"rate": float(done.sum() / elapsed), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "lost": int((~done).sum()),
            "errors": sink.errors - errors0}


def measure(port: int, topic: str, answers: list[str], payloads: Payloads, seconds: float,
            closed: bool = True, rate: float | None = None, base: int = 0,
            paced: bool = True, sink_class: type[mqtt.Client] = LeanClient,
            runtime: psutil.Process | None = None) -> tuple[dict | None, dict | None]:
    """Publish on `topic`, collect on `answers` (with a `sink_class` client): a warm-up,
    then a closed-loop throughput run and/or (`paced`) an open-loop run at `rate` (None:
    half the closed-loop rate). Ids from `base` on, distinct across phases; at most PHASE
    per phase. The closed loop's CPU per message counts `runtime`'s too (closed_loop)."""
    sink = Sink(port, answers, from_json=topic != RAW_TOPIC, base=base,
                client_class=sink_class)
    pub = client(port)
    quiet_gc()
    try:
        closed_loop(pub, sink, payloads, topic, 0.5, first=base)  # sessions, caches, pages
        full = closed_loop(pub, sink, payloads, topic, seconds, first=base + PHASE,
                           runtime=runtime) if closed else None
        if not paced:
            return full, None
        rate = rate if rate is not None else full["rate"] / 2
        return full, open_loop(pub, sink, payloads, topic, rate, seconds,
                               first=base + 2 * PHASE)
    finally:
        gc.enable()
        pub.disconnect()
        pub.loop_stop()
        sink.close()


def quiet_gc() -> None:
    """No collector pauses in the load generator while it measures: this process holds
    the training stack (millions of objects, full collections of 100-250 ms that would
    count as latency on either side). What lives now is frozen, the rest waits for the end
    of the run."""
    gc.collect()
    gc.freeze()
    gc.disable()


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------

class RunningService:
    """edge-runtime as a subprocess (the deployment) or in this process (`in_process`)."""

    def __init__(self, config: Path, in_process: bool, log: Path) -> None:
        self.proc, self.service, self.log = None, None, log
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

    def wait_online(self, port: int, status_topic: str) -> None:
        got = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = lambda cl, u, m: json.loads(m.payload)["state"] == "online" and got.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(status_topic, qos=1)
        ok = got.wait(60)
        c.disconnect()
        c.loop_stop()
        if not ok:
            raise RuntimeError("edge-runtime did not come online")

    @property
    def process(self) -> psutil.Process | None:
        """The edge-runtime subprocess (its workers are its children); None in-process."""
        return None if self.proc is None else psutil.Process(self.proc.pid)

    def stop(self) -> int:
        if self.service is not None:
            self.service.stop()
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def stop_checked(self) -> None:
        """Stop; RuntimeError with its log when it did not exit 0."""
        code = self.stop()
        if code != 0:
            raise RuntimeError(f"edge-runtime exited {code}: {self.log.read_text()}")
