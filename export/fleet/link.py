"""One gateway reached over MQTT from the workstation (`edge-export push` and `revoke`):
the broker session, the gateway's topics (edge/contract/topics.py) and waiting for its
answer, with the option checks both commands share.

    dev = device_link(device="gw-1", prefix="factory", broker="broker.plant:8883", ...)
    dev.link.connect(); dev.link.subscribe(dev.topics()); dev.link.publish(topic, payload)
    answer = dev.wait("the put of line7 v3", decide)   # decide(Message) -> answer or None

Every received message is queued and judged on the caller's thread in arrival order, so the
first decisive message wins and nothing races.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.contract import DEVICE_RULE, PREFIX_RULE, TopicLayout, device_problem, prefix_problem
from edge.errors import ConfigError, EdgeError
from edge.mqtt import no_delay

T = TypeVar("T")
Progress = Callable[[str], None]
KEEPALIVE_S = 30


# --------------------------------------------------------------------------------------------
# Options: the broker address, credentials, TLS
# --------------------------------------------------------------------------------------------

def parse_broker(broker: str, tls: bool) -> tuple[str, int]:
    """"host", "host:port", "[v6addr]:port" -> (host, port); 1883, or 8883 with TLS."""
    host, port = broker.strip(), None
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or None)
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise ConfigError(f"--broker {broker!r}: expected HOST[:PORT], like 10.0.0.5:1883")
    return host, int(port) if port is not None else (8883 if tls else 1883)


def from_env(flag: str, name: str | None) -> str | None:
    """The secret in environment variable `name`: never on the command line, where other
    users can read it in the process list."""
    if name is None:
        return None
    if name not in os.environ:
        raise ConfigError(f"{flag} {name}: environment variable is not set")
    return os.environ[name]


def check_gateway(device: str, prefix: str, timeout: float) -> None:
    """The gateway's own rules (edge/contract/names.py) for --device and --prefix, checked
    here: a typo becomes an error naming the flag instead of a timeout."""
    if device_problem(device):
        raise ConfigError(f"--device {device!r}: must be {DEVICE_RULE}, as the gateway's "
                          "device.id")
    if prefix_problem(prefix):
        raise ConfigError(f"--prefix {prefix!r}: must be {PREFIX_RULE}, as the gateway's "
                          "topics.prefix")
    if not timeout > 0:
        raise ConfigError(f"--timeout {timeout}: must be > 0 seconds")


@dataclass(frozen=True)
class TlsFiles:
    """TLS to the broker: `ca` None = the system trust store; cert and key go together."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None

    def apply(self, client: mqtt.Client) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together: pass both or neither")
        try:
            client.tls_set(ca_certs=None if self.ca is None else str(self.ca),
                           certfile=None if self.cert is None else str(self.cert),
                           keyfile=None if self.key is None else str(self.key),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--tls-ca/--tls-cert/--tls-key: cannot set up TLS ({exc})") \
                from None


# --------------------------------------------------------------------------------------------
# The MQTT client: connect, subscribe, publish, each waited for; messages into a queue
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """One message received on the gateway's topics."""

    topic: str
    payload: bytes
    retain: bool

    def doc(self) -> dict | None:
        """The JSON object, or None: a stranger's garbage on these topics is ignored."""
        try:
            doc = json.loads(self.payload)
        except (ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None


class BrokerSession:
    """One MQTT v5 client with a clean, expiring session (a push leaves nothing behind)."""

    def __init__(self, host: str, port: int, *, deadline: float, timeout: float,
                 client_id: str | None, tls: TlsFiles | None, username: str | None,
                 password: str | None) -> None:
        self.where = f"{host}:{port}"
        self.deadline, self.timeout = deadline, timeout  # time.monotonic(); --timeout
        self.host, self.port, self.tls = host, port, tls is not None
        self.inbox: queue.Queue[Message | None] = queue.Queue()  # None: connection lost
        self.acks: queue.Queue[tuple[str, int, Any]] = queue.Queue()  # (kind, mid, codes)
        client_id = client_id or f"edge-export-push-{uuid.uuid4().hex[:12]}"  # never kicks
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_socket_open = no_delay
        if tls is not None:
            tls.apply(self.client)
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._seen: dict[tuple[str, int], Any] = {}

    # paho's network thread: hand everything to the caller's thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.acks.put(("connack", 0, reason_code))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.acks.put(("suback", mid, reason_codes))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acks.put(("puback", mid, reason_code))

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(Message(msg.topic, msg.payload, bool(msg.retain)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.inbox.put(None)
        self.acks.put(("disconnect", 0, reason_code))

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect_timeout = max(1.0, self.deadline - time.monotonic())
        try:
            self.client.connect(self.host, self.port, KEEPALIVE_S, clean_start=True,
                                properties=props)
        except ssl.SSLError as exc:
            raise EdgeError(f"--broker {self.where}: TLS handshake failed ({exc}); check "
                            "--tls-ca (and --tls-cert/--tls-key if it asks for a client "
                            "certificate)") from None
        except OSError as exc:
            hint = "; is it a TLS listener?" if self.tls else ""
            raise EdgeError(f"--broker {self.where}: cannot connect "
                            f"({exc.strerror or exc}){hint}") from None
        self.client.loop_start()
        code = self._ack("connack", 0, "the connection")
        if code.is_failure:
            raise EdgeError(f"--broker {self.where} refused the connection: {code} (check "
                            "--username-env/--password-env and the broker's ACL)")

    def subscribe(self, topics: list[str]) -> None:
        _, mid = self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        codes = self._ack("suback", mid, "the subscriptions")
        for topic, code in zip(topics, codes, strict=False):
            if code.is_failure:
                raise EdgeError(f"--broker {self.where} refused the subscription to {topic}: "
                                f"{code} (the broker's ACL must let this user read it)")

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise EdgeError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        what = f"the publish of {len(payload)} bytes to {topic}"
        # Brokers drop a client whose message is over their size limit (Mosquitto's
        # message_size_limit) rather than answer it: say so, it is the likely cause.
        code = self._ack("puback", info.mid, what,
                         hint="; is the message over the broker's size limit?")
        if code.is_failure:
            raise EdgeError(f"--broker {self.where} refused {what}: {code} (its ACL must "
                            "let this user write the topic; its size limit must allow this)")

    def _ack(self, kind: str, mid: int, what: str, hint: str = "") -> Any:
        """Wait for one CONNACK / SUBACK / PUBACK; others that arrive first are kept."""
        while (kind, mid) not in self._seen:
            try:
                got_kind, got_mid, codes = self.acks.get(
                    timeout=max(0.0, self.deadline - time.monotonic()))
            except queue.Empty:
                raise EdgeError(f"--broker {self.where} did not acknowledge {what} within "
                                f"--timeout {self.timeout:g} s") from None
            if got_kind == "disconnect":  # a refused CONNECT gets its CONNACK before this
                raise EdgeError(f"--broker {self.where} closed the connection during {what} "
                                f"({codes}){hint}")
            self._seen[(got_kind, got_mid)] = codes
        return self._seen.pop((kind, mid))

    def close(self) -> None:
        self.client.on_disconnect = None  # our own DISCONNECT is not a lost connection
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------------------------
# The device: its topics, its retained status, waiting for its answer
# --------------------------------------------------------------------------------------------

class DeviceLink:
    """Topics of one gateway, its retained status, and waiting for its answer."""

    def __init__(self, link: BrokerSession, topics: TopicLayout, progress: Progress) -> None:
        self.link, self.topics, self.progress = link, topics, progress
        self.device = topics.device
        self.status: dict | None = None  # the newest status document

    def subscriptions(self) -> list[str]:
        # The status first: its retained copy then arrives before the retained state, so a
        # result taken from the state can say whether the device is up.
        return [self.topics.status, self.topics.state, self.topics.errors]

    def wait(self, what: str, decide: Callable[[Message], T | None]) -> T:
        """Feed each message to `decide` until it returns an answer (or raises)."""
        while True:
            left = self.link.deadline - time.monotonic()
            if left <= 0:
                raise self._timeout(what)
            try:
                msg = self.link.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                raise EdgeError(f"lost the connection to --broker {self.link.where} while "
                                f"waiting for {what}")
            if msg.topic == self.topics.status:
                self._note_status(msg)
                continue
            answer = decide(msg)
            if answer is not None:
                return answer

    def _note_status(self, msg: Message) -> None:
        doc = msg.doc()
        if doc is not None and doc != self.status:
            self.status = doc
            reason = f" ({doc['reason']})" if doc.get("reason") else ""
            self.progress(f"device {self.device} is {doc.get('state')}{reason}")

    def _timeout(self, what: str) -> EdgeError:
        """Say what the retained status shows: a wrong --device, a gateway that is down, or
        one that is up but slow call for different fixes."""
        where, status = self.topics.status, self.status
        if status is None:
            seen = (f"nothing is retained on {where}: no gateway with device.id "
                    f"{self.device!r} and topics.prefix {self.topics.prefix!r} ever connected to "
                    "this broker (check --device and --prefix)")
        elif status.get("state") == "online":
            seen = (f"{where} says online: the gateway is up but did not answer (see its "
                    "log; raise --timeout for a large adapter on a slow device)")
        else:
            reason = f", {status['reason']}" if status.get("reason") else ""
            seen = (f"{where} says {status.get('state')}{reason}: start the gateway; a "
                    "gateway with a persistent session still gets the message when it "
                    "reconnects")
        return EdgeError(f"no answer from device {self.device!r} to {what} within --timeout "
                         f"{self.link.timeout:g} s; {seen}")


def device_link(*, device: str, prefix: str, broker: str, timeout: float, tls: bool,
                tls_ca: str | Path | None, tls_cert: str | Path | None,
                tls_key: str | Path | None, username_env: str | None,
                password_env: str | None, client_id: str | None,
                progress: Progress) -> DeviceLink:
    """A not yet connected client for one gateway's topics (push and revoke share it)."""
    use_tls = tls or any(p is not None for p in (tls_ca, tls_cert, tls_key))
    host, port = parse_broker(broker, use_tls)
    link = BrokerSession(host, port, deadline=time.monotonic() + timeout, timeout=timeout,
                         client_id=client_id,
                         tls=TlsFiles(tls_ca, tls_cert, tls_key) if use_tls else None,
                         username=from_env("--username-env", username_env),
                         password=from_env("--password-env", password_env))
    return DeviceLink(link, TopicLayout(prefix, device), progress)


