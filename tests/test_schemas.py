"""The JSON Schemas of docs/schemas/: generated from edge/contract/payloads.py (the committed
files must be what the code generates), valid draft 2020-12 with valid examples, chosen by
topic, and the payload recorder of the `mosquitto` fixture really failing on a bad payload.
Every runtime test that uses the `mosquitto` fixture validates what the gateway published
(tests/payload_recorder.py)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from payload_recorder import SCHEMAS, PayloadRecorder
from test_runtime import Publisher

from edge.codec import encode_error, encode_result
from edge.contract import TopicLayout
from edge.contract.schemas import SPECS, differences, main, rendered, schema
from edge.mqtt import publish_properties
from edge.status import status_payload
from export.demo.local_broker import BrokerMissing, start_broker


def test_committed_schemas_are_what_the_code_generates():
    assert differences(SCHEMAS) == [], (
        "docs/schemas/ is out of date: python -m edge.contract.schemas --write docs/schemas")


def test_check_names_a_stale_file_and_write_fixes_it(tmp_path, capsys):
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "result.schema.json").write_text("{}\n")
    (tmp_path / "gone.schema.json").write_text("{}\n")
    assert main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "result.schema.json" in err and "gone.schema.json" in err and "--write" in err
    assert main(["--write", str(tmp_path)]) == 0
    assert differences(tmp_path) == []


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_schema_is_draft_2020_12_with_valid_examples(name):
    doc = json.loads(rendered(name))
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith(name) and doc["title"] and doc["description"]
    assert doc["examples"], f"{name}: no example"
    validator = jsonschema.Draft202012Validator(doc)
    for example in doc["examples"]:
        assert list(validator.iter_errors(example)) == []


LAYOUT = TopicLayout("factory")


@pytest.mark.parametrize("topic, kind", [
    ("factory/press-3/sensors/imu-1", "sensor-window"),
    ("factory/press-3/inference", "result"),
    ("factory/gw-1/errors", "error"),
    ("factory/gw-1/status", "status"),
    ("factory/gw-1/stats", "stats"),
    ("factory/gw-1/drift/press-3", "drift-state"),
    ("factory/gw-1/events", "event"),
    ("factory/gw-1/adapters/state", "adapter-state"),
    ("factory/gw-1/adapters/activate", "command-activate"),
    ("factory/gw-1/adapters/rollback", "command-rollback"),
    ("factory/gw-1/adapters/revoke", "command-revoke"),
    ("factory/gw-1/adapters/put/line7", "envelope-header"),
    ("spBv1.0/factory/DDATA/gw-1/press-3", None),  # Sparkplug B: protobuf, not this contract
    ("factory/gw-1/status/extra", None),
    ("other/press-3/inference", None),
])
def test_the_schema_is_chosen_by_topic(topic, kind):
    assert LAYOUT.payload_kind(topic) == kind
    assert kind is None or kind in SPECS


def _valid(name: str, payload: bytes) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema(name))
    return [e.message for e in validator.iter_errors(json.loads(payload))]


def test_builders_write_what_their_schemas_say():
    """The edge cases the runtime tests rarely reach: a non-finite score, no id, the will."""
    nan_scores = encode_result(id="\udc80", ts=None, line="l", adapter="base",
                               adapter_version=None, labels=["a", "b"],
                               scores=np.array([np.nan, np.nan]), latency_ms=0.0)
    assert _valid("result", nan_scores) == []
    assert _valid("error", encode_error(id=None, topic="t" * 999, reason="a\nb")) == []
    will = status_payload("offline", "gw-1", reason="connection lost", stamp=False)
    assert _valid("status", will) == []
    assert _valid("status", status_payload("online", "gw-1")) != []  # online lists details


def test_the_recorder_fails_on_a_payload_that_breaks_its_schema(tmp_path, payload_validators):
    """Its own broker (not the `mosquitto` fixture, whose recorder would fail this test):
    a bad result is reported with topic, field and payload; a good result, a binary window,
    a retained-clearing empty payload and a foreign topic are not."""
    try:
        broker = start_broker(tmp_path / "broker")
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    recorder = PayloadRecorder(broker.port, inputs=True)
    sender = Publisher(broker.port)
    try:
        good = encode_result(id="w1", ts=1.5, line="press-3", adapter="base",
                             adapter_version=None, labels=["ok", "worn"],
                             scores=np.array([0.25, 0.75]), latency_ms=2.0)
        bad = json.dumps({**json.loads(good), "latency_ms": "fast"}).encode()
        window = np.zeros((6, 100), "<f4").tobytes()
        props = publish_properties("application/octet-stream", {"id": "b1"})
        sender.raw("factory/press-3/inference", good)
        sender.raw("factory/press-3/inference", bad)
        sender.raw("factory/press-3/sensors/imu", window, props)
        sender.raw("factory/gw-1/status", b"")
        sender.raw("spBv1.0/factory/NBIRTH/gw-1", b"\x08\x01")
        sender.flush()
        problems = recorder.check(payload_validators)  # after a sync: all of them are in
    finally:
        sender.close()
        recorder.close()
        broker.stop()
    assert len(problems) == 1, problems
    assert problems[0].startswith("factory/press-3/inference: breaks result.schema.json "
                                  "at latency_ms: 'fast' is not of type 'number'")
    assert '"latency_ms": "fast"' in problems[0]


def test_mqtt_doc_links_every_schema():
    text = (SCHEMAS.parent / "MQTT.md").read_text(encoding="utf-8")
    missing = [name for name in SPECS if f"(schemas/{name}.schema.json)" not in text]
    assert missing == [], f"docs/MQTT.md does not link {missing}"
