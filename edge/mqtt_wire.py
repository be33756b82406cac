"""A leaner data path for paho-mqtt's Client: the per-message Python of the gateway's busiest
thread. The MQTT protocol, sessions, reconnects, TLS and callbacks stay paho's.

What paho 2.x does per received QoS 1 PUBLISH, and what `LeanClient` does instead:
- reads the fixed header one byte per recv() call (3-5 system calls a message): here one
  recv() of up to RECV_CHUNK bytes per readable socket, split into packets in memory;
- builds a `Properties` object per message (tens of microseconds: its tables are rebuilt and
  searched by name for every property): here the PUBLISH properties are read by identifier
  into a copy of one prepared object, the same class with the same attributes; and a plain
  PUBACK of one of our publishes (success, no properties: 2 bytes) gets copies of a
  prepared success `ReasonCode` and empty `Properties`;
- queues each PUBACK as its own packet, with a wake-up write to its socket pair and a send()
  each: `ack_many` sends a batch's PUBACKs as one write;
- wakes its network thread through that socket pair for every packet queued, even from the
  network thread itself (the next message of its in-flight window, sent when a PUBACK
  comes in): here the network thread queues without waking itself (its next pass writes
  what is queued), and `with client.held_writes():` queues a batch of publishes from
  another thread with one wake-up at the end;
- writes each queued packet with its own send(): here what is queued goes out in one
  send() of up to SEND_CHUNK bytes (a DISCONNECT still goes alone, through paho).

Anything the lean reader does not recognise (an unknown or out-of-range property, text that
MQTT forbids, a length past the packet's end) goes to paho's own decoder, so a malformed
packet fails exactly as it does with stock paho. The private methods overridden here are the
same in paho-mqtt 2.0, 2.1 and 2.2; with another version the stock paths run (LEAN_PAHO).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import paho.mqtt as paho
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MalformedPacket, Properties
from paho.mqtt.reasoncodes import ReasonCode

# Versions whose _packet_read / _handle_publish / _packet_queue / _in_packet this module
# was checked against (tests/test_mqtt_wire.py compares it with stock paho on each run).
LEAN_VERSIONS = ("2.0.", "2.1.", "2.2.")
LEAN_PAHO = paho.__version__.startswith(LEAN_VERSIONS)
RECV_CHUNK = 256 * 1024  # bytes per recv(): a burst of windows in one system call
SEND_CHUNK = 256 * 1024  # bytes joined into one send()
_PUBLISH_CMD = 0x30
_DISCONNECT_CMD = 0xE0
_PUBACK = struct.Struct("!BBH")  # PUBACK fixed header, remaining length 2, packet id
_PUBACK_CMD = 0x40
_MAX_LENGTH_BYTES = 4  # an MQTT Remaining Length has at most 4 bytes

# PUBLISH properties (MQTT v5 3.3.2.3): identifier -> (attribute name, kind)
_PUBLISH_PROPERTIES = {
    1: ("PayloadFormatIndicator", "byte"),
    2: ("MessageExpiryInterval", "int32"),
    3: ("ContentType", "utf8"),
    8: ("ResponseTopic", "utf8"),
    9: ("CorrelationData", "bytes"),
    11: ("SubscriptionIdentifier", "varint"),
    35: ("TopicAlias", "int16"),
    38: ("UserProperty", "pair"),
}
_REPEATABLE = {11, 38}
_SIZES = {"byte": 1, "int16": 2, "int32": 4, "bytes": 2}  # fixed bytes (binary: its length)


# The attributes of an empty PUBLISH Properties, a PUBACK's, and a success ReasonCode: built
# once, copied per message (_copy) instead of rebuilding their name tables each time.
_PUBLISH_TEMPLATE = dict(Properties(PacketTypes.PUBLISH).__dict__)
_PUBACK_PROPS = dict(Properties(PacketTypes.PUBACK).__dict__)
_PUBACK_SUCCESS = dict(ReasonCode(PacketTypes.PUBACK).__dict__)


class _Unusual(Exception):
    """Not for the lean reader: let paho's own decoder read (or reject) the packet."""


def _fresh_in_packet() -> dict:
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}


def _read_in_packet(command: int, body: bytes) -> dict:
    """paho's _in_packet as its reader leaves it for the handlers: 2.0 and 2.1 check
    remaining_length, 2.2 the packet's length."""
    return {"command": command, "have_remaining": 1, "remaining_count": [],
            "remaining_mult": 1, "remaining_length": len(body), "packet": body,
            "to_process": 0, "pos": 0}


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of a Variable Byte Integer at `pos`."""
    value, shift = 0, 0
    for _ in range(_MAX_LENGTH_BYTES):
        if pos >= end:
            raise _Unusual
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _Unusual


def _text(data: bytes, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 string property; what MQTT forbids in one (1.5.4) goes to paho."""
    if pos + 2 > end:
        raise _Unusual
    stop = pos + 2 + (data[pos] << 8 | data[pos + 1])
    if stop > end:
        raise _Unusual
    try:
        text = data[pos + 2:stop].decode("utf-8")  # strict: no surrogates get through
    except UnicodeDecodeError:
        raise _Unusual from None
    if "\x00" in text or "\ufeff" in text:
        raise _Unusual
    return text, stop


def _value(kind: str, data: bytes, pos: int, end: int) -> tuple[object, int]:
    if kind == "utf8":
        return _text(data, pos, end)
    if kind == "pair":
        name, pos = _text(data, pos, end)
        value, pos = _text(data, pos, end)
        return (name, value), pos
    if kind == "varint":
        value, pos = _varint(data, pos, end)
        if not 1 <= value:
            raise _Unusual
        return value, pos
    size = _SIZES[kind]
    if pos + size > end:
        raise _Unusual
    number = int.from_bytes(data[pos:pos + size], "big")
    if kind == "bytes":
        if pos + 2 + number > end:
            raise _Unusual
        return data[pos + 2:pos + 2 + number], pos + 2 + number
    if (kind == "byte" and number > 1) or (kind == "int16" and number == 0):
        raise _Unusual  # paho rejects these values: let it say so
    return number, pos + size


def _copy(cls: type, template: dict) -> object:
    """A `cls` with `template`'s attributes, its __init__ skipped (paho's Properties and
    ReasonCode rebuild their name tables in it; the copies share them, read-only)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(template)
    return obj


def read_publish_properties(data: bytes, pos: int, template: dict) -> tuple[Properties, int]:
    """The PUBLISH properties at `pos` as a paho `Properties`, and where the payload starts.
    `template` is the __dict__ of an empty Properties(PUBLISH): its tables are shared, not
    rebuilt. Raises _Unusual for anything but a plain, valid property list."""
    length, pos = _varint(data, pos, len(data))
    end = pos + length
    if end > len(data):
        raise _Unusual
    props = _copy(Properties, template)
    values = props.__dict__
    while pos < end:
        ident = data[pos]
        spec = _PUBLISH_PROPERTIES.get(ident)
        if spec is None:
            raise _Unusual
        value, pos = _value(spec[1], data, pos + 1, end)
        name = spec[0]
        if ident in _REPEATABLE:
            values.setdefault(name, []).append(value)
        elif name in values:
            raise _Unusual  # paho refuses a repeated property
        else:
            values[name] = value
    return props, end


def decode_publish(header: int, packet: bytes, template: dict) -> MQTTMessage:
    """An MQTT v5 PUBLISH as paho's MQTTMessage (topic, packet id, properties, payload)."""
    if len(packet) < 2:
        raise _Unusual
    stop = 2 + (packet[0] << 8 | packet[1])
    qos = (header & 0x06) >> 1
    mid = 0
    if qos:
        if stop + 2 > len(packet):
            raise _Unusual
        mid = packet[stop] << 8 | packet[stop + 1]
    if stop > len(packet):
        raise _Unusual
    props, payload_at = read_publish_properties(packet, stop + (2 if qos else 0), template)
    message = MQTTMessage(mid=mid, topic=packet[2:stop])
    message.dup = bool(header & 0x08)
    message.qos = qos
    message.retain = bool(header & 0x01)
    message.properties = props
    message.payload = packet[payload_at:]
    return message


class LeanClient(mqtt.Client):
    """paho's Client, reading and acknowledging with fewer system calls and less Python."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lean_buffer = bytearray()
        self._lean_sock: object = None  # the socket the buffered bytes came from
        self._held = threading.local()  # .queued: packets this thread holds back (or None)

    # -- receiving ----------------------------------------------------------------------
    def _packet_read(self) -> MQTTErrorCode:
        sock = self._sock
        if not LEAN_PAHO or sock is None or self._in_packet["command"] != 0:
            return super()._packet_read()
        if sock is not self._lean_sock:  # a new connection: nothing carries over
            self._lean_buffer.clear()
            self._lean_sock = sock
        try:
            data = self._sock_recv(RECV_CHUNK)
        except BlockingIOError:
            data = None
        except OSError as err:  # TimeoutError included
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        else:
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._lean_buffer += data
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        rc = self._handle_buffered(sock)
        return rc if rc else MQTTErrorCode.MQTT_ERR_AGAIN  # AGAIN: wait for the socket

    def _handle_buffered(self, sock: object) -> MQTTErrorCode:
        """Hand every complete packet in the buffer to paho's packet handler; a partial one
        stays for the next read."""
        buf, pos, rc = self._lean_buffer, 0, MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while True:
                framed = self._next_packet(buf, pos)
                if framed is None:
                    break
                if framed[0] < 0:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
                start, end = framed
                self._in_packet = _read_in_packet(buf[pos], bytes(buf[start:end]))
                pos = end
                try:
                    rc = self._packet_handle()
                except MalformedPacket as exc:
                    self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                if rc or self._sock is not sock:  # an error, or the handler closed it
                    buf.clear()
                    return rc
        finally:
            del buf[:pos]
            self._in_packet = _fresh_in_packet()
        return rc

    @staticmethod
    def _next_packet(buf: bytearray, pos: int) -> tuple[int, int] | None:
        """(body start, body end) of the packet at `pos`; None if it is not all here yet;
        (-1, -1) for a Remaining Length longer than MQTT allows."""
        length, shift, at = 0, 0, pos + 1
        while True:
            if at >= len(buf):
                return None
            byte = buf[at]
            at += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if at - pos - 1 >= _MAX_LENGTH_BYTES:
                return -1, -1
        return (at, at + length) if at + length <= len(buf) else None

    def _handle_publish(self) -> MQTTErrorCode:
        command = self._in_packet["command"]
        # QoS 2 (the PUBREC / PUBREL exchange) and MQTT 3.1.1 take paho's own path
        if not LEAN_PAHO or self._protocol != MQTTv5 or command & 0x06 == 0x04:
            return super()._handle_publish()
        try:
            message = decode_publish(command, self._in_packet["packet"],
                                     _PUBLISH_TEMPLATE)
        except _Unusual:
            return super()._handle_publish()
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if message.qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(message.mid)

    def _handle_pubackcomp(self, cmd: str) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if not LEAN_PAHO or cmd != "PUBACK" or self._protocol != MQTTv5 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)  # a reason code or properties: paho's
        mid = packet[0] << 8 | packet[1]
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:  # on_publish once per message, as paho does
                return self._do_on_publish(mid, _copy(ReasonCode, _PUBACK_SUCCESS),
                                           _copy(Properties, _PUBACK_PROPS))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- acknowledging -------------------------------------------------------------------
    def ack_many(self, acks: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (packet id, qos) pairs of received messages (manual_ack): all QoS 1
        PUBACKs in one queued write."""
        if not self._manual_ack:
            return
        ones = bytearray()
        for mid, qos in acks:
            if qos == 1:
                ones += _PUBACK.pack(_PUBACK_CMD, 2, mid)
            elif qos == 2:
                self.ack(mid, qos)
        if not ones:
            return
        if LEAN_PAHO:
            self._packet_queue(_PUBACK_CMD, bytes(ones), 0, 0)
        else:
            for i in range(0, len(ones), _PUBACK.size):
                self.ack(_PUBACK.unpack_from(ones, i)[2], 1)

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def held_writes(self) -> Iterator[None]:
        """Publishes inside wake the network thread once, at the end, not once each."""
        self._held.queued = 0
        try:
            yield
        finally:
            queued, self._held.queued = self._held.queued, None
            if queued:
                self._wake_network_thread()

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        thread = self._thread
        if not LEAN_PAHO or thread is None:  # no network thread: paho writes at once
            return super()._packet_queue(command, packet, mid, qos, info)
        held = getattr(self._held, "queued", None)
        if held is None and threading.get_ident() != thread.ident:
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": info})
        if held is not None:
            self._held.queued = held + 1
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # the network thread: its next pass writes it

    def _wake_network_thread(self) -> None:
        """What paho's _packet_queue does after queueing: a byte that ends its select()."""
        pair = self._sockpairW
        if pair is not None:
            try:
                pair.send(mqtt.sockpair_data)
            except BlockingIOError:
                pass

    def _packet_write(self) -> MQTTErrorCode:
        """Write what is queued, several packets per send(); paho's own loop for a lone
        packet and for a DISCONNECT (it closes the socket once that is written)."""
        queue = self._out_packet
        while True:
            batch = self._write_batch(queue)
            if not LEAN_PAHO or len(batch) < 2:
                return super()._packet_write()
            try:
                written = self._sock_send(b"".join(
                    memoryview(p["packet"])[p["pos"]:] for p in batch))
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            with self._msgtime_mutex:
                self._last_msg_out = mqtt.time_func()
            for packet in batch:  # they lead the queue, in this order
                done = min(written, packet["to_process"])
                packet["pos"] += done
                packet["to_process"] -= done
                written -= done
                if packet["to_process"]:
                    break  # the socket took part of it: the rest at the next pass
                queue.popleft()
                self._written(packet)

    @staticmethod
    def _write_batch(queue) -> list[dict]:
        """The packets at the head of the queue up to SEND_CHUNK bytes, stopping before a
        DISCONNECT. Indexing, not iterating: other threads append meanwhile."""
        batch, size = [], 0
        for i in range(len(queue)):
            packet = queue[i]
            if packet["command"] & 0xF0 == _DISCONNECT_CMD or size >= SEND_CHUNK:
                break
            batch.append(packet)
            size += packet["to_process"]
        return batch

    def _written(self, packet: dict) -> None:
        """What paho does once a packet is all written: for a QoS 0 PUBLISH, on_publish
        (there is no PUBACK to wait for) and its info marked published."""
        if packet["command"] & 0xF0 != _PUBLISH_CMD or packet["qos"] != 0:
            return
        with self._callback_mutex:
            on_publish = self.on_publish
        if on_publish:
            with self._in_callback_mutex:
                try:
                    if self._callback_api_version == CallbackAPIVersion.VERSION1:
                        on_publish(self, self._userdata, packet["mid"])
                    else:
                        on_publish(self, self._userdata, packet["mid"],
                                   _copy(ReasonCode, _PUBACK_SUCCESS),
                                   _copy(Properties, _PUBACK_PROPS))
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publish: %s",
                                   err)
                    if not self.suppress_exceptions:
                        raise
        if packet["info"] is not None:
            packet["info"]._set_as_published()
