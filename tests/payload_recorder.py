"""Every message a test's broker carries on the contract's topics, validated at the end of
the test against docs/schemas/ (the committed files, which tests/test_schemas.py keeps equal
to what the code generates). Torch-free: the gateway run uses it too.

The `mosquitto` fixture (tests/conftest.py) starts one per test:

    recorder = PayloadRecorder(port, inputs=False)   # subscribed before the test starts
    ...                                              # the test
    problems = recorder.check()                      # after the services stopped

Only what the GATEWAY publishes is checked by default (results, errors, status, stats,
drift states, events, adapter state): tests publish malformed windows and commands on
purpose. A test marked `@pytest.mark.valid_inputs` says its sensor windows and adapter
commands are good ones: those are checked too. Payloads that are not JSON by their own
rule are skipped: binary windows (their content type says so), Sparkplug B (spBv1.0/...,
protobuf; outside the contract's prefix, so never subscribed), an empty payload (clearing a
retained message).
"""

from __future__ import annotations

import json
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.codec import BINARY_TYPES
from edge.contract import DEFAULT_PREFIX, TopicLayout

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
SYNC_WAIT_S = 10.0
MAX_SHOWN = 300  # characters of a bad payload in the failure message


@dataclass(frozen=True)
class Captured:
    topic: str
    payload: bytes
    content_type: str | None


def load_validators(directory: Path = SCHEMAS) -> dict[str, jsonschema.Draft202012Validator]:
    """{schema name: validator} from the committed *.schema.json files."""
    out = {}
    for path in sorted(directory.glob("*.schema.json")):
        doc = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(doc)
        out[path.name.removesuffix(".schema.json")] = jsonschema.Draft202012Validator(doc)
    return out


class PayloadRecorder:
    """An MQTT v5 client subscribed to the contract's topics of `prefix`: the gateway's
    outputs, and its inputs when `inputs` is true. Resubscribes after a broker restart."""

    def __init__(self, port: int, *, inputs: bool = False, prefix: str = DEFAULT_PREFIX,
                 host: str = "127.0.0.1") -> None:
        self.layout = TopicLayout(prefix)
        self.filters = [f for f, _name, way in self.layout.payloads() if inputs or way == "out"]
        self.messages: list[Captured] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._sync_topic = f"{prefix}/_recorder/{uuid.uuid4().hex}"  # no contract topic
        self._synced = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"payload-recorder-{uuid.uuid4().hex[:8]}")
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(0.1, 1.0)
        self.client = client
        client.connect(host, port)
        client.loop_start()
        if not self._subscribed.wait(SYNC_WAIT_S):
            raise RuntimeError(f"payload recorder: not subscribed within {SYNC_WAIT_S} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        topics = [*self.filters, self._sync_topic]
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._sync_topic:
            self._synced.set()
            return
        content_type = getattr(msg.properties, "ContentType", None) if msg.properties else None
        with self._lock:
            self.messages.append(Captured(msg.topic, bytes(msg.payload), content_type))

    def sync(self) -> bool:
        """Wait until the broker has passed on what it took before now: a marker published
        now comes back after them. False when the broker is gone."""
        if not self.client.is_connected():
            return False
        self._synced.clear()
        self.client.publish(self._sync_topic, b"sync", qos=1)
        return self._synced.wait(SYNC_WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def check(self, validators: dict[str, jsonschema.Draft202012Validator]) -> list[str]:
        """One line per captured message that breaks its topic's schema."""
        self.sync()
        with self._lock:
            messages = list(self.messages)
        return [problem for m in messages if (problem := self._problem(m, validators))]

    def _problem(self, m: Captured, validators: dict) -> str | None:
        kind = self.layout.payload_kind(m.topic)
        if kind is None or not m.payload:
            return None
        if kind == "sensor-window" and _media_type(m.content_type) in BINARY_TYPES:
            return None  # raw float32: not JSON
        try:
            doc = _envelope_header(m.payload) if kind == "envelope-header" else json.loads(
                m.payload)
        except (ValueError, struct.error) as exc:
            return f"{m.topic}: not JSON ({exc}): {_shown(m.payload)}"
        error = jsonschema.exceptions.best_match(validators[kind].iter_errors(doc))
        if error is None:
            return None
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        return (f"{m.topic}: breaks {kind}.schema.json at {where}: {error.message}; "
                f"payload {_shown(m.payload)}")


def _envelope_header(payload: bytes) -> dict:
    """The JSON header of an adapter envelope: magic (8), length (4, big-endian), header."""
    (size,) = struct.unpack(">I", payload[8:12])
    return json.loads(payload[12:12 + size])


def _media_type(content_type: str | None) -> str:
    return (content_type or "application/json").split(";", 1)[0].strip().lower()


def _shown(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"
