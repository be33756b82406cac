"""Shared subscriptions against a real Mosquitto: several gateways on one line, each with
`topics.inputs = ["$share/<group>/factory/+/sensors/+"]`, share the windows; a message that
no filter of the gateway matches is reported, never dropped in silence; the config accepts
`$share/<group>/<filter>` and refuses malformed ones and `$SYS`.

The subprocess test prints sent / answered / duplicated / lost like tests/test_faults.py:
"answered" counts ids with a result, "duplicated" the extra copies of a result, "lost" the
ids without one. No test asserts timings.
"""

from __future__ import annotations

import json
import logging
import signal
from collections import defaultdict
from pathlib import Path

import pytest
from reference_bundle import sample_windows
from test_faults import Stream
from test_runtime import Collector, Publisher, _spawn

from edge.config import check_config, load_config
from edge.mqtt import match_filter
from edge.outbox import Outbox
from edge.service import Service
from export.demo.local_broker import write_runtime_config

SHARED = "$share/lineA/factory/+/sensors/+"
LINES = {"line-a": {"adapter": "line-a"}, "line-b": {}}
PERSISTENT = {"clean_start": False, "session_expiry": 300}
ERRORS = "factory/+/errors"
WAIT_S = 60.0  # generous: a slow CI box must not fail a test; nothing here measures time


# --------------------------------------------------------------------------------------------
# Config: the filter forms accepted and refused
# --------------------------------------------------------------------------------------------

FILTERS = [  # (topics.inputs[0], None when valid, else a part of its one problem line)
    ("$share/g/factory/+/sensors/+", None),
    ("$share/lineA/{prefix}/+/sensors/+", None),
    ("$share//x", "the group is one non-empty level"),
    ("$share/g+/x", "without '+', '#'"),
    ("$share/g", "then a filter"),
    ("$share/g/", "then a filter"),
    ("$share/g/a+/x", "'+' fills a whole level"),
    ("$SYS/#", "topics starting with '$' belong to the broker"),
    ("$share/g/$SYS/#", "topics starting with '$' belong to the broker"),
]


@pytest.mark.parametrize("topic_filter, problem", FILTERS)
def test_shared_filter_config(tmp_path, topic_filter, problem):
    path = tmp_path / "gw.toml"
    path.write_text(f'[device]\nid = "gw-1"\n[topics]\ninputs = ["{topic_filter}"]\n')
    lines = check_config(path)
    if problem is None:
        assert lines == []
        return
    assert len(lines) == 1, lines
    assert f"topics.inputs[0]: {topic_filter!r}: " in lines[0] and problem in lines[0], lines[0]


@pytest.mark.parametrize("topic_filter, matched", [
    ("$share/lineA/factory/+/sensors/+", "factory/+/sensors/+"),
    ("$share/g/#", "#"),
    ("factory/+/sensors/+", "factory/+/sensors/+"),
    ("$share/g", ""),  # malformed: matches nothing (the config refuses it anyway)
])
def test_match_filter(topic_filter, matched):
    assert match_filter(topic_filter) == matched


# --------------------------------------------------------------------------------------------
# In process: a shared filter alone is answered; a message no filter matches is reported
# --------------------------------------------------------------------------------------------

def test_a_shared_filter_alone_is_answered(service, mosquitto):
    """The regression: a gateway whose only input is a `$share/...` filter answers windows
    (they used to be acknowledged and dropped), and the line is the level after the prefix
    of the topic as published."""
    x, _, _ = sample_windows(2)
    svc = service(topics={"inputs": [SHARED]})
    assert svc.cfg.topics.inputs == [SHARED]
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    pub.json("factory/line-a/sensors/imu-1", "s0", x[0])
    pub.binary("factory/line-b/sensors/imu-2", "s1", x[1])
    pub.close()
    try:
        assert collector.wait(lambda c: len(c.answers()) >= 2)
        assert collector.docs("/errors") == []
        results = sorted((d["id"], d["line"], d["adapter"]) for d in collector.docs("/inference"))
        assert results == [("s0", "line-a", "line-a"), ("s1", "line-b", "base")]
    finally:
        collector.close()


def test_a_message_no_filter_matches_is_reported(runtime_config, service, mosquitto, caplog):
    """A persistent session keeps the subscriptions of an earlier config: the gateway ran
    with `legacy/#` among its inputs, then restarts without it, and the broker still sends
    what `legacy/#` matches. Each such message gets an error report naming the topic and the
    gateway's filters, one warning per topic, and is acknowledged (not sent again)."""
    old = Service(runtime_config(broker=PERSISTENT, topics={
        "inputs": ["{prefix}/+/sensors/+", "legacy/#"]}))
    assert old.start(), "service did not connect"
    old.stop(5)
    collector = Collector(mosquitto.port, (ERRORS,))
    x, _, _ = sample_windows(1)
    try:
        with caplog.at_level(logging.WARNING, logger="edge.mqtt"):
            service(broker=PERSISTENT)  # same device id and client id: the session is back
            pub = Publisher(mosquitto.port)
            for msg_id in ("stale-1", "stale-2"):
                pub.json("legacy/press-3/imu", msg_id, x[0])
            pub.close()
            assert collector.wait(lambda c: len(c.docs("/errors")) >= 2)
        errors = collector.docs("/errors")
        assert [e["id"] for e in errors] == ["stale-1", "stale-2"]
        for error in errors:
            assert error["topic"] == "legacy/press-3/imu"
            assert error["reason"].startswith(
                "no subscription of this gateway matches topic legacy/press-3/imu "
                "(subscribed: "), error["reason"]
            assert "factory/+/sensors/+" in error["reason"]
            assert "broker.clean_start" in error["reason"]
        warned = [r for r in caplog.records if "legacy/press-3/imu" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        print(f"reason: {errors[0]['reason']}")
    finally:
        collector.close()


def test_a_reported_message_is_not_redelivered(runtime_config, mosquitto):
    """The report comes first, then the acknowledgement: after a restart on the same
    persistent session the broker does not send the reported message again. The broker sends
    a session's unacknowledged messages before new ones, so once the report of a message
    published after the restart is in, a redelivery would have come before it."""
    config = runtime_config(broker=PERSISTENT, topics={
        "inputs": ["{prefix}/+/sensors/+", "legacy/#"]})
    first = Service(config)
    assert first.start(), "service did not connect"
    first.stop(5)
    config = runtime_config(broker=PERSISTENT)  # legacy/# is gone from topics.inputs
    collector = Collector(mosquitto.port, (ERRORS,))
    x, _, _ = sample_windows(1)
    try:
        for msg_id in ("stale-1", "stale-2"):  # stale-1 before the restart, stale-2 after
            svc = Service(config)
            assert svc.start(), "service did not connect"
            pub = Publisher(mosquitto.port)
            pub.json("legacy/press-3/imu", msg_id, x[0])
            pub.close()
            assert collector.wait(lambda c, i=msg_id: any(
                e["id"] == i for e in c.docs("/errors")))
            svc.stop(5)
        assert [e["id"] for e in collector.docs("/errors")] == ["stale-1", "stale-2"]
    finally:
        collector.close()


# --------------------------------------------------------------------------------------------
# Three `edge-runtime run` processes share a line; one is SIGKILLed and restarted
# --------------------------------------------------------------------------------------------

def gateway_config(tmp_path: Path, port: int, bundle: Path, index: int) -> Path:
    """Gateway `gw-<index>`: its own device.id (so its own client id `edge-gw-<index>`), its
    own state_dir (outbox and dedupe window), a persistent session, the shared filter."""
    directory = tmp_path / f"gw-{index}"
    directory.mkdir()
    return write_runtime_config(directory, port=port, bundle=bundle, lines=LINES,
                                device_id=f"gw-{index}", broker=PERSISTENT,
                                topics={"inputs": [SHARED]})


def status_seen(collector: Collector, device: str, state: str, after: int = 0) -> int | None:
    """Index in collector.status() of the first `state` of `device` at or after `after`."""
    docs = collector.status()
    return next((i for i in range(after, len(docs))
                 if docs[i]["device"] == device and docs[i]["state"] == state), None)


def wait_status(collector: Collector, device: str, state: str, logs: list[Path],
                after: int = 0) -> int:
    if not collector.wait(lambda c: status_seen(c, device, state, after) is not None, WAIT_S):
        pytest.fail(f"no status {state!r} from {device}; logs:\n"
                    + "\n".join(p.read_text() for p in logs if p.exists()))
    return status_seen(collector, device, state, after)


def results_by_id(collector: Collector) -> dict[str, list[bytes]]:
    """Every result payload per window id, copies included."""
    with collector._cond:
        messages = list(collector.messages)
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload, _ in messages:
        if topic.endswith("/inference"):
            out[json.loads(payload)["id"]].append(payload)
    return out


def first_answered_after_online(collector: Collector, device: str) -> set[str]:
    """Ids whose first result came after the last `online` of `device`."""
    with collector._cond:
        messages = [(t, json.loads(p)) for t, p, _ in collector.messages]
    status = f"factory/{device}/status"
    mark = max(i for i, (t, d) in enumerate(messages) if t == status and d["state"] == "online")
    before = {d["id"] for t, d in messages[:mark] if t.endswith("/inference")}
    return {d["id"] for t, d in messages[mark:] if t.endswith("/inference")} - before


def computed_ids(config: Path) -> set[str]:
    """The window ids this gateway computed. A result does not say which gateway computed it
    (id, ts, line, adapter, label, scores, latency_ms), but each gateway stores the key
    `<line>/<id>` of every window it computes in its outbox's dedupe window, with the answer,
    in the same transaction (edge/dedupe.py): read it once the gateway has stopped."""
    box = Outbox.open(load_config(config))
    try:
        return {key.partition("/")[2] for key in box.recent_keys()}
    finally:
        box.close()


@pytest.mark.parametrize("n", [pytest.param(240, id="N240"),
                               pytest.param(2400, id="N2400", marks=pytest.mark.slow)])
def test_three_gateways_share_a_line(mosquitto, basicmotions_bundle, tmp_path, n):
    """N windows at QoS 1 to three gateways in one share group; SIGKILL gw-1 once a third
    were answered, restart it (same config, so the same client id and persistent session)
    once half were. Every window is answered, no error is reported, each gateway computed
    some, and every duplicated answer is of a window that gw-1, the killed one, computed."""
    configs = [gateway_config(tmp_path, mosquitto.port, basicmotions_bundle, i)
               for i in range(3)]
    logs = [tmp_path / f"gw-{i}.log" for i in range(3)]
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS, "factory/+/status"))
    procs = [_spawn(config, log) for config, log in zip(configs, logs, strict=True)]
    stream = None
    try:
        for i in range(3):  # online comes after the SUBACK: all three are in the group
            wait_status(collector, f"gw-{i}", "online", logs)
        ids = [f"w{i}" for i in range(n)]
        stream = Stream(mosquitto.port, ids, rate=60).start()
        assert collector.wait(lambda c: len(results_by_id(c)) >= n // 3, WAIT_S)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        offline = wait_status(collector, "gw-1", "offline", logs)
        assert collector.status()[offline]["reason"] == "connection lost"  # the last will
        # While gw-1 is away, the others go on answering their part of the stream.
        assert collector.wait(lambda c: len(results_by_id(c)) >= n // 2, WAIT_S)
        restart_log = tmp_path / "gw-1.restart.log"
        logs.append(restart_log)
        procs[1] = _spawn(configs[1], restart_log)
        wait_status(collector, "gw-1", "online", logs, after=offline + 1)
        assert stream.wait_all_acked(), "the broker never acknowledged every window"
        collector.wait(lambda c: set(results_by_id(c)) >= set(ids), WAIT_S)
        for proc in procs:  # a clean stop: each outbox file is complete and closed
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(WAIT_S) for proc in procs] == [0, 0, 0], logs
        computed = {f"gw-{i}": computed_ids(config) for i, config in enumerate(configs)}
        tally(n, ids, results_by_id(collector), computed, killed="gw-1")
        waited = first_answered_after_online(collector, "gw-1") & computed["gw-1"]
        print(f"  windows of gw-1 first answered after its restart: {len(waited)} (in flight "
              "at the kill, or given to its session while it was away)")
        assert collector.docs("/errors") == []
    finally:
        if stream is not None:
            stream.close()
        for proc in procs:
            proc.kill()
            proc.wait(5)
        collector.close()


def tally(n: int, ids: list[str], results: dict[str, list[bytes]],
          computed: dict[str, set[str]], killed: str) -> None:
    """Print sent / answered / duplicated / lost and who computed what; assert the bounds."""
    lost = sorted(i for i in ids if not results.get(i))
    duplicated = {i: c for i, c in results.items() if len(c) > 1}
    by_two = {i for i in ids if sum(i in s for s in computed.values()) > 1}
    print(f"shared subscription, 3 gateways, N={n}: sent {n}, answered {n - len(lost)}, "
          f"duplicated {sum(len(c) - 1 for c in duplicated.values())} "
          f"({len(duplicated)} ids), lost {len(lost)}")
    print("  computed per gateway: " + ", ".join(f"{g} {len(s)}" for g, s in computed.items())
          + f"; computed by two gateways: {len(by_two)}")
    assert not lost, lost
    assert all(computed.values()), computed  # the subscription is really shared
    assert set().union(*computed.values()) == set(ids)
    # A window is answered twice only when the killed gateway had it: its result went out but
    # the PUBACK never came back (the outbox sends it again, byte-identical), or the broker
    # gave the window to another member as well (Mosquitto 2.0.11 does not: it keeps the dead
    # member's windows in its session until it comes back).
    assert set(duplicated) <= computed[killed], sorted(set(duplicated) - computed[killed])
    assert by_two <= computed[killed], sorted(by_two - computed[killed])
