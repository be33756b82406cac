"""`edge-export push`: publish an adapter envelope to one gateway over MQTT and wait for its
answer: the adapter state listing it (success), or a refusal on the errors topic.

    result = push(bundle="bundle/", name="line7", key="signing.key", device="gw-1",
                  broker="broker.plant:8883", tls_ca="ca.pem", activate="line7")
    result.version, result.already_held, result.activated

The gateway's topics (docs/MQTT.md, "Adapter control", built by edge/contract/topics.py);
`push` uses these five, through the device link it shares with `revoke` (link.py):

    <prefix>/<device>/adapters/put/<name>   out  the envelope, QoS 1
    <prefix>/<device>/adapters/activate     out  {"line", "name", "version", "id"}
    <prefix>/<device>/adapters/state        in   retained: lines and held adapters
    <prefix>/<device>/errors                in   refusals: {"id", "topic", "reason", "ts"}
    <prefix>/<device>/status                in   retained online/offline: explains a timeout
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.contract import DEFAULT_PREFIX, name_problem
from edge.contract.payloads import ActivateCommand
from edge.envelope import unpack
from edge.errors import AdapterError, AdapterRejected, ConfigError, EdgeError
from export.fleet.link import DeviceLink, Message, Progress, check_gateway, device_link
from export.signing import envelope_bytes


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


# --------------------------------------------------------------------------------------------
# Options: the envelope and the line (the gateway's rules, edge/contract/names.py, checked
# here too: a typo becomes an error naming the flag instead of a refusal from the device)
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


def check_activate(line: str | None) -> None:
    """`--activate LINE` follows the gateway's line name rule (None: no activate)."""
    problem = None if line is None else name_problem(line, "line")
    if problem:
        raise ConfigError(f"--activate: {problem}")


# --------------------------------------------------------------------------------------------
# The device's answers
# --------------------------------------------------------------------------------------------

def _put_answer(dev: DeviceLink, topic: str, header: dict, msg: Message) -> bool | None:
    """True: already held before; False: accepted now; None: not about this put yet."""
    name, version, sha = header["name"], header["version"], header["sha256"]
    doc = msg.doc()
    if doc is None:
        return None
    if msg.topic == dev.topics.errors:
        # A refused put is named "<name>.v<version>" or the topic's <name> (what the
        # gateway sends today), or null; another version's refusal is not ours.
        if doc.get("topic") == topic and doc.get("id") in (f"{name}.v{version}", name, None):
            raise AdapterRejected(f"device {dev.device} refused {name} v{version}: "
                                  f"{doc.get('reason')}")
        return None
    listed = doc.get("held") if isinstance(doc.get("held"), list) else []
    held = any(isinstance(h, dict) and (h.get("name"), h.get("version"), h.get("sha256"))
               == (name, version, sha) for h in listed)
    if msg.topic != dev.topics.state or not held:
        return None
    last = doc.get("last") if isinstance(doc.get("last"), dict) else {}
    repeat = (last.get("action"), last.get("name"), last.get("version"), last.get("result")) \
        == ("put", name, version, "already held")
    # A retained state is what the device held before this put reached it.
    return msg.retain or repeat


def _activate_answer(dev: DeviceLink, request: str, line: str, msg: Message) -> dict | None:
    """The line's new state once the gateway confirms our activate (its `last.id`)."""
    doc = msg.doc()
    if doc is None:
        return None
    if msg.topic == dev.topics.errors and doc.get("id") == request:
        raise AdapterRejected(f"device {dev.device} refused to activate on line {line}: "
                              f"{doc.get('reason')}")
    last = doc.get("last") if msg.topic == dev.topics.state else None
    if isinstance(last, dict) and last.get("action") == "activate" and last.get("id") == request:
        lines = doc.get("lines") if isinstance(doc.get("lines"), dict) else {}
        return lines.get(line) if isinstance(lines.get(line), dict) else {}
    return None


def _activate(dev: DeviceLink, line: str, header: dict) -> None:
    name, version = header["name"], header["version"]
    request = f"push-{uuid.uuid4().hex[:12]}"
    command: ActivateCommand = {"line": line, "name": name, "version": version, "id": request}
    dev.link.publish(dev.topics.activate, json.dumps(command).encode())
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
         prefix: str = DEFAULT_PREFIX, activate: str | None = None, timeout: float = 30.0,
         tls: bool = False, tls_ca: str | Path | None = None,
         tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
         username_env: str | None = None, password_env: str | None = None,
         client_id: str | None = None, progress: Progress | None = None) -> PushResult:
    """Publish an adapter to `device` and wait until its retained adapter state lists it
    (and, with `activate`, until that line runs it). A refusal raises AdapterRejected with
    the gateway's reason; no answer within `timeout` seconds raises an EdgeError that says
    what the device's retained status shows."""
    start, say = time.monotonic(), progress or (lambda _: None)
    check_gateway(device, prefix, timeout)
    check_activate(activate)
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
        link.subscribe(dev.subscriptions())  # before the put: no answer can be missed
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


def _put(dev: DeviceLink, data: bytes, header: dict) -> bool:
    name, version = header["name"], header["version"]
    topic = dev.topics.put(name)
    dev.link.publish(topic, data)
    dev.progress(f"published {name} v{version} ({len(data)} bytes) to {topic}")
    return dev.wait(f"the put of {name} v{version}",
                    lambda msg: _put_answer(dev, topic, header, msg))
