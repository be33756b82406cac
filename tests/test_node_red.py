"""The example Node-RED flow (deploy/node-red/flow.json) against the real other side:
Node-RED from npm (tests/js/node-red, `make js`) started headless with the flow, a
private Mosquitto and a running gateway. Real BasicMotions windows go in through the flow's
POST /edge/window (CSV), and the results and the gateway's status must come back THROUGH
the flow (its GET /edge/latest), the same as the gateway published them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from reference_bundle import sample_windows
from test_runtime import WAIT_S, Collector

from export.demo.local_broker import free_port

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "deploy" / "node-red" / "flow.json"
NODE_RED_DIR = ROOT / "tests" / "js" / "node-red"
NODE_RED = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
SETTINGS = NODE_RED_DIR / "settings.js"
SENSOR_TOPIC = "factory/line-a/sensors/node-red"


def _get(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # Node-RED's own 404 page (HTML) until the flow
        body = exc.read()                     # is deployed; the flow's errors are JSON
        return exc.code, json.loads(body) if body.lstrip().startswith(b"{") else {}


def _wait(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class NodeRed:
    """`node-red -u <userDir> --port <port> -s settings.js flow.json`, the flow's broker and
    topics from the environment as a plant would set them."""

    def __init__(self, tmp: Path, broker_port: int, device: str) -> None:
        node = shutil.which("node")
        if node is None or not NODE_RED.is_file():
            pytest.skip("Node-RED is not installed (make js)")
        user_dir = tmp / "node-red"
        user_dir.mkdir()
        flow = user_dir / "flow.json"
        shutil.copy(FLOW, flow)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker_port),
               "EDGE_SENSOR_TOPIC": SENSOR_TOPIC, "EDGE_RESULTS_TOPIC": "factory/+/inference",
               "EDGE_STATUS_TOPIC": f"factory/{device}/status"}
        self.log = tmp / "node-red.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [node, str(NODE_RED), "-u", str(user_dir), "--port", str(self.port),
                 "-s", str(SETTINGS), str(flow)], stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=user_dir)
        _wait(self._up, "Node-RED to serve the flow's /edge/latest", timeout=90)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Node-RED exited:\n{self.log.read_text()}")
        try:
            return _get(f"{self.url}/edge/latest")[0] == 200
        except OSError:
            return False

    def latest(self) -> dict:
        return _get(f"{self.url}/edge/latest")[1]

    def post_window(self, csv: str, msg_id: str) -> tuple[int, dict]:
        return _get(f"{self.url}/edge/window?id={msg_id}", csv.encode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        print(f"--- node-red log ---\n{self.log.read_text()}")


def _csv(window) -> str:
    """(C, L) float32 -> one CSV line per channel; 9 significant digits keep float32 exact."""
    return "\n".join(",".join(format(float(v), ".9g") for v in row) for row in window)


@pytest.mark.valid_inputs  # the flow's windows are checked against their schema too
def test_the_flow_sends_windows_and_shows_results_and_status(service, mosquitto, tmp_path):
    svc = service()
    device = svc.cfg.device.id
    gateway = Collector(mosquitto.port, ("factory/+/inference",))
    flow = NodeRed(tmp_path, mosquitto.port, device)
    try:
        x, _y, class_names = sample_windows(3)
        ids = [f"nr-real-{i}" for i in range(len(x))]
        for msg_id, window in zip(ids, x, strict=True):
            assert flow.post_window(_csv(window), msg_id) == (
                202, {"id": msg_id, "topic": SENSOR_TOPIC})
        assert flow.post_window("1,2,not a number", "bad")[0] == 400

        def seen_all():
            latest = flow.latest()
            got = {r["id"]: r for r in latest["results"]}
            return latest if set(ids) <= set(got) and any(
                i.startswith("node-red-sine-") for i in got) else None

        latest = _wait(seen_all, "the flow to show the results of its windows")
        assert latest["status"]["state"] == "online"
        assert latest["status"]["device"] == device
        shown_ids = {r["id"] for r in latest["results"]}
        assert gateway.wait(lambda c: shown_ids <= {d["id"] for d in c.docs("/inference")})
        published = {d["id"]: d for d in gateway.docs("/inference")}
        for shown in latest["results"]:  # what the flow shows is what the gateway said
            sent = published[shown["id"]]
            assert shown["label"] in class_names
            assert shown["label"] == sent["label"]
            assert shown["score"] == sent["scores"][sent["label"]]
            assert (shown["line"], shown["adapter"]) == ("line-a", "line-a")
        svc.stop(5)  # the retained status turns offline, and the flow shows it
        status = _wait(lambda: (s := flow.latest()["status"])["state"] == "offline" and s,
                       "the flow to show the gateway offline")
        assert status["reason"] == "shutdown"
    finally:
        flow.stop()
        gateway.close()
