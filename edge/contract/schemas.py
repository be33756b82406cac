"""JSON Schemas (draft 2020-12) of every JSON payload the gateway reads or writes, generated
from the TypedDicts in edge/contract/payloads.py with pydantic's TypeAdapter, and the
committed copies in docs/schemas/ (tests/test_schemas.py fails when they differ).

    python -m edge.contract.schemas --write docs/schemas   # regenerate the files
    python -m edge.contract.schemas --check docs/schemas   # exit 1 when they differ

    schema("result")            -> the schema as a dict
    TopicLayout(prefix).payload_kind(topic) -> the schema name of a topic's payload
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from . import payloads as p
from .examples import EXAMPLES

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:edge-adapters:mqtt:"  # $id of a schema: ID_BASE + its name


@dataclass(frozen=True)
class Spec:
    """One schema: the payload type, where it travels, and what it is."""

    type: Any
    title: str
    topic: str  # with the default prefix and device, as docs/MQTT.md writes them
    description: str


SPECS: dict[str, Spec] = {
    "sensor-window": Spec(p.SensorWindow, "Sensor window", "factory/<line>/sensors/<sensor>",
                          "A JSON sensor window the gateway classifies (in)."),
    "result": Spec(p.Result, "Result", "factory/<line>/inference",
                   "The gateway's answer to one sensor window (out)."),
    "error": Spec(p.ErrorReport, "Error report", "factory/<device>/errors",
                  "Why a message or command could not be used (out)."),
    "status": Spec(p.Status, "Status", "factory/<device>/status",
                   "The gateway's retained online/offline state, also its last will (out)."),
    "stats": Spec(p.Stats, "Stats", "factory/<device>/stats",
                  "Counters every topics.stats_interval_s seconds (out, QoS 0)."),
    "drift-state": Spec(p.DriftState, "Drift state", "factory/<device>/drift/<line>",
                        "A line's retained drift state (out)."),
    "event": Spec(p.Event, "Event", "factory/<device>/events",
                  "A change a person may act on that is not an error (out)."),
    "adapter-state": Spec(p.AdapterState, "Adapter state", "factory/<device>/adapters/state",
                          "Lines, held and revoked adapters and the last command (out, "
                          "retained)."),
    "command-activate": Spec(p.ActivateCommand, "Activate command",
                             "factory/<device>/adapters/activate",
                             "Switch a line to an adapter version or the base model (in)."),
    "command-rollback": Spec(p.RollbackCommand, "Rollback command",
                             "factory/<device>/adapters/rollback",
                             "Undo a line's last change (in)."),
    "command-revoke": Spec(p.RevokeCommand, "Revoke command", "factory/<device>/adapters/revoke",
                           "Withdraw an adapter version for good, signed (in)."),
    "envelope-header": Spec(p.EnvelopeHeader, "Adapter envelope header",
                            "factory/<device>/adapters/put/<name>",
                            "The JSON header inside an adapter envelope (in); the payload "
                            "itself is binary: magic, length, this header, the adapter."),
}


def schema(name: str) -> dict:
    """The JSON Schema of payload `name` (a key of SPECS), with $id, title and examples."""
    spec = SPECS[name]
    generated = TypeAdapter(spec.type).json_schema()
    text = f"{spec.description} Topic: {spec.topic} (docs/MQTT.md). " \
           f"{generated.pop('description', '')}"
    doc = {"$schema": DRAFT, "$id": f"{ID_BASE}{name}", "title": spec.title,
           "description": " ".join(text.split())}  # docstrings' line breaks out
    generated.pop("title", None)
    doc.update(generated)
    doc["examples"] = EXAMPLES[name]
    return doc


def rendered(name: str) -> str:
    """The file text of schema `name`: stable key order, two-space indent, final newline."""
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def file_name(name: str) -> str:
    return f"{name}.schema.json"


def differences(directory: Path) -> list[str]:
    """The schema files in `directory` that are missing, stale or not generated."""
    directory = Path(directory)
    out = [file_name(n) for n in SPECS if not (directory / file_name(n)).is_file()
           or (directory / file_name(n)).read_text() != rendered(n)]
    expected = {file_name(n) for n in SPECS}
    out += sorted(f.name for f in directory.glob("*.schema.json") if f.name not in expected)
    return out


def write(directory: Path) -> list[Path]:
    """Write every schema into `directory`; the ones no payload has any more are removed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = {file_name(n) for n in SPECS}
    for stale in directory.glob("*.schema.json"):
        if stale.name not in expected:
            stale.unlink()
    paths = []
    for name in SPECS:
        path = directory / file_name(name)
        path.write_text(rendered(name))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.contract.schemas",
                                     description="Generate or check docs/schemas/.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", type=Path, help="write the schema files")
    group.add_argument("--check", metavar="DIR", type=Path,
                       help="exit 1 when the files differ from what the code generates")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write(args.write):
            print(path)
        return 0
    stale = differences(args.check)
    if stale:
        print(f"{args.check}: out of date: {', '.join(stale)}; regenerate with "
              f"python -m edge.contract.schemas --write {args.check}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
