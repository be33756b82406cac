"""`edge-export revoke`: withdraw an adapter version from a gateway with a signed command and
wait for its answer.

    result = revoke(device="gw-1", name="press-3", version=8, key="signing.key",
                    reason="saturates on lot 42", broker="broker.plant:8883", tls_ca="ca.pem")
    result.lines        # the lines that moved off it, and where they run now

The gateway checks the signature against its trusted keys (like an adapter's), records the
revocation in its state (a replay of that version stays refused), deletes the file, and
moves every line on it to the newest remaining version, or the base model.

    <prefix>/<device>/adapters/revoke   out  {"name", "version", "reason", "id", "key_id",
                                              "signature"}
    <prefix>/<device>/adapters/state    in   retained: `revoked`, and `last` naming our id
    <prefix>/<device>/errors            in   a refusal naming our id
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.contract import DEFAULT_PREFIX, name_problem
from edge.contract.payloads import RevokeCommand
from edge.envelope import REVOKE_CONTEXT, canonical, key_id
from edge.errors import AdapterRejected, ConfigError
from export.fleet.link import DeviceLink, Message, Progress, check_gateway, device_link
from export.signing import load_private_key


@dataclass(frozen=True)
class RevokeResult:
    device: str
    name: str
    version: int
    was_held: bool
    lines: dict  # line -> {"adapter", "version"} it runs now
    elapsed_s: float

    def describe(self) -> str:
        held = "" if self.was_held else " (it did not hold it: refused from now on)"
        moved = ", ".join(f"{line} -> {r.get('adapter')} v{r.get('version')}"
                          for line, r in self.lines.items()) or "no line was on it"
        return (f"{self.name} v{self.version} revoked on {self.device}{held} in "
                f"{self.elapsed_s * 1000:.0f} ms; {moved}")


def signed_revoke(*, name: str, version: int, key: str | Path, reason: str = "",
                  request: str | None = None) -> dict:
    """The revoke command, signed with `key` (Ed25519, like adapter envelopes)."""
    problem = name_problem(name, "adapter")
    if problem:
        raise ConfigError(f"--name: {problem}")
    if not 1 <= version <= 2**31 - 1:
        raise ConfigError(f"--version {version}: must be from 1 to {2**31 - 1}")
    private = load_private_key(key)
    doc: RevokeCommand = {"name": name, "version": version, "reason": reason,
           "id": request or f"revoke-{uuid.uuid4().hex[:12]}",
           "key_id": key_id(private.public_key())}
    doc["signature"] = base64.b64encode(private.sign(canonical(doc, REVOKE_CONTEXT))).decode()
    return doc


def revoke(*, device: str, name: str, version: int, key: str | Path, reason: str = "",
           broker: str = "127.0.0.1", prefix: str = DEFAULT_PREFIX, timeout: float = 30.0,
           tls: bool = False, tls_ca: str | Path | None = None,
           tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
           username_env: str | None = None, password_env: str | None = None,
           client_id: str | None = None, progress: Progress | None = None) -> RevokeResult:
    """Publish a signed revoke of `name` v`version` to `device` and wait until its adapter
    state confirms it; a refusal raises AdapterRejected with the gateway's reason."""
    start, say = time.monotonic(), progress or (lambda _: None)
    check_gateway(device, prefix, timeout)
    command = signed_revoke(name=name, version=version, key=key, reason=reason)
    dev = device_link(device=device, prefix=prefix, broker=broker, timeout=timeout, tls=tls,
                      tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                      username_env=username_env, password_env=password_env,
                      client_id=client_id, progress=say)
    try:
        dev.link.connect()
        dev.link.subscribe(dev.subscriptions())
        dev.link.publish(dev.topics.revoke, json.dumps(command).encode())
        say(f"published the revoke of {name} v{version}")
        last = dev.wait(f"the revoke of {name} v{version}",
                        lambda msg: _answer(dev, command, msg))
    finally:
        dev.link.close()
    return RevokeResult(device=device, name=name, version=version,
                        was_held=bool(last.get("was_held")),
                        lines=last.get("lines") if isinstance(last.get("lines"), dict) else {},
                        elapsed_s=time.monotonic() - start)


def _answer(dev: DeviceLink, command: dict, msg: Message) -> dict | None:
    """The state's `last` once it names our request; a refusal naming it raises."""
    doc = msg.doc()
    if doc is None:
        return None
    if msg.topic == dev.topics.errors and doc.get("id") == command["id"]:
        raise AdapterRejected(f"device {dev.device} refused to revoke {command['name']} "
                              f"v{command['version']}: {doc.get('reason')}")
    last = doc.get("last") if msg.topic == dev.topics.state else None
    if isinstance(last, dict) and last.get("action") == "revoke" \
            and last.get("id") == command["id"] and "lines" in last:
        return last
    return None
