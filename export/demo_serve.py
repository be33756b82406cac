"""The demo's gateway half: bundle the adapter, start a private Mosquitto and `edge-runtime`,
replay real test windows on two lines, print predictions and accuracy, shut down cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from .bundle_export import export_attach
from .data import load_dataset
from .local_broker import start_broker, subscriber, write_runtime_config

# line -> (test windows replayed on it, adapter routed to it; None = the base model)
LINES = {"press-acsf1": ("ucr:ACSF1:test", "acsf1"), "press-plaid": ("ucr:PLAID:test", None)}
ADAPTER = "acsf1"


def build_bundle(out: Path, weights: Path, adapter: Path, test_data: str) -> Path:
    report = export_attach(base="reference", weights=weights, adapters=[adapter],
                           names=[ADAPTER], out=out / "bundle", data=test_data, force=True)
    for line in report.lines():
        print(f"    {line}")
    return out / "bundle"


class Collector:
    """Subscribes to results and errors; counts and prints them as they arrive."""

    def __init__(self, port: int, truth: dict[str, str], expected: int) -> None:
        self.truth, self.expected = truth, expected
        self.results: dict[str, dict] = {}
        self.errors: list[dict] = []
        self.done = threading.Event()
        self.client = subscriber(port, ["factory/+/inference", "factory/+/errors"],
                                 self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        if msg.topic.endswith("/errors"):
            self.errors.append(body)
        else:
            self.results[body["id"]] = body
            if len(self.results) % 25 == 1:
                mark = "ok" if body["label"] == self.truth[body["id"]] else "miss"
                print(f"    {body['line']:<12} {body['id']:<16} -> {body['label']:<10} "
                      f"({body['adapter']} v{body['adapter_version']}, "
                      f"{body['latency_ms']:.1f} ms) {mark}")
        if len(self.results) + len(self.errors) >= self.expected:
            self.done.set()

    def accuracy(self, line: str) -> tuple[int, int]:
        mine = [r for r in self.results.values() if r["line"] == line]
        return sum(r["label"] == self.truth[r["id"]] for r in mine), len(mine)


def replay(port: int, per_line: int) -> tuple[Collector, dict[str, list[str]]]:
    windows = {}
    truth: dict[str, str] = {}
    for line, (spec, _) in LINES.items():
        ds = load_dataset(spec, length=256)
        ids = [f"{line[6:]}-{i}" for i in range(min(per_line, len(ds)))]
        windows[line] = [(i, ds.X[k]) for k, i in enumerate(ids)]
        truth.update({i: ds.class_names[ds.y[k]] for k, i in enumerate(ids)})
    collector = Collector(port, truth, len(truth))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for k in range(per_line):  # the lines interleave, as two presses would
        for line, rows in windows.items():
            if k < len(rows):
                ident, x = rows[k]
                payload = json.dumps({"id": ident, "ts": time.time(), "values": x.tolist()})
                pub.publish(f"factory/{line}/sensors/current", payload, qos=1).wait_for_publish()
    pub.loop_stop()
    pub.disconnect()
    return collector, {line: [i for i, _ in rows] for line, rows in windows.items()}


def serve_and_replay(out: Path, bundle: Path, per_line: int = 100) -> dict[str, float]:
    """Run the whole gateway chain; returns accuracy per line."""
    out, bundle = out.resolve(), bundle.resolve()
    broker = start_broker(out / "broker")
    runtime = None
    try:
        config = write_runtime_config(
            out, port=broker.port, bundle=bundle, device_id="demo-gw",
            lines={line: ({"adapter": a} if a else {"adapter": "base"})
                   for line, (_, a) in LINES.items()},
            batching={"max_batch": 32, "max_wait_ms": 10})
        print(f"    mosquitto on 127.0.0.1:{broker.port}; edge-runtime run --config {config}")
        runtime = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                    str(config)])
        _wait_online(broker.port)
        collector, _ = replay(broker.port, per_line)
        collector.done.wait(120)
        runtime.send_signal(signal.SIGTERM)
        code = runtime.wait(30)
        print(f"    edge-runtime stopped on SIGTERM with exit code {code}; "
              f"{len(collector.results)} results, {len(collector.errors)} errors")
        scores = {}
        for line in LINES:
            right, total = collector.accuracy(line)
            scores[line] = right / max(total, 1)
            print(f"    {line}: {right}/{total} correct = {100 * scores[line]:.1f}%")
        collector.client.loop_stop()
        return scores
    finally:
        if runtime is not None and runtime.poll() is None:
            runtime.kill()
        broker.stop()


def _wait_online(port: int, timeout: float = 60) -> None:
    """Block until the runtime's retained status says online."""
    online = threading.Event()
    client = subscriber(port, ["factory/demo-gw/status"],
                        lambda c, u, m: b'"online"' in m.payload and online.set())
    try:
        if not online.wait(timeout):
            raise RuntimeError("edge-runtime did not come online")
    finally:
        client.loop_stop()
        client.disconnect()
