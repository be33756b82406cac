"""Sparkplug B mode against a real Mosquitto, every message decoded by an implementation this
code does not share: Eclipse Tahu's JavaScript decoder (npm sparkplug-payload, run by node
from tests/js/sparkplug; `make js` installs it with npm ci, `make test` first).

One gateway session goes through: births, results, a rebirth request, bad commands, its
Sparkplug connection cut uncleanly (the will NDEATH, results waiting for the rebirth), and a
broker restart; then the whole capture is checked: births first, bdSeq per connection, seq
consecutive mod 256 within each birth, DDATA equal to the JSON results, nothing lost.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from reference_bundle import sample_windows
from test_runtime import ERRORS, WAIT_S, Publisher

from edge.config import Config
from edge.service import Service
from export.demo.local_broker import start_broker

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js" / "sparkplug"
GROUP, NODE = "plant-1", "gw-test"
SPB = f"spBv1.0/{GROUP}"
LINES = ("line-a", "line-b")


def tahu(args: list[str], doc: list) -> list:
    """Run tests/js/sparkplug/decode.js with `doc` as its stdin JSON."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "sparkplug-payload").is_dir():
        pytest.fail("node or tests/js/sparkplug/node_modules missing: run `make js`")
    out = subprocess.run([node, str(JS / "decode.js"), *args], input=json.dumps(doc),
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def tahu_encode(metrics: list[dict]) -> bytes:
    """A command payload encoded by Tahu: metrics [{"name", "type", "value"}]."""
    return base64.b64decode(tahu(["--encode"], [{"timestamp": 0, "metrics": metrics}])[0])


class Capture:
    """Every message on spBv1.0/# and factory/#, in arrival order; subscribes again after a
    reconnect (the broker restart)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("spBv1.0/#", SubscribeOptions(qos=1)), ("factory/#", SubscribeOptions(qos=1))])
        self.client.on_subscribe = lambda *_: self._note(None)
        self.client.on_message = lambda c, u, msg: self._note((msg.topic, msg.payload))
        self.subscriptions = 0
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.wait(lambda c: c.subscriptions >= 1)

    def _note(self, message: tuple[str, bytes] | None) -> None:
        with self._cond:
            if message is None:
                self.subscriptions += 1
            else:
                self.messages.append(message)
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def count(self, part: str) -> int:
        with self._cond:
            return sum(part in t for t, _ in self.messages)

    def json(self, part: str) -> list[dict]:
        with self._cond:
            return [json.loads(p) for t, p in self.messages if part in t]

    def sparkplug(self) -> list[dict]:
        """Every spBv1.0 message the node published (not the test's commands), decoded by
        Tahu: {"topic", "payload"} in arrival order."""
        with self._cond:
            raw = [{"topic": t, "payload": base64.b64encode(p).decode()}
                   for t, p in self.messages
                   if t.startswith("spBv1.0/") and t.split("/")[2] not in ("NCMD", "DCMD")]
        return tahu([], raw)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def metric(payload: dict, name: str):
    found = [m for m in payload["metrics"] if m["name"] == name]
    assert len(found) == 1, (name, payload)
    return found[0]["value"]


def send(port: int, prefix: str, n: int, start: int = 0) -> list[str]:
    """n real BasicMotions windows, alternating lines; returns their ids."""
    x, _, _ = sample_windows()
    pub, ids = Publisher(port), []
    for i in range(start, start + n):
        ids.append(f"{prefix}{i}")
        pub.json(f"factory/{LINES[i % 2]}/sensors/imu", ids[-1], x[i % len(x)])
    pub.close()
    return ids


def check_sessions(msgs: list[dict]) -> list[list[dict]]:
    """Split at each NBIRTH; in each: NBIRTH seq 0, a DBIRTH per line, then seq +1 mod 256
    on every NBIRTH/DBIRTH/DDATA. NDEATH carries no seq and is left out."""
    assert msgs[0]["topic"] == f"{SPB}/NBIRTH/{NODE}", msgs[0]["topic"]
    sessions: list[list[dict]] = []
    for msg in msgs:
        assert "error" not in msg, msg
        kind = msg["topic"].split("/")[2]
        if kind == "NBIRTH":
            sessions.append([])
        if kind != "NDEATH":
            sessions[-1].append(msg)
    for session in sessions:
        seqs = [m["payload"]["seq"] for m in session]
        assert seqs == [i % 256 for i in range(len(seqs))], seqs
        births = [m["topic"] for m in session[1:1 + len(LINES)]]
        assert births == [f"{SPB}/DBIRTH/{NODE}/{line}" for line in LINES], births
    return sessions


def check_dbirth(msg: dict, labels: list[str]) -> None:
    """Every metric of a line, with its Sparkplug datatype, null before any result."""
    types = {m["name"]: m["type"] for m in msg["payload"]["metrics"]}
    assert types == {"Inference/Label": "String", "Inference/Message ID": "String",
                     "Inference/Latency ms": "Double", "Model/Adapter": "String",
                     "Model/Adapter Version": "Int64", "Drift/State": "String",
                     **{f"Inference/Scores/{c}": "Double" for c in labels}}, types


def check_ddata(ddata: list[dict], results: list[dict]) -> None:
    """One DDATA per JSON result, with its values."""
    by_id = {metric(m["payload"], "Inference/Message ID"): m for m in ddata}
    assert len(by_id) == len(ddata) and sorted(by_id) == sorted(r["id"] for r in results)
    for doc in results:
        msg = by_id[doc["id"]]
        assert msg["topic"] == f"{SPB}/DDATA/{NODE}/{doc['line']}"
        payload = msg["payload"]
        assert metric(payload, "Inference/Label") == doc["label"]
        assert metric(payload, "Inference/Latency ms") == doc["latency_ms"]
        assert metric(payload, "Model/Adapter") == doc["adapter"]
        assert metric(payload, "Model/Adapter Version") == doc["adapter_version"]
        for name, score in doc["scores"].items():
            assert metric(payload, f"Inference/Scores/{name}") == score


def test_sparkplug_session_through_rebirth_cut_and_broker_restart(
        runtime_config, mosquitto, basicmotions_bundle):
    config = runtime_config(sparkplug={"enabled": True, "group_id": GROUP})
    capture = Capture(mosquitto.port)
    svc = Service(config)
    broker = mosquitto
    try:
        assert svc.start()
        labels = {line: list(svc.routes.routes[line].labels) for line in LINES}
        assert capture.wait(lambda c: c.count("/DBIRTH/") == 2)
        # 1. results: 260 windows, so seq wraps past 255 within one birth
        ids = send(broker.port, "a", 260)
        assert capture.wait(lambda c: c.count("/DDATA/") == len(ids))
        # 2. a rebirth request (encoded by Tahu), then bad commands: each one error report
        pub = Publisher(broker.port)
        pub.raw(f"{SPB}/NCMD/{NODE}", tahu_encode(
            [{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]))
        pub.flush()
        assert capture.wait(lambda c: c.count("/NBIRTH/") == 2 and c.count("/DBIRTH/") == 4)
        pub.raw(f"{SPB}/NCMD/{NODE}", b"\xff\x00 not a protobuf")
        pub.raw(f"{SPB}/NCMD/{NODE}", tahu_encode(
            [{"name": "Node Control/Reboot", "type": "Boolean", "value": True}]))
        pub.raw(f"{SPB}/NCMD/{NODE}", tahu_encode(
            [{"name": "Node Control/Rebirth", "type": "Boolean", "value": False}]))
        pub.raw(f"{SPB}/NCMD/other-node", tahu_encode(  # another node's: never ours
            [{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]))
        pub.raw(f"{SPB}/DCMD/{NODE}/line-a", tahu_encode(
            [{"name": "Model/Adapter", "type": "String", "value": "x"}]))
        pub.close()
        assert capture.wait(lambda c: c.count(ERRORS) == 4), capture.json(ERRORS)
        ids += send(broker.port, "b", 4)  # the inference path is unaffected
        assert capture.wait(lambda c: c.count("/DDATA/") == len(ids))
        # 3. the Sparkplug connection cut without DISCONNECT: the broker sends NDEATH (the
        # will, bdSeq 0); results made meanwhile wait and follow the new NBIRTH (bdSeq 1).
        node = svc.sparkplug
        node.client.reconnect_delay_set(3, 3)  # the results below arrive while it is down
        node.client.socket().shutdown(socket.SHUT_RDWR)
        assert capture.wait(lambda c: c.count("/NDEATH/") == 1)
        held = send(broker.port, "c", 4)
        assert capture.wait(lambda c: c.count("/inference") == len(ids) + len(held))
        if not node.born:  # a very slow machine may have reconnected already
            assert node.waiting == len(held)
        ids += held
        assert capture.wait(lambda c: c.count("/DDATA/") == len(ids))
        # 4. the broker restarts; the capture subscribes again within ~1 s, the node
        # connects after 3 s: NBIRTH bdSeq 2 (the broker died with the will of bdSeq 1).
        broker.kill()
        broker = start_broker(mosquitto.conf.parent, port=mosquitto.port)
        assert capture.wait(lambda c: c.count("/NBIRTH/") == 4), capture.json(ERRORS)
        assert svc.link.wait_ready(WAIT_S)
        ids += send(broker.port, "d", 2)
        assert capture.wait(lambda c: c.count("/DDATA/") == len(ids))
    finally:
        svc.stop(5)
        if broker is not mosquitto:
            broker.stop()
    assert capture.wait(lambda c: c.count("/NDEATH/") == 2)  # the clean stop's own
    msgs = capture.sparkplug()
    capture.close()

    sessions = check_sessions(msgs)
    assert [metric(s[0]["payload"], "bdSeq") for s in sessions] == [0, 0, 1, 2]
    assert all(metric(s[0]["payload"], "Node Control/Rebirth") is False for s in sessions)
    deaths = [m for m in msgs if "/NDEATH/" in m["topic"]]
    assert [metric(m["payload"], "bdSeq") for m in deaths] == [0, 2]
    assert msgs.index(deaths[0]) < msgs.index(sessions[2][0])  # the will, before bdSeq 1
    for session in sessions:
        for msg, line in zip(session[1:3], LINES, strict=True):
            check_dbirth(msg, labels[line])
    ddata = [m for m in msgs if "/DDATA/" in m["topic"]]
    results = [d for d in capture.json("/inference")]
    check_ddata(ddata, results)
    # the held results: sent after the bdSeq 1 NBIRTH, stamped with their own earlier time
    later = {metric(m["payload"], "Inference/Message ID") for m in sessions[2]
             if "/DDATA/" in m["topic"]}
    assert set(held) <= later
    birth_ts = sessions[2][0]["payload"]["timestamp"]
    assert all(m["payload"]["timestamp"] <= birth_ts for m in sessions[2]
               if "/DDATA/" in m["topic"] and metric(m["payload"], "Inference/Message ID")
               in held)
    reasons = [e["reason"] for e in capture.json(ERRORS)]
    assert sum("not a Sparkplug B payload" in r for r in reasons) == 1, reasons
    assert sum("unsupported NCMD" in r for r in reasons) == 2, reasons
    assert sum("DCMD" in r for r in reasons) == 1, reasons


def test_instead_mode_publishes_results_only_to_sparkplug(runtime_config, mosquitto):
    config = runtime_config(sparkplug={"enabled": True, "group_id": GROUP, "mode": "instead"},
                            drift={"enabled": False})
    capture = Capture(mosquitto.port)
    svc = Service(config)
    try:
        assert svc.start()
        assert capture.wait(lambda c: c.count("/DBIRTH/") == 2)
        ids = send(mosquitto.port, "i", 6)
        assert capture.wait(lambda c: c.count("/DDATA/") == len(ids))
        assert capture.wait(lambda c: any(s.get("state") == "online"
                                          for s in c.json("/status")))
    finally:
        svc.stop(5)
    msgs = capture.sparkplug()
    capture.close()
    assert capture.count("/inference") == 0
    check_sessions([m for m in msgs if "/NDEATH/" not in m["topic"]])
    names = {m["name"] for m in msgs[1]["payload"]["metrics"]}
    assert "Drift/State" not in names  # drift off: no drift metric
    assert sorted(metric(m["payload"], "Inference/Message ID") for m in msgs
                  if "/DDATA/" in m["topic"]) == sorted(ids)


def results_in(ddata: dict) -> list[dict]:
    """A DDATA's results: its metrics split where each result's first metric (the label)
    starts again, as {name: value} plus the group's timestamps."""
    groups: list[dict] = []
    for m in ddata["payload"]["metrics"]:
        if m["name"] == "Inference/Label":
            groups.append({"_stamps": set()})
        groups[-1][m["name"]] = m["value"]
        groups[-1]["_stamps"].add(m["timestamp"])
    return groups


def test_per_batch_ddata_carries_every_result_in_order(runtime_config, mosquitto):
    """`ddata = "per_batch"`: one DDATA per line per inference batch, fewer messages than
    results, each result's metrics once, in the JSON results' order, with one timestamp."""
    config = runtime_config(sparkplug={"enabled": True, "group_id": GROUP,
                                       "ddata": "per_batch"})
    capture = Capture(mosquitto.port)
    svc = Service(config)
    try:
        assert svc.start()
        assert capture.wait(lambda c: c.count("/DBIRTH/") == 2)
        ids = send(mosquitto.port, "b", 64)
        assert capture.wait(lambda c: len(c.json("/inference")) == len(ids))
        assert capture.wait(lambda c: sum(len(results_in(m)) for m in c.sparkplug()
                                          if "/DDATA/" in m["topic"]) == len(ids))
    finally:
        svc.stop(5)
    msgs = capture.sparkplug()
    docs = capture.json("/inference")
    capture.close()
    check_sessions([m for m in msgs if "/NDEATH/" not in m["topic"]])
    ddata = [m for m in msgs if "/DDATA/" in m["topic"]]
    assert len(ddata) < len(ids)  # 64 windows sent at once form batches
    for line in LINES:
        sent = [r for m in ddata if m["topic"].endswith(f"/{line}") for r in results_in(m)]
        answered = [d for d in docs if d["line"] == line]
        assert [r["Inference/Message ID"] for r in sent] == [d["id"] for d in answered]
        for r, doc in zip(sent, answered, strict=True):
            assert len(r["_stamps"]) == 1 and r["Inference/Label"] == doc["label"]
            assert all(r[f"Inference/Scores/{c}"] == v for c, v in doc["scores"].items())


@pytest.mark.parametrize("key,value", [("group_id", "a/b"), ("group_id", "plant+1"),
                                       ("edge_node_id", "gw#1"), ("edge_node_id", ""),
                                       ("group_id", "has space"), ("mode", "both"),
                                       ("ddata", "per_line")])
def test_sparkplug_ids_follow_the_spec(key, value):
    with pytest.raises(ValueError, match=f"sparkplug.{key}|{key}"):
        Config.model_validate({"device": {"id": "gw"}, "sparkplug": {key: value}})
