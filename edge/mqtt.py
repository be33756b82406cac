"""The paho-mqtt 2.x client: MQTT v5 session, retained last will, TLS and credentials from the
config, subscriptions renewed on every (re)connect, and a table of topic handlers.

    link = MqttLink(cfg, will=b'{"state":"offline"}')
    link.handle("factory/+/sensors/+", on_sensor)      # on_sensor(msg: paho MQTTMessage)
    link.start(); link.wait_ready(10)
    link.publish("factory/l1/inference", b"{...}")

Handlers run on paho's network thread and must be quick. A handler's exception is logged and
answered on the errors topic; it never stops the network loop.

With an outbox (`MqttLink(cfg, will=..., outbox=Outbox.open(cfg))`, edge/delivery.py), QoS>=1
publishes that are not retained go through it (on disk until the broker acknowledges them),
and received messages are acknowledged by hand: right after their handler returns, unless
the handler returns True, which means "answered later": the message's `link.token(msg)` is
then acknowledged by `with link.batch(tokens):` once the answers are stored.

A filter may be a shared subscription, `$share/<group>/factory/+/sensors/+` (MQTT v5 4.8.2):
the broker gives each matching message to one member of the group. A message that no
handler's filter matches is reported on the errors topic, then acknowledged.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .codec import best_effort_id, encode_error
from .config import Config, resolve_credentials
from .dedupe import Dedupe
from .delivery import Delivery, Receipt, Token
from .errors import ConfigError
from .mqtt_wire import LeanClient
from .outbox import Outbox
from .status import Counters

log = logging.getLogger(__name__)

Handler = Callable[[mqtt.MQTTMessage], bool | None]  # True: the handler acks it later
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
# Our unacknowledged QoS>0 publishes. paho does not honour the broker's Receive Maximum, so
# stay at Mosquitto's default (20); a broker that grants less is reported at connect.
MAX_INFLIGHT = 20
MAX_QUEUED = 100_000  # publishes paho holds while disconnected; beyond this they are dropped
# Sensor messages the broker may send us unacknowledged (CONNECT Receive Maximum; Mosquitto
# otherwise stops at its max_inflight_messages, 20). With acks deferred until the answers are
# stored, a small window would stall the pipeline. The most MQTT allows; the service asks for
# no more than its queue holds (edge/service.py sensor_receive_maximum).
RECEIVE_MAXIMUM = 65535
_MATCH_CACHE = 4096  # topic -> handler cache entries (topics are sender-chosen: bounded)
_WARNED_TOPICS = 1024  # topics without a handler that were logged (sender-chosen: bounded)
_SHOWN_TOPIC = 120  # characters of a sender's topic quoted in an error reason
SHARE_PREFIX = "$share/"


def match_filter(topic_filter: str) -> str:
    """The filter that incoming topics are matched against. A shared subscription
    `$share/<group>/<filter>` delivers topics that match `<filter>`: the prefix is not part of
    the topic filter (MQTT v5 4.8.2), and paho's `topic_matches_sub` does not know it."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    return topic_filter[len(SHARE_PREFIX):].partition("/")[2]  # "" when malformed: no match


def _drop_not_connected(record: logging.LogRecord) -> bool:
    """paho logs "Client is not connected" at ERROR each time its loop turns between two
    connection attempts, and once after a clean stop; the failed attempt itself is already
    logged with its reason (connect_failed), so this line only hides the real ones."""
    return not str(record.msg).startswith("Client is not connected")


def no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    """TCP_NODELAY on the broker connection (paho leaves Nagle's algorithm on). With it on, a
    result written right after a PUBACK waits for the broker's delayed ACK of that PUBACK:
    40 ms on Linux, every time, on an idle line."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a unix socket, a websocket)
        pass


def message_properties(msg: mqtt.MQTTMessage) -> tuple[str | None, dict[str, str]]:
    """(content_type, user properties) of a received message; (None, {}) when it has none."""
    props = getattr(msg, "properties", None)
    if props is None:
        return None, {}
    content_type = getattr(props, "ContentType", None)
    user = {}
    for pair in getattr(props, "UserProperty", None) or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            user.setdefault(str(pair[0]), str(pair[1]))  # the first value of a key wins
    return content_type, user


def publish_properties(content_type: str | None = None,
                       user: dict[str, str] | None = None) -> Properties:
    """PUBLISH properties: content type and user properties (binary sensor messages)."""
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    if user:
        props.UserProperty = list(user.items())
    return props


def set_security(client: mqtt.Client, cfg: Config) -> None:
    """TLS and credentials of `cfg.broker` on a paho client (the service's link and the
    Sparkplug node's second connection)."""
    broker, tls = cfg.broker, cfg.broker.tls
    username, password = resolve_credentials(cfg)
    if tls.enabled:
        try:
            client.tls_set(ca_certs=str(tls.ca) if tls.ca else None,
                           certfile=str(tls.cert) if tls.cert else None,
                           keyfile=str(tls.key) if tls.key else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"broker.tls: cannot set up TLS ({exc})") from None
        # insecure = false keeps the hostname check: the broker's certificate must name
        # broker.host, so another certificate from the same CA cannot stand in for it.
        client.tls_insecure_set(tls.insecure)
        if tls.insecure:
            log.warning("broker.tls.insecure = true: the broker's host name is not "
                        "checked; for tests only")

        def connect_failed(_client: mqtt.Client, _userdata: object) -> None:
            exc = sys.exc_info()[1]  # paho calls this inside its `except OSError:`
            log.error("broker %s:%s: TLS connection failed: %s (is it a TLS listener, "
                      "signed by broker.tls.ca, for broker.host?); retrying", broker.host,
                      broker.port, exc or "no reason given")

        # paho reports a failed handshake only through on_connect_fail, without the
        # reason; and TLS 1.3 delivers the broker's refusal of our client certificate
        # with the first read, which paho reports only to its logger (at ERROR; its
        # per-packet lines are DEBUG and stay filtered out unless that level is on).
        client.on_connect_fail = connect_failed
        if client.logger is None:
            paho_log = logging.getLogger("edge.mqtt.paho")
            paho_log.addFilter(_drop_not_connected)
            client.enable_logger(paho_log)
    elif username is not None or password is not None:
        log.warning("broker %s:%s: credentials go in plaintext; set broker.tls.enabled",
                    broker.host, broker.port)
    if username is not None or password is not None:
        client.username_pw_set(username, password)


class MqttLink:
    """One paho client for the service. Call `handle` before `start`; `on_connect` runs on
    the network thread after every (re)connect, once the broker has granted the
    subscriptions."""

    def __init__(self, cfg: Config, *, will: bytes | None,
                 on_connect: Callable[[], None] | None = None, outbox: Outbox | None = None,
                 dedupe: Dedupe | None = None, counters: Counters | None = None,
                 receive_maximum: int = RECEIVE_MAXIMUM) -> None:
        self.cfg = cfg
        self.errors_topic = cfg.topic_layout.errors
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # set at each SUBACK, cleared on disconnect
        self._subscribe_mid: int | None = None
        self._handlers: list[tuple[str, int, Handler]] = []  # (filter, qos, handler)
        # Matched but not subscribed: what a retiring worker's session still holds.
        self._passive: list[tuple[str, int, Handler]] = []
        self.unsubscribe_on_connect: list[str] = []  # filters an earlier run left behind
        self._match: dict[str, Handler | None] = {}
        self._warned: set[str] = set()  # topics without a handler, logged once each
        self._on_connect_hook = on_connect
        self._stopping = False
        self.counters = counters
        self.receive_maximum = max(1, min(receive_maximum, RECEIVE_MAXIMUM))
        self.client = self._make_client(will, manual_ack=outbox is not None)
        self.delivery = None if outbox is None else Delivery(
            self.client, outbox, connected=self.connected, errors_topic=self.errors_topic,
            counters=counters, dedupe=dedupe)

    # -- setup ------------------------------------------------------------------------------
    def _make_client(self, will: bytes | None, manual_ack: bool) -> mqtt.Client:
        broker = self.cfg.broker
        client = LeanClient(CallbackAPIVersion.VERSION2, client_id=broker.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        paho_log = logging.getLogger("edge.mqtt.paho")
        if paho_log.isEnabledFor(logging.DEBUG):  # paho logs every packet: costly under load
            client.enable_logger(paho_log)
        if will is not None:  # the broker publishes this, retained, when we vanish
            client.will_set(self.cfg.topic_layout.status, will, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(MAX_QUEUED)
        set_security(client, self.cfg)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def handle(self, topic_filter: str, handler: Handler, qos: int | None = None, *,
               subscribe: bool = True) -> None:
        """Subscribe `topic_filter` (at topics.qos unless given) and route matches to
        `handler`; the first matching filter in registration order wins. `subscribe=False`:
        only route what arrives (a session's subscriptions from an earlier run)."""
        entry = (topic_filter, self.cfg.topics.qos if qos is None else qos, handler)
        (self._handlers if subscribe else self._passive).append(entry)
        self._match.clear()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's network thread); reconnects on its own."""
        broker = self.cfg.broker
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = broker.session_expiry
        if self.delivery is not None:
            props.ReceiveMaximum = self.receive_maximum
            self.delivery.start()
        self._stopping = False
        self.client.connect_async(broker.host, broker.port, broker.keepalive,
                                  clean_start=broker.clean_start, properties=props)
        self.client.loop_start()

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed, False after `timeout` seconds."""
        return self.subscribed.wait(timeout)

    def stop(self, timeout: float = 5.0, *, end_session: bool = False) -> None:
        """DISCONNECT cleanly (the broker then drops the last will) and end the thread.
        With an outbox, first give the broker up to `timeout` seconds to take what it
        holds; the rest stays on disk and goes first at the next start. `end_session`:
        the broker forgets this client's session (MQTT v5 session expiry 0 at DISCONNECT)."""
        if self.delivery is not None:
            self.delivery.drain(timeout)
        self._stopping = True
        if self.connected.is_set():
            props = None
            if end_session:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
        self.client.loop_stop()
        self.connected.clear()
        self.subscribed.clear()
        if self.delivery is not None:
            self.delivery.stop()

    def publish(self, topic: str, payload: bytes, *, qos: int | None = None,
                retain: bool = False, properties: Properties | None = None
                ) -> mqtt.MQTTMessageInfo | Receipt:
        """Queue a publish (thread-safe); results use topics.qos unless `qos` is given.
        With an outbox, a QoS>=1 publish that is not retained is stored there first."""
        qos = self.cfg.topics.qos if qos is None else qos
        if qos and not retain and self.delivery is not None:
            return self.delivery.publish(topic, payload, qos, properties)
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        return info

    def report(self, msg_id: str | None, topic: str, reason: str) -> None:
        """One message on the errors topic for a message that could not be used."""
        self.publish(self.errors_topic, encode_error(id=msg_id, topic=topic, reason=reason))

    # -- deferred acknowledgements (with an outbox) -----------------------------------------
    def token(self, msg: mqtt.MQTTMessage) -> Token | None:
        """What `batch` needs to acknowledge `msg` later; None when nothing is owed."""
        return None if self.delivery is None else self.delivery.token(msg)

    @contextmanager
    def batch(self, tokens: Iterable[Token | None] = (), *, background: bool = False
              ) -> Iterator[None]:
        """This thread's publishes inside are stored in one outbox transaction at the end
        (with the batch's dedupe keys); then the messages behind `tokens` are acknowledged.
        `background`: by the commit thread while this one goes on (Delivery.batch)."""
        if self.delivery is None:
            yield
            return
        with self.delivery.batch(tokens, background=background):
            yield

    def wait_for_room(self, give_up: threading.Event) -> None:
        """With outbox.when_full = "stop_consuming": block while the outbox is full."""
        if self.delivery is not None:
            self.delivery.wait_for_room(give_up)

    # -- paho callbacks (network thread) ----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s (retrying)",
                      self.cfg.broker.host, self.cfg.broker.port, reason_code)
            return
        log.info("connected to %s:%s (session present: %s)", self.cfg.broker.host,
                 self.cfg.broker.port, flags.session_present)
        granted = getattr(properties, "ReceiveMaximum", None)
        if granted is not None and granted < client.max_inflight_messages:
            log.warning("the broker accepts %d unacknowledged QoS>0 messages; we send up to "
                        "%d: raise its receive maximum", granted, client.max_inflight_messages)
        self.connected.set()
        if self.delivery is not None:
            self.delivery.connected()
        if self.unsubscribe_on_connect:  # before the SUBSCRIBE: no window comes twice
            client.unsubscribe(list(self.unsubscribe_on_connect))
        if not self._handlers:
            self._ready()
            return
        _, self._subscribe_mid = client.subscribe(
            [(f, SubscribeOptions(qos=q)) for f, q, _ in self._handlers])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for (topic_filter, _, _), code in zip(self._handlers, reason_codes, strict=False):
            if code.is_failure:
                log.error("subscription to %s refused: %s", topic_filter, code)
        if mid == self._subscribe_mid:
            self._ready()

    def _ready(self) -> None:
        """Subscribed (the SUBACK is in): from here on no sensor message is missed."""
        self.subscribed.set()
        if self._on_connect_hook is not None:
            try:
                self._on_connect_hook()
            except Exception:
                log.exception("on-connect hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self.delivery is not None:
            self.delivery.sender.poke()
        if not self._stopping:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _handler_for(self, topic: str) -> Handler | None:
        if topic not in self._match:
            if len(self._match) >= _MATCH_CACHE:
                self._match.clear()
            self._match[topic] = next((h for f, _, h in (*self._handlers, *self._passive)
                                       if mqtt.topic_matches_sub(match_filter(f), topic)),
                                      None)
        return self._match[topic]

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        later = False
        try:
            later = self._dispatch(msg)
        finally:  # with manual acks, every message is acknowledged by someone
            if not later and self.delivery is not None:
                self.delivery.ack([self.delivery.token(msg)])

    def _dispatch(self, msg: mqtt.MQTTMessage) -> bool:
        """Run the handler; True when it took over the acknowledgement."""
        handler = self._handler_for(msg.topic)
        if handler is None:
            self._report_unmatched(msg)
            return False
        try:
            return handler(msg) is True
        except Exception as exc:  # a bug in a handler must not end paho's loop
            log.exception("handler for %s failed", msg.topic)
            try:
                msg_id = best_effort_id(msg.payload, message_properties(msg)[1])
                self.report(msg_id, msg.topic, f"internal error: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not report the failure on %s", self.errors_topic)
            return False

    def _report_unmatched(self, msg: mqtt.MQTTMessage) -> None:
        """One error report for a message that none of our filters matches. The broker only
        sends what a subscription covers, so the likely cause is a filter that a persistent
        session kept from an earlier topics.inputs. The caller acknowledges the message
        afterwards: unacknowledged, it would come back at every reconnect."""
        topic = msg.topic
        shown = topic if len(topic) <= _SHOWN_TOPIC else topic[:_SHOWN_TOPIC] + "..."
        subscribed = ", ".join(f for f, _, _ in self._handlers) or "(none)"
        reason = (f"no subscription of this gateway matches topic {shown} (subscribed: "
                  f"{subscribed}); a filter kept by the broker's persistent session from an "
                  "earlier topics.inputs? connect once with broker.clean_start = true")
        self._warn_once(topic, reason)
        if self.counters is not None:
            self.counters.error("unmatched_topic")
        try:
            self.report(best_effort_id(msg.payload, message_properties(msg)[1]), topic, reason)
        except Exception:
            log.exception("could not report the message on %s", self.errors_topic)

    def _warn_once(self, topic: str, reason: str) -> None:
        """A warning per topic, for the first _WARNED_TOPICS topics; then one saying that
        the rest are only reported (a sender choosing topics must not grow our memory)."""
        if topic in self._warned:
            return
        if len(self._warned) < _WARNED_TOPICS:
            self._warned.add(topic)
            log.warning("%s; reported on %s and acknowledged", reason, self.errors_topic)
        elif len(self._warned) == _WARNED_TOPICS:
            self._warned.add("")  # "" is no topic: marks this last warning as given
            log.warning("more than %d topics without a handler; further ones are reported on "
                        "%s only", _WARNED_TOPICS, self.errors_topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self.delivery is not None:
            self.delivery.sender.acked(mid, reason_code)
