"""The demo's hand-over and gateway half: the gateway's bundle (pilot adapter) and the
workstation's copy (plus the production adapter), a signing key; then a private Mosquitto and
`edge-runtime`, real test windows replayed on two lines, the production adapter pushed over MQTT
while it serves (unsigned: refused; signed: hot-swapped), the windows replayed again,
accuracy per line and adapter version, and a clean shutdown."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from edge.bundle import BASE_FILE, sha256_file
from edge.contract import ANY, TopicLayout
from edge.errors import AdapterRejected
from export.data import load_dataset
from export.demo.local_broker import start_broker, subscriber, write_runtime_config
from export.fleet.push import push
from export.onnx.attach import add_adapter, export_attach
from export.onnx.merge import ExportReport, ExportSettings
from export.onnx.slot_plan import dir_rank
from export.signing import keygen

ADAPTER = "acsf1"
DEVICE = "demo-gw"
TOPICS = TopicLayout(device=DEVICE)  # the default prefix, "factory"
# line -> (test windows replayed on it, adapter routed to it; None = the base model). The
# adapter line names no version: it follows the newest version the gateway holds.
LINES = {"press-acsf1": ("ucr:ACSF1:test", ADAPTER), "press-plaid": ("ucr:PLAID:test", None)}
SAMPLE_EVERY = 50  # print every 50th result as it arrives
REMOUNTED, GAIN = "p3", 2.0  # phase 3: a remounted sensor, twice the gain
DRIFT_TOPICS = TOPICS.drift(ANY).removesuffix(ANY)  # factory/demo-gw/drift/
WAIT_S = 120.0


def _show(report: ExportReport) -> None:
    for line in report.lines():
        print(f"    {line}")


def build_bundles(out: Path, weights: Path, pilot: Path, production: Path,
                  test_data: str) -> tuple[Path, Path]:
    """The gateway's bundle with `pilot` as acsf1 v1, and the workstation's copy of it with
    `production` added as acsf1 v2 (parity-checked against torch); returns both directories."""
    bundle, workstation = out / "bundle", out / "bundle-workstation"
    # slots wide enough for both versions (the pilot may recommend a rank above the default 8)
    rank = max(ExportSettings().max_rank, dir_rank(pilot), dir_rank(production))
    _show(export_attach(base="reference", weights=weights, adapters=[pilot], names=[ADAPTER],
                        out=bundle, data=test_data, max_rank=rank, force=True))
    if workstation.exists():
        shutil.rmtree(workstation)
    shutil.copytree(bundle, workstation)
    print(f"[4] edge-export add-adapter: the production adapter as {ADAPTER} v2, in the "
          f"workstation's copy ({workstation})")
    _show(add_adapter(bundle=workstation, adapter=production, name=ADAPTER, base="reference",
                      weights=weights))
    digests = {sha256_file(b / BASE_FILE) for b in (bundle, workstation)}
    if len(digests) != 1:
        raise RuntimeError(f"{BASE_FILE} differs between {bundle} and {workstation}")
    print(f"    {BASE_FILE} byte-identical in both (sha256 {digests.pop()[:12]}): the running "
          "gateway can take v2")
    return bundle, workstation


def make_key(stem: Path) -> Path:
    """The signing key pair STEM.key / STEM.pub (kept from an earlier run); returns STEM.key."""
    private, public = stem.with_suffix(".key"), stem.with_suffix(".pub")
    made = "kept"
    if not (private.is_file() and public.is_file()):
        private, public = keygen(out=stem, force=True)
        made = "made"
    print(f"    edge-export keygen: {made} {private} (signs), {public.name} (the gateway "
          "trusts it)")
    return private


class Collector:
    """Subscribes to results, errors, the adapter state and the lines' drift states; prints a
    sample of the results as they come."""

    def __init__(self, port: int) -> None:
        self.truth: dict[str, str] = {}
        self.results: dict[str, dict] = {}
        self.errors: list[dict] = []  # about sensor messages
        self.state: dict = {}  # the newest factory/<device>/adapters/state
        self.drift: dict[str, dict] = {}  # line -> its newest factory/<device>/drift/<line>
        self.changed = threading.Condition()
        self.client = subscriber(port, [TOPICS.results(ANY), TopicLayout().errors, TOPICS.state,
                                        TOPICS.drift(ANY)], self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        with self.changed:
            if msg.topic == TOPICS.state:
                self.state = body
            elif msg.topic.startswith(DRIFT_TOPICS):
                self.drift[body["line"]] = body
            elif msg.topic.endswith("/errors"):  # any device's
                if "/sensors/" in str(body.get("topic")):  # adapter refusals: push reports them
                    self.errors.append(body)
            else:
                self._note(body)
            self.changed.notify_all()

    def _note(self, body: dict) -> None:
        if len(self.results) % SAMPLE_EVERY == 0:
            mark = "ok" if body["label"] == self.truth.get(body["id"]) else "miss"
            print(f"    {body['line']:<12} {body['id']:<16} -> {body['label']:<4} "
                  f"({_served_by(body)}, {body['latency_ms']:.1f} ms) {mark}")
        self.results[body["id"]] = body

    def wait_for(self, answered: int, timeout: float = WAIT_S) -> bool:
        """Until `answered` results + errors arrived in all; False on timeout."""
        with self.changed:
            return self.changed.wait_for(
                lambda: len(self.results) + len(self.errors) >= answered, timeout)

    def wait_drift(self, line: str, state: str, timeout: float = 20.0) -> dict:
        """The line's newest drift document, once it says `state` (or at the timeout)."""
        with self.changed:
            self.changed.wait_for(lambda: self.drift.get(line, {}).get("state") == state,
                                  timeout)
            return self.drift.get(line, {})

    def wait_state(self, ready: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        with self.changed:
            self.changed.wait_for(lambda: ready(self.state), timeout)
            return self.state

    def accuracy(self) -> dict[str, tuple[int, int]]:
        """"line adapter vN" -> (right, total), in order of first result."""
        scores: dict[str, tuple[int, int]] = {}
        for r in list(self.results.values()):
            if r["id"].startswith(REMOUNTED):  # twice the gain on purpose: not scored
                continue
            key = f"{r['line']} {_served_by(r)}"
            right, total = scores.get(key, (0, 0))
            scores[key] = (right + (r["label"] == self.truth[r["id"]]), total + 1)
        return scores

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _served_by(result: dict) -> str:
    """"acsf1 v2" / "base" from a result (adapter_version) or a drift document (version)."""
    version = result.get("adapter_version", result.get("version"))
    return result["adapter"] + (f" v{version}" if version is not None else "")


def replay(port: int, collector: Collector, lines: list[str], per_line: int, tag: str,
           gain: float = 1.0) -> int:
    """Publish `per_line` test windows (times `gain`) on each of `lines`, interleaved as
    presses would; ids start with `tag` (the gateway drops a repeated id). Returns the
    number published."""
    windows = {}
    for line in lines:
        ds = load_dataset(LINES[line][0], length=256)
        # UCR test files are sorted by class (PLAID's first 100 are 2 of its 11 appliances):
        # a seeded shuffle makes every replay the same mix a line would send
        order = np.random.default_rng(0).permutation(len(ds))[:per_line]
        ids = [f"{tag}-{line[6:]}-{i}" for i in range(len(order))]
        windows[line] = [(i, ds.X[k]) for i, k in zip(ids, order, strict=True)]
        collector.truth.update({i: ds.class_names[ds.y[k]] for i, k in zip(ids, order,
                                                                           strict=True)})
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for k in range(per_line):
        for line, rows in windows.items():
            if k < len(rows):
                ident, x = rows[k]
                payload = json.dumps({"id": ident, "ts": time.time(),
                                      "values": (gain * x).tolist()})
                pub.publish(TOPICS.sensors(line, "current"), payload, qos=1).wait_for_publish()
    pub.loop_stop()
    pub.disconnect()
    return sum(len(rows) for rows in windows.values())


def push_v2(port: int, workstation: Path, key: Path, collector: Collector) -> None:
    """Push the workstation's newest acsf1 unsigned (the gateway must refuse it), then signed;
    print the answers and the switch the gateway reports in its retained state."""
    where = f"127.0.0.1:{port}"
    try:
        result = push(bundle=workstation, name=ADAPTER, key=None, device=DEVICE, broker=where)
        print(f"    unsigned push NOT refused: {result.describe()}")
    except AdapterRejected as exc:
        print(f"    unsigned push: {exc}")
    result = push(bundle=workstation, name=ADAPTER, key=key, device=DEVICE, broker=where)
    print(f"    signed push:   {result.describe()}")

    def switched(doc: dict) -> bool:
        last = doc.get("last") or {}
        return last.get("version") == result.version and "switch_ms" in last

    state = collector.wait_state(switched)
    route = state.get("lines", {}).get("press-acsf1", {})
    switch_ms = state.get("last", {}).get("switch_ms", float("nan"))
    print(f"    gateway state: press-acsf1 -> {route.get('adapter')} v{route.get('version')} "
          f"(follows {route.get('follow')}); switch {switch_ms:.2f} ms, push round trip "
          f"{1000 * result.elapsed_s:.0f} ms, no restart")


def _config(out: Path, port: int, bundle: Path, key: Path) -> Path:
    return write_runtime_config(
        out, port=port, bundle=bundle, device_id=DEVICE,
        lines={line: {"adapter": adapter or "base"} for line, (_, adapter) in LINES.items()},
        batching={"max_batch": 32, "max_wait_ms": 10},
        adapters={"require_signed": True, "trusted_keys": [str(key.with_suffix(".pub"))],
                  "watch_dir": str(out / "inbox")})


def serve_and_push(out: Path, bundle: Path, workstation: Path, key: Path,
                   per_line: int = 100) -> dict[str, float]:
    """Run the gateway chain, hot swap included; returns accuracy per "line adapter vN"."""
    shown = out  # as the user gave it, for the printed paths
    out, bundle, workstation, key = (p.resolve() for p in (out, bundle, workstation, key))
    for leftover in ("state", "inbox"):  # an earlier run's v2 would serve phase 1
        shutil.rmtree(out / leftover, ignore_errors=True)
    broker = start_broker(out / "broker")
    runtime = None
    try:
        config = _config(out, broker.port, bundle, key)
        print(f"    mosquitto on 127.0.0.1:{broker.port}; edge-runtime run --config "
              f"{shown / config.name} (log: {shown / 'runtime.log'})")
        with open(out / "runtime.log", "wb") as log:
            runtime = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                        str(config)], stdout=log, stderr=subprocess.STDOUT)
        _wait_online(broker.port)
        collector = Collector(broker.port)
        try:
            _phases(broker.port, collector, workstation, key, per_line)
            _stop(runtime, out / "runtime.log")
            _show_capture(config, shown / config.name)
            return _report(collector)
        finally:
            collector.close()
    finally:
        if runtime is not None and runtime.poll() is None:
            runtime.kill()
        broker.stop()


def _phases(port: int, collector: Collector, workstation: Path, key: Path,
            per_line: int) -> None:
    print(f"    phase 1: {per_line} windows per line")
    sent = replay(port, collector, list(LINES), per_line, "p1")
    if not collector.wait_for(sent):
        print(f"    only {len(collector.results)} of {sent} answered within {WAIT_S:.0f} s")
    push_v2(port, workstation, key, collector)
    print(f"    phase 2: the same {per_line} ACSF1 windows again on press-acsf1")
    sent += replay(port, collector, ["press-acsf1"], per_line, "p2")
    if not collector.wait_for(sent):
        print(f"    only {len(collector.results)} of {sent} answered within {WAIT_S:.0f} s")
    _show_drift(collector, "drift, each line against its model's training profile")
    print(f"    phase 3: the press-acsf1 sensor remounted: the same windows at {GAIN:g}x gain")
    sent += replay(port, collector, ["press-acsf1"], per_line, REMOUNTED, gain=GAIN)
    collector.wait_for(sent)
    doc = collector.wait_drift("press-acsf1", "drift")
    _show_drift(collector, f"drift after {per_line} remounted windows")
    if doc.get("state") != "drift":
        print("    press-acsf1 did NOT reach drift")


def _show_drift(collector: Collector, title: str) -> None:
    print(f"    {title}:")
    for line, doc in sorted(collector.drift.items()):
        worst = max((doc.get("indicators") or {"-": 0.0}).items(), key=lambda kv: kv[1])
        print(f"      {line:<12} {doc.get('state'):<7} ({_served_by(doc)}, "
              f"{doc.get('windows')} windows; largest indicator {worst[0]} {worst[1]:.2f})")


def _show_capture(config: Path, shown: Path) -> None:
    """What the gateway kept as evidence in its capture store (edge-runtime capture list)."""
    print(f"    edge-runtime capture list --config {shown}:")
    listing = subprocess.run([sys.executable, "-m", "edge.cli", "capture", "list", "--config",
                              str(config)], capture_output=True, text=True, timeout=60)
    for text in (listing.stdout + listing.stderr).strip().splitlines():
        print(f"      {text}")


def _stop(runtime: subprocess.Popen, log: Path) -> None:
    runtime.send_signal(signal.SIGTERM)
    code = runtime.wait(30)
    print(f"    edge-runtime stopped on SIGTERM with exit code {code}")
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError("edge-runtime failed; the end of its log:\n" + "\n".join(tail))


def _report(collector: Collector) -> dict[str, float]:
    print(f"    {len(collector.results)} results, {len(collector.errors)} sensor errors; "
          "accuracy by line and the adapter version that served it:")
    scores = {}
    for key, (right, total) in collector.accuracy().items():
        scores[key] = right / max(total, 1)
        print(f"      {key + ':':<22} {right}/{total} = {100 * scores[key]:.1f}%")
    return scores


def _wait_online(port: int, timeout: float = 60) -> None:
    """Block until the runtime's retained status says online."""
    online = threading.Event()
    client = subscriber(port, [TOPICS.status],
                        lambda c, u, m: b'"online"' in m.payload and online.set())
    try:
        if not online.wait(timeout):
            raise RuntimeError("edge-runtime did not come online")
    finally:
        client.loop_stop()
        client.disconnect()
