"""edge/mqtt_wire.py: the lean receive path reads every PUBLISH exactly as stock paho does
(the same message, the same properties, the same failure for a malformed one), frames packets
that arrive split or many to one read, and its batched PUBACKs settle the broker's session."""

from __future__ import annotations

import queue
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.mqtt_wire import LEAN_PAHO, RECV_CHUNK, LeanClient

pytestmark = pytest.mark.skipif(not LEAN_PAHO, reason="paho-mqtt version not covered")

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00\ufeff"), max_size=12)
props_strategy = st.fixed_dictionaries({}, optional={
    "PayloadFormatIndicator": st.integers(0, 1),
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": text,
    "ResponseTopic": text,
    "CorrelationData": st.binary(max_size=16),
    "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
    "TopicAlias": st.integers(1, 65535),
    "UserProperty": st.lists(st.tuples(text, text), min_size=1, max_size=4),
})


def publish_packet(topic: bytes, qos: int, mid: int, props: dict, payload: bytes,
                   flags: int = 0) -> tuple[int, bytes]:
    """(first header byte, variable header + payload) of a PUBLISH, properties by paho."""
    packed = Properties(PacketTypes.PUBLISH)
    for name, value in props.items():
        setattr(packed, name, value)
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    return 0x30 | (qos << 1) | flags, body + bytes(packed.pack()) + payload


def handle(client_class: type, header: int, body: bytes):
    """What `_handle_publish` of a fresh client makes of one packet: the message its
    on_message saw, or the exception it raised."""
    client = client_class(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    seen = []
    client.on_message = lambda _c, _u, msg: seen.append(msg)
    client._in_packet.update(command=header, packet=bytes(body), remaining_length=len(body))
    try:
        client._handle_publish()
    except Exception as exc:  # what stock paho raises for it, lean must raise too
        return type(exc)
    if not seen:
        return None
    msg = seen[0]
    props = msg.properties
    values = {k: v for k, v in vars(props).items()
              if k not in ("packetType", "types", "names", "properties")}
    return (msg._topic, msg.mid, msg.qos, msg.retain, msg.dup, msg.payload, values,
            str(props), props.json(), bytes(props.pack()))


def assert_same(header: int, body: bytes) -> None:
    assert handle(LeanClient, header, body) == handle(mqtt.Client, header, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.binary(min_size=0, max_size=40), qos=st.integers(0, 1),
       mid=st.integers(1, 65535), props=props_strategy, payload=st.binary(max_size=300),
       flags=st.sampled_from([0, 1, 8, 9]))
def test_valid_publish_reads_as_stock_paho_reads_it(topic, qos, mid, props, payload, flags):
    assert_same(*publish_packet(topic, qos, mid, props, payload, flags))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(props=props_strategy, payload=st.binary(max_size=40), qos=st.integers(0, 1),
       data=st.data())
def test_damaged_publish_fails_or_reads_as_stock_paho(props, payload, qos, data):
    """Bytes flipped, cut or inserted: the lean reader gives what paho gives, message or
    exception alike (it hands what it does not recognise to paho's decoder)."""
    header, body = publish_packet(b"factory/l1/sensors/x", qos, 7, props, payload)
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, max(len(body) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        byte = data.draw(st.integers(0, 255))
        if action == "flip" and body:
            body[at] = byte
        elif action == "cut":
            del body[at:]
        else:
            body[at:at] = bytes([byte])
    assert_same(header, bytes(body))


@pytest.mark.parametrize("case", ["nul in text", "BOM in text", "bad utf-8", "repeated",
                                  "unknown id", "topic alias 0", "format 2"])
def test_what_mqtt_forbids_is_refused_as_paho_refuses_it(case):
    prop = {"nul in text": b"\x03\x00\x03a\x00b", "BOM in text": b"\x03\x00\x03\xef\xbb\xbf",
            "bad utf-8": b"\x03\x00\x02\xc3\x28", "repeated": b"\x01\x00\x01\x01",
            "unknown id": b"\x11\x00\x00\x00\x05", "topic alias 0": b"\x23\x00\x00",
            "format 2": b"\x01\x02"}[case]
    body = b"\x00\x01t" + b"\x00\x05" + bytes([len(prop)]) + prop + b"payload"
    stock = handle(mqtt.Client, 0x32, body)
    assert stock == handle(LeanClient, 0x32, body)


def puback_seen(client_class: type, body: bytes):
    """What on_publish hears of a PUBACK for our in-flight message 7, and the return code."""
    client = client_class(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    heard = []
    client.on_publish = lambda _c, _u, mid, rc, props: heard.append(
        (mid, rc.value, str(rc), rc.is_failure, props.json(), type(rc), type(props)))
    sent = mqtt.MQTTMessage(mid=7, topic=b"t")
    sent.qos = 1
    client._out_messages[7] = sent
    client._inflight_messages = 1
    client._in_packet.update(command=0x40, packet=body, remaining_length=len(body))
    try:
        rc = client._handle_pubackcomp("PUBACK")
    except Exception as exc:
        return type(exc)
    return rc, heard, sent.info.is_published(), client._inflight_messages


@pytest.mark.parametrize("body", [b"\x00\x07", b"\x00\x08", b"\x00\x07\x00",
                                  b"\x00\x07\x10", b"\x00\x07\x97\x00",
                                  b"\x00\x07\x80\x05\x1f\x00\x02no", b"\x00"])
def test_puback_reads_as_stock_paho_reads_it(body):
    """Success without properties (the lean path), another message's id, and reason codes
    or properties (paho's path): on_publish hears the same, the message settles alike."""
    assert puback_seen(LeanClient, body) == puback_seen(mqtt.Client, body)


def test_framing_of_split_and_oversized_lengths():
    frame = LeanClient._next_packet
    one = bytes([0x30, 0x03]) + b"abc"
    assert frame(bytearray(one), 0) == (2, 5)
    assert frame(bytearray(one[:4]), 0) is None  # the body is not all here
    assert frame(bytearray([0x30, 0x80]), 0) is None  # nor the length
    assert frame(bytearray([0x30, 0xFF, 0xFF, 0xFF, 0x7F]), 0) is None  # 4 bytes: allowed
    assert frame(bytearray([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), 0) == (-1, -1)


# -- against a real broker --------------------------------------------------------------------

def _session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    props.ReceiveMaximum = 65535  # all of a burst unacknowledged, as the service asks
    return props


class Receiver:
    """A LeanClient with manual acks and a persistent session, its messages in a queue."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.client = LeanClient(CallbackAPIVersion.VERSION2, client_id="lean-receiver",
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, clean_start=False, properties=_session_props())
        self.client.loop_start()

    def take(self, count: int, timeout: float = 20) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        return [self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
                for _ in range(count)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sent(i: int) -> tuple[bytes, Properties | None]:
    """Message i: sizes from empty to beyond one RECV_CHUNK read, properties on odd ones."""
    size = [0, 1, 200, 12_508, RECV_CHUNK + 1000][i % 5]
    payload = bytes([i % 251]) * size
    if i % 2 == 0:
        return payload, None
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/octet-stream"
    props.UserProperty = [("id", f"m{i}"), ("shape", "6,100"), ("id", "second")]
    return payload, props


def subscribed(port: int, topic_filter: str) -> Receiver:
    receiver = Receiver(port)
    receiver.client.subscribe(topic_filter, qos=1)
    assert receiver.subscribed.wait(10)
    return receiver


def send_qos1(port: int, messages: list[tuple[str, bytes, Properties | None]]) -> None:
    """Publish with a stock paho client; return once the broker has them all."""
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    for topic, payload, props in messages:
        info = sender.publish(topic, payload, qos=1, properties=props)
    info.wait_for_publish(20)
    sender.disconnect()
    sender.loop_stop()


def test_burst_through_a_broker_arrives_whole_in_order_and_acks_settle_the_session(mosquitto):
    receiver = subscribed(mosquitto.port, "lean/#")
    count = 60
    send_qos1(mosquitto.port, [(f"lean/{i}", *_sent(i)) for i in range(count)])

    received = receiver.take(count)
    for i, msg in enumerate(received):
        payload, props = _sent(i)
        assert (msg.topic, msg.payload, msg.qos) == (f"lean/{i}", payload, 1)
        if props is not None:
            assert msg.properties.ContentType == props.ContentType
            assert msg.properties.UserProperty == props.UserProperty
    receiver.client.ack_many([(m.mid, m.qos) for m in received[: count // 2]])
    receiver.client.ack_many([(m.mid, m.qos) for m in received[count // 2:]])
    time.sleep(0.5)  # the PUBACKs reach the broker before the DISCONNECT
    receiver.close()

    again = Receiver(mosquitto.port)  # the session resumes: nothing is owed any more
    try:
        with pytest.raises(queue.Empty):
            again.messages.get(timeout=1.5)
    finally:
        again.close()


def test_unacknowledged_messages_come_back_after_a_reconnect(mosquitto):
    receiver = subscribed(mosquitto.port, "lean/#")
    send_qos1(mosquitto.port, [(f"lean/{i}", f"m{i}".encode(), None) for i in range(10)])
    received = receiver.take(10)
    receiver.client.ack_many([(m.mid, m.qos) for m in received if int(m.topic[5:]) % 2])
    time.sleep(0.5)
    receiver.close()

    again = Receiver(mosquitto.port)
    try:
        back = sorted(m.payload for m in again.take(5))
        assert back == [b"m0", b"m2", b"m4", b"m6", b"m8"]
    finally:
        again.close()


def test_held_writes_and_the_in_flight_window_deliver_every_publish(mosquitto):
    """100 QoS 1 publishes queued in one held batch with an in-flight window of 20: one
    wake-up sends the first 20, and the network thread sends each next one when a PUBACK
    frees a slot, without waking itself; all 100 arrive, in order, and are acknowledged."""
    receiver = subscribed(mosquitto.port, "held/#")
    sender = LeanClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.max_inflight_messages_set(20)
    acked = []
    sender.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
    sender.connect("127.0.0.1", mosquitto.port)
    sender.loop_start()
    try:
        with sender.held_writes():
            infos = [sender.publish(f"held/{i}", f"m{i}".encode(), qos=1) for i in range(100)]
        for info in infos:
            info.wait_for_publish(20)
        assert sorted(acked) == sorted(info.mid for info in infos)
        received = receiver.take(100)
        assert [m.payload for m in received] == [f"m{i}".encode() for i in range(100)]
    finally:
        sender.disconnect()
        sender.loop_stop()
        receiver.close()


def test_qos0_burst_larger_than_one_send_then_disconnect_arrives_whole(mosquitto):
    """60 QoS 0 publishes of 12.5 kB (several SEND_CHUNKs, so partial sends), then an
    immediate disconnect(): every one is written before the DISCONNECT, on_publish hears
    each once, and each info says published."""
    receiver = subscribed(mosquitto.port, "burst/#")
    sender = LeanClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    heard = []
    sender.on_publish = lambda _c, _u, mid, rc, _p: heard.append((mid, rc.is_failure))
    connected = threading.Event()
    sender.on_connect = lambda *_a: connected.set()
    sender.connect("127.0.0.1", mosquitto.port)
    sender.loop_start()
    try:
        assert connected.wait(10)
        body = bytes(range(250)) * 50  # 12,500 bytes
        with sender.held_writes():
            infos = [sender.publish(f"burst/{i}", body + bytes([i]), qos=0) for i in range(60)]
        sender.disconnect()
        received = receiver.take(60)
        assert [m.payload[-1] for m in received] == list(range(60))
        assert all(m.payload[:-1] == body for m in received)
        assert sorted(heard) == sorted((info.mid, False) for info in infos)
        assert all(info.is_published() for info in infos)
    finally:
        sender.loop_stop()
        receiver.close()
