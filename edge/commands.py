"""Adapter commands as they arrive: the queued `Command`, and the strict parsing of the
activate / rollback / revoke JSON (docs/MQTT.md). Every field is checked against the wire
contract's rules (edge/contract/names.py); an unknown field is refused, so a typo is never
silently ignored."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from .adapter_checks import MAX_VERSION
from .contract import BASE, name_problem
from .errors import BadMessage

MAX_COMMAND_BYTES = 4096  # activate / rollback / revoke JSON
# The fields each command takes; any other is refused, so a typo never goes unnoticed.
FIELDS = {"activate": ("line", "name", "version", "id"), "rollback": ("line", "id"),
          "revoke": ("name", "version", "reason", "id", "key_id", "signature")}


@dataclass
class Command:
    kind: str  # "put", "activate", "rollback"
    payload: bytes
    topic: str  # MQTT topic, or "file:<name>" for a folder drop
    source: str  # "mqtt" or "folder:<name>"
    received: float  # time.monotonic()
    name: str | None = None  # put: the adapter name the topic gives
    done: Callable[[str | None], None] | None = None  # told the rejection reason, or None


def request_id(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload[:MAX_COMMAND_BYTES])
        value = doc.get("id") if isinstance(doc, dict) else None
        return str(value)[:128] if isinstance(value, (str, int)) else None
    except (ValueError, RecursionError):
        return None


def parse_command(payload: bytes, kind: str) -> dict:
    """The fields of an activate, rollback or revoke; BadMessage says what is wrong."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadMessage(f"{kind}: payload is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise BadMessage(f"{kind}: payload is not a JSON object")
    allowed = FIELDS.get(kind)
    if allowed is None:
        raise BadMessage(f"unknown adapter command {kind!r}")
    unknown = sorted(k for k in doc if k not in allowed)
    if unknown:
        raise BadMessage(f"{kind}: unknown field {unknown[0][:64]!r}; the fields are "
                         f"{', '.join(allowed)}")
    out = {"id": request_id(payload)}
    if kind == "revoke":
        return {**out, **_revoke_fields(doc)}
    problem = name_problem(doc.get("line"), "line")
    if problem:
        raise BadMessage(f"{kind}: 'line': {problem}")
    out["line"] = doc["line"]
    if kind == "rollback":
        return out
    name, version = doc.get("name"), doc.get("version")
    if name != BASE and name_problem(name, "adapter"):
        raise BadMessage(f"activate: 'name': {name_problem(name, 'adapter')}, or \"base\"")
    _check_version(kind, version, required=False)
    if name == BASE and version is not None:
        raise BadMessage("activate: the base model has no version")
    return {**out, "name": None if name == BASE else name, "version": version}


def _revoke_fields(doc: dict) -> dict:
    problem = name_problem(doc.get("name"), "adapter")
    if problem:
        raise BadMessage(f"revoke: 'name': {problem}")
    _check_version("revoke", doc.get("version"), required=True)
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise BadMessage("revoke: 'reason' must be a string")
    return {"name": doc["name"], "version": doc["version"], "reason": reason[:500],
            "signed": doc}


def _check_version(kind: str, version: object, *, required: bool) -> None:
    if version is None and not required:
        return
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        left_out = ", or left out for the newest held version" if not required else ""
        raise BadMessage(f"{kind}: 'version' must be an integer from 1 to {MAX_VERSION}"
                         f"{left_out}")
