"""The Mosquitto config and ACL of docs/SECURITY.md, taken from the page itself, against the
real runtime: the gateway serves its line, and only `adapter-publisher` reaches the control
topics. If the page's example stops working, this test fails.

Users as on the page: the gateway `gw-1` and `adapter-publisher` with client certificates
(listener 8883), `sensors-press-3` and `dashboard` with passwords (listener 8884).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from certs import Pki, client_pair, make_pki
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from reference_bundle import sample_windows
from test_runtime import WAIT_S
from test_tls import make_passwd, run_mosquitto

from edge.service import Service
from export.demo.local_broker import BrokerMissing, write_runtime_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "gw-1"
PASSWORDS = {"sensors-press-3": "s3nsor-pw", "dashboard": "d4shboard-pw"}
# Lines added in front of the page's config: a private, foreground broker that logs
# every decision ("Denied PUBLISH ..."), run as whoever runs the tests (see test_tls).
PREAMBLE = "user root\npersistence false\nlog_dest stderr\nlog_type all\n"


def doc_block(first_line: str) -> str:
    """The fenced block of docs/SECURITY.md that starts with `first_line`."""
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"docs/SECURITY.md has no block starting {first_line!r}")


def page_conf(ports: dict[str, int], pki: Pki, passwd: Path, acl: Path) -> str:
    """The page's mosquitto.conf with this test's ports and files in place of /etc."""
    conf = doc_block("# /etc/mosquitto/conf.d/factory.conf")
    for old, new in (("listener 8883", f"listener {ports['mtls']} 127.0.0.1"),
                     ("listener 8884", f"listener {ports['password']} 127.0.0.1"),
                     ("/etc/mosquitto/certs/ca.crt", str(pki.ca)),
                     ("/etc/mosquitto/certs/broker.crt", str(pki.server_cert)),
                     ("/etc/mosquitto/certs/broker.key", str(pki.server_key)),
                     ("/etc/mosquitto/passwd", str(passwd)),
                     ("/etc/mosquitto/acl", str(acl))):
        assert old in conf, old  # the page still has the shape this test expects
        conf = conf.replace(old, new)
    return PREAMBLE + conf


class Client:
    """A paho v5 client of the page's broker that keeps what it receives; `publish` returns
    the broker's PUBACK reason code and `subscribe` the SUBACK's."""

    def __init__(self, port: int, pki: Pki, *, user: str, password: str | None = None,
                 cert: tuple[Path, Path] | None = None, client_id: str = "") -> None:
        self.messages: list[tuple[str, dict]] = []
        self.acks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(pki.ca), certfile=cert and str(cert[0]),
                            keyfile=cert and str(cert[1]))
        if password is not None:
            self.client.username_pw_set(user, password)
        self.client.on_message = self._on_message
        self.client.on_publish = lambda c, u, mid, code, props: self._ack(mid, [code])
        self.client.on_subscribe = lambda c, u, mid, codes, props: self._ack(mid, codes)
        self.client.on_connect = lambda c, u, flags, code, props: self._ack(0, [code])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert not self._wait_ack(0)[0].is_failure, f"{user} was refused"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self._cond.notify_all()

    def _ack(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._cond:
            self.acks[mid] = codes
            self._cond.notify_all()

    def _wait_ack(self, mid: int) -> list[ReasonCode]:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.acks, WAIT_S), f"no ack for {mid}"
            return self.acks.pop(mid)

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        return self._wait_ack(mid)

    def publish(self, topic: str, payload: bytes | str) -> ReasonCode:
        return self._wait_ack(self.client.publish(topic, payload, qos=1).mid)[0]

    def wait(self, predicate) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), WAIT_S)

    def ids(self, topic_part: str) -> list:
        with self._cond:
            return [doc.get("id") for t, doc in self.messages if topic_part in t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Plant:
    """The page's broker, the gateway `gw-1` on it, and a way to log in as anyone."""

    def __init__(self, directory: Path, pki: Pki, bundle: Path) -> None:
        self.pki = pki
        directory.mkdir(parents=True, exist_ok=True)
        acl = directory / "acl"
        acl.write_text(doc_block("# /etc/mosquitto/acl"))
        passwd = make_passwd(directory / "passwd", PASSWORDS)
        self.broker, self.ports = run_mosquitto(
            directory / "mosquitto", ("mtls", "password"),
            lambda ports: page_conf(ports, pki, passwd, acl))
        self.clients: list[Client] = []
        gw_cert, gw_key = client_pair(pki, DEVICE)
        cfg = write_runtime_config(directory, port=self.ports["mtls"], bundle=bundle,
                                   device_id=DEVICE, lines={"press-3": {}}, broker={
                                       "client_id": DEVICE, "tls": {
                                           "enabled": True, "ca": pki.ca, "cert": gw_cert,
                                           "key": gw_key}})
        self.gateway = Service(cfg)

    def login(self, user: str, **kwargs) -> Client:
        if user in PASSWORDS:
            client = Client(self.ports["password"], self.pki, user=user,
                            password=PASSWORDS[user], **kwargs)
        else:  # a certificate whose CN is the user name
            client = Client(self.ports["mtls"], self.pki, user=user,
                            cert=client_pair(self.pki, user), **kwargs)
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.broker.log_text()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.gateway.stop(5)
        self.broker.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def plant(tmp_path, pki, basicmotions_bundle):
    try:
        plant = Plant(tmp_path, pki, basicmotions_bundle)
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    try:
        assert plant.gateway.start(WAIT_S), plant.log()
        yield plant
    finally:
        plant.close()
        print(f"--- mosquitto log ---\n{plant.log()}")  # shown for failing tests only


def window(msg_id: str) -> str:
    x, _, _ = sample_windows(1)
    return json.dumps({"id": msg_id, "values": x[0].tolist()})


def test_the_gateway_serves_its_line(plant):
    dashboard = plant.login("dashboard")
    granted = dashboard.subscribe("factory/+/inference", "factory/+/status")
    assert not any(code.is_failure for code in granted)
    assert dashboard.wait(lambda m: any(t == f"factory/{DEVICE}/status" for t, _ in m))
    sensors = plant.login("sensors-press-3")
    assert not sensors.publish("factory/press-3/sensors/imu", window("w1")).is_failure
    assert dashboard.wait(lambda m: "w1" in [d.get("id") for _, d in m])
    # The gateway came in through its certificate: user and client id are its CN.
    assert re.search(rf"New client connected from \S+ as {DEVICE} .*u'{DEVICE}'", plant.log())
    # Its status, adapter state and result all passed the ACL.
    assert f"Denied PUBLISH from {DEVICE} " not in plant.log()


CONTROL = [f"factory/{DEVICE}/adapters/{suffix}" for suffix in ("activate", "rollback",
                                                                "revoke", "put/probe")]


def test_only_the_adapter_publisher_reaches_the_control_topics(plant):
    """Each command below is malformed, so one that reaches the gateway is answered on its
    errors topic with the command's id (a put: with the adapter name from the topic)."""
    publisher = plant.login("adapter-publisher")
    assert not any(code.is_failure for code in publisher.subscribe(f"factory/{DEVICE}/errors"))
    for user in ("sensors-press-3", "dashboard"):
        intruder = plant.login(user)
        for topic in CONTROL:
            code = intruder.publish(topic, json.dumps({"id": f"{user}-{topic}"}))
            assert code.is_failure, (user, topic, code)  # PUBACK: not authorized
            assert f"Denied PUBLISH from {user} " in plant.log()
    # The intruders' commands were acknowledged (and dropped) by the broker before these
    # are sent, and the gateway answers commands in order: had one reached it, its answer
    # would come first.
    for topic in CONTROL[:3]:
        assert not publisher.publish(topic, json.dumps({"id": f"ok-{topic}"})).is_failure
    assert not publisher.publish(CONTROL[3], b"not an envelope").is_failure
    expected = [f"ok-{topic}" for topic in CONTROL[:3]] + ["probe"]
    assert publisher.wait(lambda m: len(m) >= 4), publisher.messages
    assert publisher.ids("/errors") == expected, publisher.messages


def test_sensors_cannot_forge_results_or_feed_another_line(plant):
    dashboard = plant.login("dashboard")
    dashboard.subscribe("factory/+/inference", "factory/+/errors")
    sensors = plant.login("sensors-press-3")
    for topic in ("factory/press-3/inference", "factory/press-4/sensors/imu",
                  f"factory/{DEVICE}/status"):
        assert sensors.publish(topic, window("forged")).is_failure, topic
    assert not sensors.publish("factory/press-3/sensors/imu", window("real")).is_failure
    assert dashboard.wait(lambda m: "real" in [d.get("id") for _, d in m])
    # Nothing forged arrived, and the gateway never saw press-4's window (it would have
    # answered it with an "unknown line" error).
    assert dashboard.ids("/inference") == ["real"] and dashboard.ids("/errors") == []


def test_nobody_takes_over_the_gateways_client_id(plant):
    """use_username_as_clientid: a dashboard that asks for the id gw-1 gets `dashboard`,
    so the broker does not close the gateway's connection and take its session."""
    impostor = plant.login("dashboard", client_id=DEVICE)
    assert re.search(r"New client connected from \S+ as dashboard ", plant.log())
    impostor.subscribe("factory/+/inference")
    sensors = plant.login("sensors-press-3")
    assert not sensors.publish("factory/press-3/sensors/imu", window("still")).is_failure
    assert impostor.wait(lambda m: "still" in [d.get("id") for _, d in m])  # still serving
    assert "already connected, closing old connection" not in plant.log()
    assert plant.gateway.link.connected.is_set()
