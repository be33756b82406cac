"""edge-runtime against a real Mosquitto: results for real BasicMotions windows, one error per
bad payload, status and last will, the CLI as a subprocess with SIGTERM.

Every test asserts that each message it sends gets exactly one answer: a result on
`factory/<line>/inference` or an error on `factory/<device>/errors`. No test asserts timings.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from reference_bundle import sample_windows

from edge.bundle import read_manifest
from edge.cli import main
from edge.codec import softmax
from edge.engine import Engine, load_adapter_file
from edge.errors import IncompatibleBundle
from edge.mqtt import publish_properties
from edge.service import ROOM_WAIT_S, Service, sensor_receive_maximum
from export.demo.local_broker import subscriber

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "gw-test"
STATUS = f"factory/{DEVICE}/status"
ERRORS = f"factory/{DEVICE}/errors"
WAIT_S = 30.0  # generous: a slow CI box must not fail a test; nothing here measures time


# --------------------------------------------------------------------------------------------
# Helpers: a collecting subscriber, publishers, the offline reference
# --------------------------------------------------------------------------------------------

class Collector:
    """A paho v5 subscriber that keeps every message: (topic, payload, retain)."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("factory/#",)) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = subscriber(port, topics, self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def docs(self, topic_part: str) -> list[dict]:
        """JSON of every message whose topic contains `topic_part`."""
        with self._cond:
            return [json.loads(p) for t, p, _ in self.messages if topic_part in t]

    def answers(self) -> list[dict]:
        return self.docs("/inference") + self.docs("/errors")

    def status(self) -> list[dict]:
        return self.docs("/status")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A paho v5 publisher; `publish` waits for the broker's PUBACK at the end (`flush`)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def json(self, topic: str, msg_id: str, window: np.ndarray, qos: int = 1) -> None:
        body = json.dumps({"id": msg_id, "ts": time.time(), "values": window.tolist()})
        self.raw(topic, body.encode(), qos=qos)

    def binary(self, topic: str, msg_id: str, window: np.ndarray) -> None:
        props = publish_properties("application/octet-stream",
                                   {"id": msg_id, "shape": "{},{}".format(*window.shape)})
        self.raw(topic, window.astype("<f4").tobytes(), props)

    def raw(self, topic: str, payload: bytes, properties=None, qos: int = 1) -> None:
        self.pending.append(self.client.publish(topic, payload, qos=qos,
                                                properties=properties))

    def flush(self) -> None:
        for info in self.pending:
            info.wait_for_publish(WAIT_S)
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class SubProcessSubscriber:
    """`mosquitto_sub -v` in the background; lines "topic payload" go to a queue."""

    def __init__(self, port: int, topics: list[str]) -> None:
        args = ["mosquitto_sub", "-V", "mqttv5", "-p", str(port), "-q", "1", "-v"]
        for topic in topics:
            args += ["-t", topic]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def take(self, n: int, timeout: float = WAIT_S) -> list[tuple[str, dict]]:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                topic, _, payload = self.lines.get(timeout=0.2).partition(" ")
            except queue.Empty:
                continue
            out.append((topic, json.loads(payload)))
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def mosquitto_pub(port: int, topic: str, *, message: str | None = None,
                  file: Path | None = None, props: dict[str, str] | None = None,
                  content_type: str | None = None) -> None:
    args = ["mosquitto_pub", "-V", "mqttv5", "-p", str(port), "-q", "1", "-t", topic]
    args += ["-m", message] if message is not None else ["-f", str(file)]
    if content_type:
        args += ["-D", "publish", "content-type", content_type]
    for key, value in (props or {}).items():
        args += ["-D", "publish", "user-property", key, value]
    subprocess.run(args, check=True, timeout=WAIT_S)


def offline(bundle: Path, x: np.ndarray, adapter: str | None) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, K) from Engine.run on windows normalised as the manifest says."""
    manifest = read_manifest(bundle)
    entry = manifest.adapter(adapter) if adapter else None
    pre = (entry.preprocessing if entry else None) or manifest.base.preprocessing
    mean = np.asarray(pre.mean, np.float32)[:, None]  # (C, 1)
    std = np.asarray(pre.std, np.float32)[:, None]
    labels = list(entry.class_names if entry else manifest.base.class_names)
    lora = load_adapter_file(bundle / entry.file) if entry else None
    logits = Engine(bundle / manifest.base.file).run((x - mean) / std, lora)
    return softmax(logits[:, : len(labels)]), labels


def exactly_once(answers: list[dict], ids: list[str]) -> None:
    counts = Counter(a["id"] for a in answers)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1), counts


# --------------------------------------------------------------------------------------------
# Results for real windows
# --------------------------------------------------------------------------------------------

@pytest.mark.valid_inputs  # real windows: they must match docs/schemas/sensor-window too
def test_results_match_offline_engine(service, mosquitto, basicmotions_bundle, tmp_path):
    """Real test windows on two lines (adapter and base), sent as JSON and binary with paho
    and mosquitto_pub, read with paho and mosquitto_sub: one result each, same label and
    scores as Engine.run on the same normalised windows."""
    x, y, classes = sample_windows(24)
    collector = Collector(mosquitto.port)
    cli_sub = SubProcessSubscriber(mosquitto.port, [STATUS, "factory/+/inference", ERRORS])
    service()
    assert cli_sub.take(1)[0][1]["state"] == "online"  # retained: mosquitto_sub is subscribed
    pub = Publisher(mosquitto.port)
    sent = {}  # id -> (line, row)
    for i in range(len(x)):
        line = "line-a" if i % 2 == 0 else "line-b"
        msg_id, topic = f"w{i}", f"factory/{line}/sensors/imu-{i % 3}"
        sent[msg_id] = (line, i)
        if i % 4 == 3:  # mosquitto_pub, binary and JSON
            file = tmp_path / f"{msg_id}.bin"
            file.write_bytes(x[i].astype("<f4").tobytes())
            mosquitto_pub(mosquitto.port, topic, file=file, props={"id": msg_id},
                          content_type="application/octet-stream")
        elif i % 4 == 2:
            mosquitto_pub(mosquitto.port, topic, message=json.dumps(
                {"id": msg_id, "values": x[i].tolist()}))
        elif i % 4 == 1:
            pub.binary(topic, msg_id, x[i])
        else:
            pub.json(topic, msg_id, x[i])
    pub.close()
    assert collector.wait(lambda c: len(c.answers()) >= len(sent))
    from_cli = cli_sub.take(len(sent))
    time.sleep(0.3)  # a duplicate would arrive right behind the last answer
    cli_sub.close()
    collector.close()

    results = collector.docs("/inference")
    assert collector.docs("/errors") == []
    exactly_once(results, list(sent))
    assert sorted(d["id"] for _, d in from_cli) == sorted(sent)  # the same via mosquitto_sub
    want = {name: offline(basicmotions_bundle, x, adapter)
            for name, adapter in (("line-a", "line-a"), ("line-b", None))}
    for doc in results:
        line, row = sent[doc["id"]]
        probs, labels = want[line]
        assert doc["line"] == line
        assert (doc["adapter"], doc["adapter_version"]) == (
            ("line-a", 1) if line == "line-a" else ("base", None))
        assert doc["label"] == labels[int(np.argmax(probs[row]))]
        np.testing.assert_allclose([doc["scores"][k] for k in labels], probs[row], atol=1e-4)
    # The adapter route really runs the adapter (with its own statistics), not the base.
    base_probs, _ = want["line-b"]
    assert np.abs(want["line-a"][0] - base_probs).max() > 1e-3
    accuracy = np.mean([doc["label"] == classes[y[sent[doc["id"]][1]]] for doc in results])
    assert accuracy >= 0.5  # a model trained for seconds on real data, well above chance


class HeldEngine:
    """Wraps svc.engine's runs (run, and run_with_features that the drift watch uses): the
    first call blocks until `release()`, so tests can fill the queue deterministically;
    `calls` records (rows, with adapter) per call."""

    def __init__(self, svc: Service) -> None:
        self.calls = []
        self.entered, self.gate = threading.Event(), threading.Event()
        engine = svc.engine
        for name in ("run", "run_with_features"):
            setattr(engine, name, self._held(getattr(engine, name)))

    def _held(self, run):
        def held(batch, adapter=None, feeds=None, **options):
            self.entered.set()
            self.gate.wait(WAIT_S)
            self.calls.append((batch.shape[0], adapter is not None))
            return run(batch, adapter, feeds, **options)
        return held

    def release(self) -> None:
        self.gate.set()


def wait_until(predicate, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.valid_inputs
def test_batches_group_rows_by_adapter(service, mosquitto):
    """Rows queued behind a held batch come out as one batch: one engine.run per model."""
    x, _, _ = sample_windows(8)
    svc = service(batching={"max_batch": 16, "max_wait_ms": 5})
    held = HeldEngine(svc)
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    pub.json("factory/line-b/sensors/s", "first", x[0])
    assert held.entered.wait(WAIT_S)
    for i in range(8):
        pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", f"g{i}", x[i])
    pub.flush()
    assert wait_until(lambda: svc.queue.qsize() == 8)
    held.release()
    assert collector.wait(lambda c: len(c.answers()) >= 9)
    exactly_once(collector.answers(), ["first"] + [f"g{i}" for i in range(8)])
    assert held.calls[0] == (1, False) and sorted(held.calls[1:]) == [(4, False), (4, True)]
    pub.close()
    collector.close()


# --------------------------------------------------------------------------------------------
# Bad input: one error each, and the service keeps answering
# --------------------------------------------------------------------------------------------

GOOD = {"id": "ok", "values": [[0.0] * 100] * 6}
BAD_PAYLOADS = [
    # (case, topic line, payload, content type, user properties, words in the reason)
    ("invalid_json", "line-a", b'{"id": "j1", "values": [[1, 2', None, None, "JSON"),
    ("invalid_utf8", "line-a", b'{"id": "u1", "values": "\xff\xfe"}', None, None, "UTF-8"),
    ("wrong_shape", "line-a", json.dumps({"id": "s1", "values": [[0.0] * 100] * 5}).encode(),
     None, None, "channels"),
    ("short_channel", "line-b", json.dumps({"id": "s2", "values": [[0.0] * 99] * 6}).encode(),
     None, None, "samples"),
    ("nan", "line-a", json.dumps({"id": "n1", "values": [[float("nan")] * 100] * 6}).encode(),
     None, None, "NaN"),
    ("strings", "line-a", json.dumps({"id": "t1", "values": [["1.0"] * 100] * 6}).encode(),
     None, None, "number"),
    ("huge", "line-a", json.dumps({"id": "h1", "values": [[1.5] * 20000] * 6}).encode(),
     None, None, "limit"),
    ("empty", "line-a", b"", None, None, "empty"),
    ("not_object", "line-b", b"[1, 2, 3]", None, None, "object"),
    ("deep", "line-b", b"[" * 5000 + b"]" * 5000, None, None, "nested"),
    ("unknown_line", "line-z", json.dumps(GOOD).encode(), None, None, "unknown line"),
    ("binary_size", "line-a", b"\x00" * 10, "application/octet-stream", {"id": "b1"}, "bytes"),
    ("binary_no_id", "line-a", b"\x00" * 2400, "application/octet-stream", {}, "id"),
    ("binary_nan", "line-a", np.full((6, 100), np.nan, "<f4").tobytes(),
     "application/octet-stream", {"id": "b2"}, "NaN"),
    ("content_type", "line-a", b"abc", "text/csv", {"id": "c1"}, "content_type"),
]


def test_bad_payloads_get_one_error_each(service, mosquitto):
    svc = service()
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    for case, line, payload, ctype, props, _ in BAD_PAYLOADS:
        properties = publish_properties(ctype, props) if ctype or props else None
        pub.raw(f"factory/{line}/sensors/{case}", payload, properties)
    pub.flush()
    assert collector.wait(lambda c: len(c.docs("/errors")) >= len(BAD_PAYLOADS))
    pub.raw("factory/line-a/sensors/after", json.dumps(GOOD).encode())  # still serving
    assert collector.wait(lambda c: len(c.docs("/inference")) >= 1)
    time.sleep(0.3)
    errors = {e["topic"].rsplit("/", 1)[1]: e for e in collector.docs("/errors")}
    assert len(collector.docs("/errors")) == len(BAD_PAYLOADS)
    for case, _, _, _, props, words in BAD_PAYLOADS:
        assert words.lower() in errors[case]["reason"].lower(), (case, errors[case])
        if props and props.get("id"):
            assert errors[case]["id"] == props["id"]
    assert errors["wrong_shape"]["id"] == "s1"  # ids are recovered even from bad messages
    assert [d["id"] for d in collector.docs("/inference")] == ["ok"]
    assert svc.counters.totals["errors"] == len(BAD_PAYLOADS)
    pub.close()
    collector.close()


def held_burst(service, port: int, ids: list[str]):
    """A service with a queue of 2 whose engine holds the first window (QoS 1); the other
    `ids` sent at QoS 0 meanwhile. (service, HeldEngine, Collector, Publisher)."""
    x, _, _ = sample_windows(1)
    svc = service(limits={"queue_bound": 2}, batching={"max_batch": 1, "max_wait_ms": 0})
    held = HeldEngine(svc)
    collector = Collector(port, ("factory/+/inference", ERRORS))
    pub = Publisher(port)
    pub.json("factory/line-b/sensors/s", ids[0], x[0])
    assert held.entered.wait(WAIT_S)
    for msg_id in ids[1:]:
        pub.json("factory/line-b/sensors/s", msg_id, x[0], qos=0)
    pub.flush()
    return svc, held, collector, pub


def test_a_burst_past_the_queue_waits_for_room_and_is_answered_whole(service, mosquitto):
    """Worker held for less than ROOM_WAIT_S, queue bound 2: the windows past the queue
    wait (paho's thread, then the socket and the broker) instead of being refused; every
    one is answered once, none is an error. QoS 0, which no Receive Maximum holds back:
    as a broker that overshoots it (Mosquitto 2.0 once acknowledgements flow) would send."""
    ids = [f"w{i}" for i in range(12)]
    svc, held, collector, pub = held_burst(service, mosquitto.port, ids)
    time.sleep(ROOM_WAIT_S / 3)
    held.release()
    assert collector.wait(lambda c: len(c.answers()) >= len(ids))
    time.sleep(0.3)
    exactly_once(collector.answers(), ids)
    assert collector.docs("/errors") == []
    assert svc.counters.totals["queue_full"] == 0
    pub.close()
    collector.close()


def test_receive_maximum_is_what_the_queue_holds():
    """By count (queue_bound) and by 64 MiB of JSON windows of the input shape; at least 1."""
    assert sensor_receive_maximum(10_000, (6, 100)) == (64 << 20) // (24 * 600) == 4660
    assert sensor_receive_maximum(2, (6, 100)) == 2
    assert sensor_receive_maximum(10_000, (3, 1024, 1024)) == 1


def test_full_queue_is_an_error_not_a_crash(service, mosquitto):
    """Worker held past ROOM_WAIT_S, queue bound 2: the overflow is reported; everything
    else is answered. The windows after the first go at QoS 0: at QoS 1 the broker holds
    them back (the gateway's Receive Maximum is its queue bound), so none would overflow."""
    ids = [f"q{i}" for i in range(8)]  # q0 in flight; q1, q2 fill the queue; q3..q7 overflow
    svc, held, collector, pub = held_burst(service, mosquitto.port, ids)
    assert collector.wait(lambda c: len(c.docs("/errors")) >= 5)
    held.release()
    assert collector.wait(lambda c: len(c.answers()) >= len(ids))
    time.sleep(0.3)
    exactly_once(collector.answers(), ids)
    assert sorted(e["id"] for e in collector.docs("/errors")) == ids[3:]
    assert all("queue full" in e["reason"] for e in collector.docs("/errors"))
    assert svc.counters.totals["queue_full"] == 5
    pub.close()
    collector.close()


@pytest.mark.parametrize("where", ["line_of", "decode_sensor"])
def test_a_bug_is_reported_for_its_message_only(service, mosquitto, monkeypatch, where):
    """An exception in the MQTT handler (line_of, network thread) or in decoding (worker)
    answers that message on the errors topic; the next message is served."""
    import edge.service

    real = getattr(edge.service, where)

    def flaky(first, *args, **kwargs):
        if b"boom" in (first if isinstance(first, bytes) else first.encode()):
            raise RuntimeError("boom")
        return real(first, *args, **kwargs)

    monkeypatch.setattr(edge.service, where, flaky)
    service()
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    topic = "factory/line-a/sensors/" + ("boom" if where == "line_of" else "s")
    pub.raw(topic, b'{"id": "boom-1", "values": []}')
    pub.raw("factory/line-a/sensors/s", json.dumps(GOOD).encode())
    assert collector.wait(lambda c: len(c.answers()) >= 2)
    (error,) = collector.docs("/errors")
    assert error["id"] == "boom-1" and "RuntimeError: boom" in error["reason"]
    assert [d["id"] for d in collector.docs("/inference")] == ["ok"]
    pub.close()
    collector.close()


def test_unknown_adapter_fails_at_start(runtime_config):
    with pytest.raises(IncompatibleBundle, match="no adapter 'nope'"):
        Service(runtime_config(lines={"line-a": {"adapter": "nope"}}))


def test_no_lines_configured_serves_every_line_with_the_base(service, mosquitto):
    service(lines={})
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    pub.raw("factory/any-line/sensors/s", json.dumps(GOOD).encode())
    assert collector.wait(lambda c: len(c.answers()) >= 1)
    (doc,) = collector.docs("/inference")
    assert (doc["line"], doc["adapter"]) == ("any-line", "base")
    pub.close()
    collector.close()


# --------------------------------------------------------------------------------------------
# Status, stats, last will
# --------------------------------------------------------------------------------------------

def test_status_online_stats_and_offline(service, mosquitto):
    svc = service(topics={"stats_interval_s": 0.2})
    collector = Collector(mosquitto.port)  # subscribes after start: status comes retained
    assert collector.wait(lambda c: c.status())
    online = collector.status()[0]
    assert online["state"] == "online" and online["device"] == DEVICE
    assert online["routes"]["line-a"] == {"adapter": "line-a", "version": 1}
    assert online["routes"]["line-b"] == {"adapter": "base", "version": None}
    assert online["adapters"] == [{"name": "line-a", "version": 1}]
    assert {"package_version", "onnxruntime_version", "providers"} <= set(online)
    # Retained: a subscriber that arrives after the publish still gets it, flagged retained
    # (the first collector may have subscribed before it and seen it live).
    newcomer = Collector(mosquitto.port, (STATUS,))
    assert newcomer.wait(lambda c: c.status())
    assert newcomer.status()[0]["state"] == "online" and newcomer.messages[0][2]
    newcomer.close()
    assert collector.wait(lambda c: c.docs("/stats"))
    stats = collector.docs("/stats")[0]
    assert {"messages_per_s", "latency_ms", "errors", "queue_depth", "batch_size"} <= set(stats)
    svc.stop(5)
    assert collector.wait(lambda c: c.status()[-1]["state"] == "offline")
    assert collector.status()[-1]["reason"] == "shutdown"
    collector.close()
    late = Collector(mosquitto.port, (STATUS,))  # a newcomer sees offline, retained
    assert late.wait(lambda c: c.status())
    assert late.status()[-1]["state"] == "offline" and late.messages[-1][2]
    late.close()


@contextmanager
def stops_cleanly(proc: subprocess.Popen, log: Path, collector: Collector
                  ) -> Iterator[subprocess.Popen]:
    """Around a test of `edge-runtime run` as a subprocess: after the body, SIGTERM must end
    it with exit 0 (its log in the message); whatever happened, it is killed and
    `collector` closed."""
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, log.read_text()
    finally:
        proc.kill()
        proc.wait(5)
        collector.close()


def _spawn(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the service
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                 str(config), "--log-level", "info"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_state(collector: Collector, state: str, proc: subprocess.Popen, log: Path) -> None:
    def seen(c: Collector) -> bool:
        died = state == "online" and proc.poll() is not None
        return died or any(s["state"] == state for s in c.status())

    if not collector.wait(seen) or not any(s["state"] == state for s in collector.status()):
        proc.kill()
        proc.wait(5)
        pytest.fail(f"no status {state!r}; service output:\n{log.read_text()}")


def test_last_will_when_the_process_dies(runtime_config, mosquitto, tmp_path):
    log = tmp_path / "service.log"
    proc = _spawn(runtime_config(), log)
    collector = Collector(mosquitto.port, (STATUS,))
    try:
        _wait_state(collector, "online", proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _wait_state(collector, "offline", proc, log)
        assert collector.status()[-1]["reason"] == "connection lost"
    finally:
        proc.kill()
        proc.wait(5)
        collector.close()


def test_cli_sigterm_drains_publishes_and_exits_zero(runtime_config, mosquitto, tmp_path):
    x, _, _ = sample_windows(30)
    log = tmp_path / "service.log"
    proc = _spawn(runtime_config(batching={"max_batch": 8, "max_wait_ms": 20}), log)
    collector = Collector(mosquitto.port)
    try:
        _wait_state(collector, "online", proc, log)
        pub = Publisher(mosquitto.port)
        ids = [f"t{i}" for i in range(len(x))]
        for i, msg_id in enumerate(ids):
            pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", msg_id, x[i])
        pub.flush()
        assert collector.wait(lambda c: len(c.answers()) >= 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, log.read_text()
        _wait_state(collector, "offline", proc, log)
        assert collector.status()[-1]["reason"] == "shutdown"
        # Results or "shutting down" errors; either way each message is answered once.
        assert collector.wait(lambda c: len(c.answers()) >= len(ids))
        exactly_once(collector.answers(), ids)
        pub.close()
    finally:
        proc.kill()
        proc.wait(5)
        collector.close()


# --------------------------------------------------------------------------------------------
# The CLI in-process (click's runner)
# --------------------------------------------------------------------------------------------

def test_check_config_prints_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "gw 1"\n[broker]\nport = 70000\nhots = "x"\n'
                   '[topics]\nqos = 3\n')
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{bad}: ") for line in lines)
    for key in ("device.id", "broker.port", "broker.hots", "topics.qos"):
        assert any(f": {key}: " in line for line in lines), (key, lines)


def test_check_config_ok(runtime_config):
    result = CliRunner().invoke(main, ["check-config", str(runtime_config())])
    assert (result.exit_code, result.output.strip()) == (0, "ok")


def test_run_with_a_missing_bundle_is_one_error_line(runtime_config, tmp_path):
    result = CliRunner().invoke(main, ["run", "--config", str(runtime_config()),
                                       "--bundle", str(tmp_path / "nowhere")])
    assert result.exit_code == IncompatibleBundle.exit_code
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
