"""Faults against a real Mosquitto: the broker SIGKILLed mid-stream and restarted on the same
port with its persistence file, the runtime SIGKILLed mid-stream and started again, and an
outbox directory that is read-only or fills up.

Each test states its N and prints sent / received / duplicated / lost: "received" counts ids
with a result, "duplicated" the extra copies of a result (QoS 1 may deliver one twice; they
are byte-identical, since a result computed again would carry another latency_ms), "lost"
the accepted ids without a result. No test asserts timings.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from reference_bundle import sample_windows
from test_runtime import _spawn, wait_until

from edge.errors import ConfigError
from edge.service import Service
from export.demo.local_broker import BrokerMissing, start_broker, write_runtime_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "gw-test"
STATUS = f"factory/{DEVICE}/status"
ERRORS = f"factory/{DEVICE}/errors"
STATS = f"factory/{DEVICE}/stats"
WAIT_S = 60.0  # generous: a slow CI box must not fail a test; nothing here measures time
PERSISTENT = {"clean_start": False, "session_expiry": 300}
LINES = {"line-a": {"adapter": "line-a"}, "line-b": {}}


# --------------------------------------------------------------------------------------------
# Helpers: a paced QoS 1 stream, a persistent-session collector
# --------------------------------------------------------------------------------------------

class Stream:
    """Publishes sensor windows `ids` at QoS 1 from a thread, `rate` per second, alternating
    the two lines; records when each got its PUBACK (time.time()). paho re-sends what was
    not acknowledged after it reconnects, so an outage only delays the stream."""

    def __init__(self, port: int, ids: list[str], rate: float) -> None:
        self.ids, self.rate = ids, rate
        self._mid_time: dict[int, float] = {}
        self._id_mid: dict[str, int] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self._mid_time.setdefault(mid, time.time())

    def _run(self) -> None:
        x, _, _ = sample_windows()  # the real test windows, reused round robin
        start = time.monotonic()
        for i, msg_id in enumerate(self.ids):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps({"id": msg_id, "values": x[i % len(x)].tolist()}).encode()
            info = self.client.publish(f"factory/line-{'ab'[i % 2]}/sensors/s", body, qos=1)
            with self._lock:
                self._id_mid[msg_id] = info.mid

    def start(self) -> Stream:
        self._thread.start()
        return self

    def acked(self) -> dict[str, float]:
        """id -> time of its PUBACK, for the ids the broker has acknowledged."""
        with self._lock:
            return {i: self._mid_time[m] for i, m in self._id_mid.items() if m in self._mid_time}

    def wait_all_acked(self, timeout: float = WAIT_S) -> bool:
        self._thread.join(timeout)
        return wait_until(lambda: len(self.acked()) == len(self.ids), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Results:
    """A subscriber with a persistent session (fixed client id, clean_start false) that
    subscribes again on every connect: every result payload per id, errors, status, stats."""

    def __init__(self, port: int, client_id: str = "fault-collector") -> None:
        self.results: dict[str, list[bytes]] = defaultdict(list)
        self.errors: list[dict] = []
        self.status: list[dict] = []
        self.stats: list[dict] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._notify()
        self._subscribed = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "collector not subscribed"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        topics = ["factory/+/inference", ERRORS, STATUS, STATS]
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        self._subscribed.set()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        doc = json.loads(msg.payload)
        with self._cond:
            if msg.topic.endswith("/inference"):
                self.results[doc["id"]].append(msg.payload)
            elif msg.topic == ERRORS:
                self.errors.append(doc)
            elif msg.topic == STATUS:
                self.status.append(doc)
            else:
                self.stats.append(doc)
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_state(self, state: str, after: int = 0) -> int:
        """Index of the first status `state` at or after index `after`."""
        def found(r: Results) -> bool:
            return any(s["state"] == state for s in r.status[after:])

        assert self.wait(found), f"no status {state!r} after {self.status[after:]}"
        return next(i for i in range(after, len(self.status))
                    if self.status[i]["state"] == state)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tally(name: str, results: Results, accepted: list[str], sent: int) -> dict:
    """Print and return sent / received / duplicated / lost; assert none was computed twice."""
    with results._cond:
        copies = {i: list(results.results.get(i, [])) for i in accepted}
    lost = sorted(i for i, c in copies.items() if not c)
    twice = {i: c for i, c in copies.items() if len(set(c)) > 1}
    figures = {"sent": sent, "accepted": len(accepted),
               "received": sum(1 for c in copies.values() if c),
               "duplicated": sum(len(c) - 1 for c in copies.values() if c),
               "lost": len(lost), "computed_twice": len(twice)}
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert not twice, f"computed twice: {twice}"
    return {**figures, "lost_ids": lost}


# --------------------------------------------------------------------------------------------
# (a) The broker dies mid-stream and comes back on the same port
# --------------------------------------------------------------------------------------------

@pytest.fixture
def persistent_broker(tmp_path):
    """Mosquitto with persistence (saved after every change); `holder[0]` is the running
    broker, replaced by the test when it restarts it."""
    try:
        holder = [start_broker(tmp_path / "mosquitto", persistence=True)]
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    yield holder
    holder[0].stop()
    print(f"--- mosquitto log ---\n{holder[0].log_text()}")


@pytest.mark.parametrize("n", [pytest.param(150, id="N150"),
                               pytest.param(2000, id="N2000", marks=pytest.mark.slow)])
def test_broker_killed_mid_stream(persistent_broker, basicmotions_bundle, tmp_path, n):
    """N windows at QoS 1; SIGKILL the broker after a third were acknowledged, restart it on
    the same port with its mosquitto.db. Every window the broker had accepted gets a result,
    none is computed twice, and the runtime, reconnected, announces `online` again.

    Mosquitto saves after every change, but a SIGKILL can land between a PUBACK and that
    save, on either side of the gateway: windows the broker acknowledged to the sender after
    the file's last write before the kill are its own loss, counted apart ("unsaved"), and
    so are results the broker acknowledged to the gateway and lost before it saved or
    passed them on. So every other window must have a result, or else have been computed
    by the gateway (its outbox keeps the key of every window it answered, in the same
    transaction as the answer, and deletes an answer only on the broker's PUBACK)."""
    broker = persistent_broker[0]
    db = broker.conf.parent / "mosquitto.db"
    config = write_runtime_config(tmp_path, port=broker.port, bundle=basicmotions_bundle,
                                  lines=LINES, broker=PERSISTENT)
    svc = Service(config)
    assert svc.start(), "service did not connect"
    results = Results(broker.port)
    ids = [f"a{i}" for i in range(n)]
    stream = Stream(broker.port, ids, rate=300).start()
    try:
        assert wait_until(lambda: len(stream.acked()) >= n // 3)
        broker.kill()
        killed_at = time.time()
        saved_at = db.stat().st_mtime if db.exists() else 0.0
        persistent_broker[0] = start_broker(broker.conf.parent, persistence=True,
                                            port=broker.port)
        # The sender reconnects a second or more after this; a PUBACK of the old broker
        # whose callback ran after the kill returned is still the old broker's (unsaved).
        restarted_at = time.time()
        assert stream.wait_all_acked(), "the broker never acknowledged every window"
        acked = stream.acked()
        unsaved = [i for i, t in acked.items() if saved_at <= t < restarted_at]
        accepted = [i for i in ids if i not in unsaved]
        def computed() -> set[str]:
            return {key.partition("/")[2] for key in svc.outbox.recent_keys()}

        # Every accepted window computed and every answer acknowledged by the broker; then
        # the results still on their way get a few seconds (a lost one never comes).
        assert wait_until(lambda: set(accepted) <= computed() and svc.outbox.count == 0)
        results.wait(lambda r: all(r.results.get(i) for i in accepted), timeout=5)
        figures = tally(f"broker SIGKILL, N={n}", results, accepted, n)
        answered = sum(1 for i in unsaved if results.results.get(i))
        print(f"  acknowledged before the broker's last save or after the restart: "
              f"{len(accepted)}; in between: {len(unsaved)}, {answered} of them answered anyway")
        results_lost = [i for i in figures["lost_ids"] if i in computed()]
        print(f"  computed and handed to the broker, result lost by the broker: {results_lost}")
        assert set(figures["lost_ids"]) <= computed(), figures["lost_ids"]
        # The runtime reconnected on its own and said so: a fresh retained `online`.
        assert results.wait(lambda r: any(s["state"] == "online" and s["ts"] > killed_at
                                          for s in r.status)), results.status
    finally:
        stream.close()
        svc.stop(5)
        results.close()


# --------------------------------------------------------------------------------------------
# (b) The runtime dies mid-stream and starts again
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [pytest.param(200, id="N200"),
                               pytest.param(3000, id="N3000", marks=pytest.mark.slow)])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_runtime_killed_mid_stream(mosquitto, basicmotions_bundle, tmp_path, n, sig):
    """N windows at QoS 1 into a persistent session; SIGKILL (or SIGTERM: a planned
    restart) `edge-runtime run` after a third were answered, start it again while the
    stream goes on. Every window gets a result, none is computed twice, and none is answered
    with an error: a window that arrives while SIGTERM drains the queue stays
    unacknowledged and reaches the next start. Status: the last will (SIGKILL) or the
    runtime's own "shutdown" (SIGTERM) says offline, the restart online."""
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                  lines=LINES, broker=PERSISTENT)
    log = tmp_path / "service.log"
    results = Results(mosquitto.port)
    proc = _spawn(config, log)
    stream = None
    try:
        online = results.wait_state("online")
        ids = [f"b{i}" for i in range(n)]
        stream = Stream(mosquitto.port, ids, rate=300).start()
        assert results.wait(lambda r: len(r.results) >= n // 3), log.read_text()
        proc.send_signal(sig)
        assert proc.wait(30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        offline = results.wait_state("offline", online + 1)
        assert results.status[offline]["reason"] == (
            "shutdown" if sig == signal.SIGTERM else "connection lost")  # else the last will
        proc = _spawn(config, log.with_name("service2.log"))
        results.wait_state("online", offline + 1)
        assert stream.wait_all_acked()
        results.wait(lambda r: all(r.results.get(i) for i in ids))
        figures = tally(f"runtime {sig.name}, N={n}", results, ids, n)
        assert figures["lost"] == 0, figures["lost_ids"]
        assert results.errors == []
        if sig == signal.SIGTERM:  # the drain left its late windows to the broker
            print("deferred at SIGTERM:", re.findall(r"'deferred': (\d+)", log.read_text()))
    finally:
        if stream is not None:
            stream.close()
        proc.kill()
        proc.wait(5)
        results.close()


# --------------------------------------------------------------------------------------------
# (c) The outbox directory is read-only, or fills up
# --------------------------------------------------------------------------------------------

def _no_root_override() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    that a root child obeys permission bits as the service user would."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _file_size_limit(limit: int):
    """preexec_fn: no file may grow past `limit` bytes (writes fail with EFBIG, as on a full
    disk; Python ignores SIGXFSZ)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run_cli(config: Path, preexec) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=preexec)


@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_unusable_state_dir_is_one_error_line(mosquitto, basicmotions_bundle, tmp_path, fault):
    """`edge-runtime run` with a read-only state_dir, or one where no file can grow (an
    RLIMIT_FSIZE of 0): one `error:` line naming device.state_dir, exit code 2, no retry."""
    state = tmp_path / "state"
    state.mkdir()
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                  lines=LINES, device={"state_dir": str(state)})
    if fault == "read_only":
        state.chmod(0o555)
        preexec = _no_root_override
    else:
        preexec = _file_size_limit(0)
    try:
        done = _run_cli(config, preexec)
    finally:
        state.chmod(0o755)
    lines = done.stderr.strip().splitlines()
    print(f"{fault}: exit {done.returncode}: {lines}")
    assert done.returncode == ConfigError.exit_code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "device.state_dir" in lines[0] and str(state) in lines[0]


def test_disk_fills_while_running(mosquitto, basicmotions_bundle, tmp_path):
    """N = 60 windows, one at a time, to a runtime whose files may not grow past 256 KiB:
    the outbox's WAL fills after a few batches. The failure is logged, reported once on the
    errors topic and counted in stats; every window still gets its answer (sent without the
    outbox) and the process keeps running, then stops cleanly on SIGTERM."""
    n = 60
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                  lines=LINES, topics={"stats_interval_s": 0.5})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = Results(mosquitto.port)
    # Output to a pipe: the file size limit would stop a log file too.
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_file_size_limit(256 << 10))
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    stream = None
    try:
        results.wait_state("online")
        ids = [f"c{i}" for i in range(n)]
        stream = Stream(mosquitto.port, ids, rate=30).start()
        assert stream.wait_all_acked()
        assert results.wait(lambda r: all(r.results.get(i) for i in ids)), "".join(output)
        assert results.wait(lambda r: any(s["outbox"]["errors"] for s in r.stats))
        figures = tally(f"disk full, N={n}", results, ids, n)
        assert figures["lost"] == 0
        reports = [e for e in results.errors if "outbox" in e["reason"]]
        print(f"  error reports: {[e['reason'] for e in reports]}")
        assert len(reports) == 1 and "disk" in reports[0]["reason"]
        assert proc.poll() is None, "".join(output)  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, "".join(output)
        reader.join(5)
        assert any("answers go out without the outbox" in line for line in output)
        assert not any("Traceback" in line for line in output), "".join(output)
    finally:
        if stream is not None:
            stream.close()
        proc.kill()
        proc.wait(5)
        results.close()


# --------------------------------------------------------------------------------------------
# (d) Two runtimes on one state directory
# --------------------------------------------------------------------------------------------

def test_a_second_runtime_on_one_state_dir_exits_naming_the_holder(mosquitto,
                                                                  basicmotions_bundle, tmp_path):
    """The second `edge-runtime run` on a config exits 2 with one line naming the first
    one's pid, and never connects (it would take the first one's client id). A SIGKILLed
    holder leaves no stale lock: the next start goes online."""
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                  lines=LINES, broker=PERSISTENT)
    results = Results(mosquitto.port)
    first = _spawn(config, tmp_path / "first.log")
    third = None
    try:
        online = results.wait_state("online")
        second = _run_cli(config, None)
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error: ")]
        assert second.returncode == 2 and len(errors) == 1, second.stderr
        assert f"is in use by another edge-runtime (pid {first.pid})" in errors[0]
        assert "device.state_dir" in errors[0]
        assert first.poll() is None and results.status[online:][-1]["state"] == "online"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        offline = results.wait_state("offline", online + 1)
        third = _spawn(config, tmp_path / "third.log")
        results.wait_state("online", offline + 1)
    finally:
        for proc in (first, third):
            if proc is not None:
                proc.kill()
                proc.wait(5)
        results.close()


def test_two_services_in_one_process_share_no_state(runtime_config):
    """The lock is taken before anything else opens the state: the second Service fails
    fast, and the first one's stop() frees the directory for the next."""
    config = runtime_config()
    first = Service(config)
    with pytest.raises(ConfigError, match=r"is in use by another edge-runtime \(pid \d+\)"):
        Service(config)
    first.stop(2)
    Service(config).stop(2)
