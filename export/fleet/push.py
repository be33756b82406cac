"""`edge-export push`: publish an adapter envelope to one gateway over MQTT and wait for its
answer: the adapter state listing it (success), or a refusal on the errors topic.

    result = push(bundle="bundle/", name="line7", key="signing.key", device="gw-1",
                  broker="broker.plant:8883", tls_ca="ca.pem", activate="line7")
    result.version, result.already_held, result.activated

The gateway's topics (docs/MQTT.md, "Adapter control"); `push` uses these five:

    <prefix>/<device>/adapters/put/<name>   out  the envelope, QoS 1
    <prefix>/<device>/adapters/activate     out  {"line", "name", "version", "id"}
    <prefix>/<device>/adapters/state        in   retained: lines and held adapters
    <prefix>/<device>/errors                in   refusals: {"id", "topic", "reason", "ts"}
    <prefix>/<device>/status                in   retained online/offline: explains a timeout

Every received message is queued and judged on the caller's thread in arrival order, so the
first decisive message wins and nothing races.
"""

from __future__ import annotations

import json
import os
import queue
import re
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

from edge.contract import name_problem
from edge.envelope import unpack
from edge.errors import AdapterError, AdapterRejected, ConfigError, EdgeError
from export.signing import envelope_bytes

T = TypeVar("T")
Progress = Callable[[str], None]

# The gateway's name rule (edge/contract.py) is checked here too: a typo becomes an error
# naming the flag instead of a refusal from the device.
_LEVEL = re.compile(r"^[^/+#\s]+$")
_PREFIX = re.compile(r"^[^/+#\s]+(/[^/+#\s]+)*$")
KEEPALIVE_S = 30


@dataclass(frozen=True)
class PushResult:
    """What the gateway confirmed. `already_held`: it held these exact bytes before."""

    device: str
    name: str
    version: int
    sha256: str
    size: int
    signed: bool
    already_held: bool
    activated: str | None  # the line switched to this version, with --activate
    elapsed_s: float
    device_state: str | None = None  # its retained status: "online", "offline", None (none)

    def describe(self) -> str:
        """The CLI's one result line."""
        verb = "already held by" if self.already_held else "accepted by"
        text = (f"{self.name} v{self.version} {verb} {self.device} "
                f"(sha256 {self.sha256[:12]}, {self.size} bytes, "
                f"{'signed' if self.signed else 'unsigned'}) in {_duration(self.elapsed_s)}")
        if self.activated is not None:
            text += f"; line {self.activated} now runs {self.name} v{self.version}"
        if self.device_state != "online":  # the answer came from its retained adapter state
            text += f"; the device is {self.device_state or 'not reporting a status'}"
        return text


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


@dataclass(frozen=True)
class _Message:
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


# --------------------------------------------------------------------------------------------
# Options: the envelope, the broker address, credentials, TLS
# --------------------------------------------------------------------------------------------

def load_envelope(*, bundle: str | Path | None = None, name: str | None = None,
                  version: int | None = None, key: str | Path | None = None,
                  envelope: str | Path | None = None) -> tuple[bytes, dict]:
    """(envelope bytes, parsed header): read from `envelope`, or built from the bundle's
    adapter `name` (signed with `key` when given). `name`/`version` check an envelope file."""
    if envelope is not None:
        if bundle is not None or key is not None:
            raise ConfigError("--envelope is already built (and signed, or not): leave out "
                              "--bundle and --key")
        try:
            data = Path(envelope).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--envelope {envelope}: cannot read ({exc.strerror})") from None
    elif bundle is None or name is None:
        raise ConfigError("pass --envelope FILE (from `edge-export sign`), or --bundle DIR "
                          "with --name NAME (and --key to sign it)")
    else:
        data = envelope_bytes(bundle=bundle, name=name, version=version, key=key)
    try:
        header, _ = unpack(data, len(data))  # the gateway applies its own size limit
    except AdapterRejected as exc:
        raise AdapterError(f"--envelope {envelope}: {exc}") from None
    for flag, want, got in (("--name", name, header["name"]),
                            ("--version", version, header["version"])):
        if want is not None and want != got:
            raise ConfigError(f"{flag} {want}: the envelope holds {header['name']} "
                              f"v{header['version']}")
    problem = name_problem(header["name"], "adapter")
    if problem:
        raise AdapterError(f"the envelope's {problem}")
    return data, header


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


def _from_env(flag: str, name: str | None) -> str | None:
    """The secret in environment variable `name`: never on the command line, where other
    users can read it in the process list."""
    if name is None:
        return None
    if name not in os.environ:
        raise ConfigError(f"{flag} {name}: environment variable is not set")
    return os.environ[name]


def _check_names(device: str, prefix: str, activate: str | None, timeout: float) -> None:
    if not _LEVEL.fullmatch(device):
        raise ConfigError(f"--device {device!r}: one topic level, without '/', '+', '#'")
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"--prefix {prefix!r}: topic levels without '+', '#' or spaces")
    problem = None if activate is None else name_problem(activate, "line")
    if problem:
        raise ConfigError(f"--activate: {problem}")
    if not timeout > 0:
        raise ConfigError(f"--timeout {timeout}: must be > 0 seconds")


@dataclass(frozen=True)
class Tls:
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

class _Link:
    """One MQTT v5 client with a clean, expiring session (a push leaves nothing behind)."""

    def __init__(self, host: str, port: int, *, deadline: float, timeout: float,
                 client_id: str | None, tls: Tls | None, username: str | None,
                 password: str | None) -> None:
        self.where = f"{host}:{port}"
        self.deadline, self.timeout = deadline, timeout  # time.monotonic(); --timeout
        self.host, self.port, self.tls = host, port, tls is not None
        self.inbox: queue.Queue[_Message | None] = queue.Queue()  # None: connection lost
        self.acks: queue.Queue[tuple[str, int, Any]] = queue.Queue()  # (kind, mid, codes)
        client_id = client_id or f"edge-export-push-{uuid.uuid4().hex[:12]}"  # never kicks
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
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
        self.inbox.put(_Message(msg.topic, msg.payload, bool(msg.retain)))

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
# The device's answers
# --------------------------------------------------------------------------------------------

class _Device:
    """Topics of one gateway, its retained status, and waiting for its answer."""

    def __init__(self, link: _Link, device: str, prefix: str, progress: Progress) -> None:
        self.link, self.device, self.progress = link, device, progress
        base = f"{prefix}/{device}"
        self.state_topic, self.errors_topic = f"{base}/adapters/state", f"{base}/errors"
        self.status_topic = f"{base}/status"
        self.put_prefix, self.activate_topic = f"{base}/adapters/put/", f"{base}/adapters/activate"
        self.prefix = prefix
        self.status: dict | None = None  # the newest status document

    def topics(self) -> list[str]:
        # The status first: its retained copy then arrives before the retained state, so a
        # result taken from the state can say whether the device is up.
        return [self.status_topic, self.state_topic, self.errors_topic]

    def wait(self, what: str, decide: Callable[[_Message], T | None]) -> T:
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
            if msg.topic == self.status_topic:
                self._note_status(msg)
                continue
            answer = decide(msg)
            if answer is not None:
                return answer

    def _note_status(self, msg: _Message) -> None:
        doc = msg.doc()
        if doc is not None and doc != self.status:
            self.status = doc
            reason = f" ({doc['reason']})" if doc.get("reason") else ""
            self.progress(f"device {self.device} is {doc.get('state')}{reason}")

    def _timeout(self, what: str) -> EdgeError:
        """Say what the retained status shows: a wrong --device, a gateway that is down, or
        one that is up but slow call for different fixes."""
        where, status = self.status_topic, self.status
        if status is None:
            seen = (f"nothing is retained on {where}: no gateway with device.id "
                    f"{self.device!r} and topics.prefix {self.prefix!r} ever connected to "
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


def _put_answer(dev: _Device, topic: str, header: dict, msg: _Message) -> bool | None:
    """True: already held before; False: accepted now; None: not about this put yet."""
    name, version, sha = header["name"], header["version"], header["sha256"]
    doc = msg.doc()
    if doc is None:
        return None
    if msg.topic == dev.errors_topic:
        # A refused put is named "<name>.v<version>" or the topic's <name> (what the
        # gateway sends today), or null; another version's refusal is not ours.
        if doc.get("topic") == topic and doc.get("id") in (f"{name}.v{version}", name, None):
            raise AdapterRejected(f"device {dev.device} refused {name} v{version}: "
                                  f"{doc.get('reason')}")
        return None
    listed = doc.get("held") if isinstance(doc.get("held"), list) else []
    held = any(isinstance(h, dict) and (h.get("name"), h.get("version"), h.get("sha256"))
               == (name, version, sha) for h in listed)
    if msg.topic != dev.state_topic or not held:
        return None
    last = doc.get("last") if isinstance(doc.get("last"), dict) else {}
    repeat = (last.get("action"), last.get("name"), last.get("version"), last.get("result")) \
        == ("put", name, version, "already held")
    # A retained state is what the device held before this put reached it.
    return msg.retain or repeat


def _activate_answer(dev: _Device, request: str, line: str, msg: _Message) -> dict | None:
    """The line's new state once the gateway confirms our activate (its `last.id`)."""
    doc = msg.doc()
    if doc is None:
        return None
    if msg.topic == dev.errors_topic and doc.get("id") == request:
        raise AdapterRejected(f"device {dev.device} refused to activate on line {line}: "
                              f"{doc.get('reason')}")
    last = doc.get("last") if msg.topic == dev.state_topic else None
    if isinstance(last, dict) and last.get("action") == "activate" and last.get("id") == request:
        lines = doc.get("lines") if isinstance(doc.get("lines"), dict) else {}
        return lines.get(line) if isinstance(lines.get(line), dict) else {}
    return None


def _activate(dev: _Device, line: str, header: dict) -> None:
    name, version = header["name"], header["version"]
    request = f"push-{uuid.uuid4().hex[:12]}"
    command = {"line": line, "name": name, "version": version, "id": request}
    dev.link.publish(dev.activate_topic, json.dumps(command).encode())
    dev.progress(f"activating {name} v{version} on line {line}")
    shown = dev.wait(f"the activate of line {line}",
                     lambda msg: _activate_answer(dev, request, line, msg))
    if (shown.get("adapter"), shown.get("version")) != (name, version):
        raise EdgeError(f"device {dev.device} took the activate, but its state shows line "
                        f"{line} on {shown.get('adapter')} v{shown.get('version')}")


# --------------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------------

def push(*, device: str, bundle: str | Path | None = None, name: str | None = None,
         version: int | None = None, key: str | Path | None = None,
         envelope: str | Path | None = None, broker: str = "127.0.0.1",
         prefix: str = "factory", activate: str | None = None, timeout: float = 30.0,
         tls: bool = False, tls_ca: str | Path | None = None,
         tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
         username_env: str | None = None, password_env: str | None = None,
         client_id: str | None = None, progress: Progress | None = None) -> PushResult:
    """Publish an adapter to `device` and wait until its retained adapter state lists it
    (and, with `activate`, until that line runs it). A refusal raises AdapterRejected with
    the gateway's reason; no answer within `timeout` seconds raises an EdgeError that says
    what the device's retained status shows."""
    start, say = time.monotonic(), progress or (lambda _: None)
    _check_names(device, prefix, activate, timeout)
    data, header = load_envelope(bundle=bundle, name=name, version=version, key=key,
                                 envelope=envelope)
    signed = "signature" in header
    if not signed:
        say(f"warning: the envelope is unsigned{'' if envelope else ' (no --key)'}; a gateway "
            "with adapters.require_signed = true refuses it")
    dev = device_link(device=device, prefix=prefix, broker=broker, timeout=timeout, tls=tls,
                      tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                      username_env=username_env, password_env=password_env,
                      client_id=client_id, progress=say)
    link = dev.link
    try:
        link.connect()
        link.subscribe(dev.topics())  # before the put: no answer can be missed
        already = _put(dev, data, header)
        if activate is not None:
            _activate(dev, activate, header)
    finally:
        link.close()
    return PushResult(device=device, name=header["name"], version=header["version"],
                      sha256=header["sha256"], size=len(data), signed=signed,
                      already_held=already, activated=activate,
                      elapsed_s=time.monotonic() - start,
                      device_state=(dev.status or {}).get("state"))


def device_link(*, device: str, prefix: str, broker: str, timeout: float, tls: bool,
                tls_ca: str | Path | None, tls_cert: str | Path | None,
                tls_key: str | Path | None, username_env: str | None,
                password_env: str | None, client_id: str | None,
                progress: Progress) -> _Device:
    """A not yet connected client for one gateway's topics (push and revoke share it)."""
    use_tls = tls or any(p is not None for p in (tls_ca, tls_cert, tls_key))
    host, port = parse_broker(broker, use_tls)
    link = _Link(host, port, deadline=time.monotonic() + timeout, timeout=timeout,
                 client_id=client_id,
                 tls=Tls(tls_ca, tls_cert, tls_key) if use_tls else None,
                 username=_from_env("--username-env", username_env),
                 password=_from_env("--password-env", password_env))
    return _Device(link, device, prefix, progress)


def _put(dev: _Device, data: bytes, header: dict) -> bool:
    name, version = header["name"], header["version"]
    topic = dev.put_prefix + name
    dev.link.publish(topic, data)
    dev.progress(f"published {name} v{version} ({len(data)} bytes) to {topic}")
    return dev.wait(f"the put of {name} v{version}",
                    lambda msg: _put_answer(dev, topic, header, msg))
