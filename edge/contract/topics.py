"""The topic layout of the wire contract (docs/MQTT.md): every topic the gateway and the
workstation tools use is built here, from the prefix, the device id and a line or adapter
name, never by hand.

    layout = TopicLayout("factory", "gw-1")
    layout.status               factory/gw-1/status       retained online/offline
    layout.errors               factory/gw-1/errors       refusals and handler failures
    layout.stats                factory/gw-1/stats        counters
    layout.drift("press-3")     factory/gw-1/drift/press-3  retained drift state of a line
    layout.events               factory/gw-1/events       state changes a person may act on
    layout.put("line7")         factory/gw-1/adapters/put/line7
    layout.activate, .rollback, .revoke, .state           factory/gw-1/adapters/<command>
    layout.results("press-3")   factory/press-3/inference
    layout.sensors("press-3", "imu")                      factory/press-3/sensors/imu

Each builder takes ANY ("+") in place of a line, sensor, adapter name or device to make a
subscription filter: `TopicLayout("factory").errors` is factory/+/errors, every device's.

`layout.payloads()` pairs each filter with the name of its payload's JSON Schema
(edge/contract/schemas.py, docs/schemas/) and its direction; `layout.payload_kind(topic)`
gives the schema name of one topic (None: not a topic of the contract).
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import device_problem, name_problem, prefix_problem

ANY = "+"  # one whole topic level of a subscription filter
DEFAULT_PREFIX = "factory"
SENSOR_FILTER = "{prefix}/+/sensors/+"  # the default topics.inputs ({prefix} filled in)
ADAPTER_COMMANDS = ("activate", "rollback", "revoke")  # JSON commands, one topic each


def _level(value: str, what: str) -> str:
    """`value` when it is ANY or a valid `what` ("line", "adapter"); ValueError otherwise:
    callers check names where they enter, so a bad one here is a bug."""
    problem = None if value == ANY else name_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value


def _sensor_level(value: str) -> str:
    if not value or (value != ANY and any(c in value for c in "/+#")):
        raise ValueError(f"not a single topic level: {value!r}")
    return value


@dataclass(frozen=True)
class TopicLayout:
    """The topics of one prefix; device topics are those of `device` (ANY: every device)."""

    prefix: str = DEFAULT_PREFIX
    device: str = ANY

    def __post_init__(self) -> None:
        problem = prefix_problem(self.prefix) or (
            None if self.device == ANY else device_problem(self.device))
        if problem:
            raise ValueError(problem)

    # -- one device's topics ----------------------------------------------------------------
    def _device_topic(self, *levels: str) -> str:
        return "/".join((self.prefix, self.device, *levels))

    @property
    def status(self) -> str:
        """Retained online/offline, also the last will."""
        return self._device_topic("status")

    @property
    def errors(self) -> str:
        """Refused messages and commands: {"id", "topic", "reason", "ts"}."""
        return self._device_topic("errors")

    @property
    def stats(self) -> str:
        """Counters every topics.stats_interval_s."""
        return self._device_topic("stats")

    @property
    def events(self) -> str:
        """Changes worth a person's attention that are not errors: {"type", ..., "ts"}."""
        return self._device_topic("events")

    def drift(self, line: str) -> str:
        """Retained: this device's drift state of `line` (ANY: the subscription filter)."""
        return self._device_topic("drift", _level(line, "line"))

    def put(self, name: str) -> str:
        """An adapter envelope for adapter `name` (ANY: the subscription filter)."""
        return self._device_topic("adapters", "put", _level(name, "adapter"))

    def put_name(self, topic: str) -> str | None:
        """The <name> level of a put topic of this layout, unchecked; None for another topic."""
        head = self._device_topic("adapters", "put", "")
        return topic[len(head):] if topic.startswith(head) else None

    def command(self, kind: str) -> str:
        """The topic of an adapter command: one of ADAPTER_COMMANDS."""
        if kind not in ADAPTER_COMMANDS:
            raise ValueError(f"not an adapter command: {kind!r}")
        return self._device_topic("adapters", kind)

    @property
    def activate(self) -> str:
        return self.command("activate")

    @property
    def rollback(self) -> str:
        return self.command("rollback")

    @property
    def revoke(self) -> str:
        return self.command("revoke")

    @property
    def state(self) -> str:
        """Retained: lines, held and revoked adapters, the last command."""
        return self._device_topic("adapters", "state")

    # -- payloads ----------------------------------------------------------------------------
    def payloads(self) -> list[tuple[str, str, str]]:
        """(subscription filter, schema name, "in" or "out") of every topic of the contract,
        with ANY in place of each device, line, sensor and adapter name."""
        layout = TopicLayout(self.prefix)  # every device's
        out = [(layout.results(ANY), "result"), (layout.errors, "error"),
               (layout.status, "status"), (layout.stats, "stats"),
               (layout.drift(ANY), "drift-state"), (layout.events, "event"),
               (layout.state, "adapter-state")]
        ins = [(layout.sensors(), "sensor-window"), (layout.put(ANY), "envelope-header"),
               *((layout.command(kind), f"command-{kind}") for kind in ADAPTER_COMMANDS)]
        return [(f, name, "out") for f, name in out] + [(f, name, "in") for f, name in ins]

    def payload_kind(self, topic: str) -> str | None:
        """The schema name of `topic`'s payload; None for a topic outside the contract."""
        for topic_filter, name, _direction in self.payloads():
            if matches(topic_filter, topic):
                return name
        return None

    # -- per-line topics (any device may serve a line) ---------------------------------------
    def results(self, line: str) -> str:
        """One result per sensor window of `line`."""
        return f"{self.prefix}/{_level(line, 'line')}/inference"

    def sensors(self, line: str = ANY, sensor: str = ANY) -> str:
        """Sensor windows of `line` from `sensor`; the defaults make the default filter."""
        return f"{self.prefix}/{_level(line, 'line')}/sensors/{_sensor_level(sensor)}"


def line_of(topic: str, prefix: str) -> str | None:
    """The line level of `<prefix>/<line>[/...]`, unchecked; None when there is none."""
    if not topic.startswith(prefix + "/"):
        return None
    return topic[len(prefix) + 1:].partition("/")[0] or None


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of `topic` against a filter of whole levels, "+" and a final "#"."""
    want, got = topic_filter.split("/"), topic.split("/")
    if want[-1] == "#":
        return len(got) >= len(want) - 1 and all(
            w in (ANY, g) for w, g in zip(want[:-1], got, strict=False))
    return len(want) == len(got) and all(w in (ANY, g) for w, g in zip(want, got, strict=True))
