"""`edge-runtime run --workers N` against a real Mosquitto: worker processes share the
sensor topics, follow the leader's adapter changes before they are answered, survive a
SIGKILL of one of them without losing a window, and retire when the count goes down.

Results do not say which worker computed them; each worker stores the key `<line>/<id>` of
every window it computes in its own outbox's dedupe window (edge/dedupe.py), read after the
runtime stopped. No test asserts timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adapter_versions import derive_version, envelope
from reference_bundle import sample_windows
from test_faults import Stream
from test_runtime import Collector, Publisher
from test_shared_subscription import results_by_id

from edge.config import check_config, load_config
from edge.outbox import Outbox
from edge.workers.role import WorkerRole, sensor_filters, worker_config, worker_dir
from edge.workers.route_sync import RouteFollower, RouteSignal
from export.demo.local_broker import write_runtime_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "gw-w"
LINES = {"line-a": {"adapter": "line-a"}, "line-b": {}}
PERSISTENT = {"clean_start": False, "session_expiry": 300}
RESULTS = ("factory/+/inference", "factory/+/errors", f"factory/{DEVICE}/#")
WAIT_S = 60.0  # generous: a slow CI box must not fail a test; nothing here measures time
# The runs of `edge-runtime run --workers` go in make test's gateway run (the deployment's
# venv); in the workstation run they would only repeat it, a minute of the suite's budget.
IN_GATEWAY_RUN = pytest.mark.skipif(
    os.environ.get("EDGE_TESTS") != "gateway" and not os.environ.get("EDGE_WORKER_RUNS"),
    reason="edge-runtime --workers runs are in the gateway run (EDGE_WORKER_RUNS=1 here)")


def workers_config(tmp_path: Path, port: int, bundle: Path, count: int, **sections) -> Path:
    sections.setdefault("adapters", {"require_signed": False})
    return write_runtime_config(tmp_path, port=port, bundle=bundle, lines=LINES,
                                device_id=DEVICE, broker=PERSISTENT,
                                workers={"count": count}, **sections)


def spawn(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "a") as out:  # a file, not a pipe: a full pipe would block the service
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                 str(config), "--log-level", "info", *extra], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0, log.read_text()


def wait_online(collector: Collector, proc: subprocess.Popen, log: Path, after: int = 0) -> int:
    def seen(c: Collector) -> bool:
        return proc.poll() is not None or any(
            s["state"] == "online" for s in c.status()[after:])
    collector.wait(seen)
    states = [s["state"] for s in collector.status()[after:]]
    assert "online" in states, log.read_text()
    return len(collector.status())


def wait_workers(collector: Collector, state_dir: Path, count: int, log: Path,
                 after: int = 0) -> dict[int, int]:
    """Worker index -> pid, once a stats message of every worker (QoS 0: sent only while
    connected, and a worker subscribes as soon as it connects) came after message `after`."""
    def seen(c: Collector) -> set:
        with c._cond:
            stats = [json.loads(p) for t, p, _ in c.messages[after:] if t.endswith("/stats")]
        return {d.get("worker") for d in stats}
    assert collector.wait(lambda c: seen(c) >= set(range(count))), log.read_text()
    return {i: int((worker_dir(state_dir, i) / "edge-runtime.lock").read_text())
            for i in range(count)}


def computed(config: Path, count: int) -> dict[int, set[str]]:
    """Worker index -> window ids it computed (read from its outbox, runtime stopped)."""
    cfg = load_config(config)
    out = {}
    for i in range(count):
        box = Outbox.open(cfg, None if i == 0 else worker_dir(cfg.device.state_dir, i))
        try:
            out[i] = {key.partition("/")[2] for key in box.recent_keys()}
        finally:
            box.close()
    return out


# --------------------------------------------------------------------------------------------
# Roles: filters, client ids, outbox directories
# --------------------------------------------------------------------------------------------

def test_roles_share_the_sensor_filters(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[device]\nid = "gw-1"\n[workers]\ncount = 3\n[metrics]\nport = 9900\n')
    cfg = load_config(path)
    plain = cfg.topics.inputs
    shared = [f"$share/edge-gw-1/{f}" for f in plain]
    assert sensor_filters(cfg, None) == (plain, shared)  # one process: an earlier share goes
    assert sensor_filters(cfg, WorkerRole(0, 3)) == (shared, plain)
    assert sensor_filters(cfg, WorkerRole(2, 3, retiring=True)) == ([], sorted(plain + shared))
    leader, second = worker_config(cfg, WorkerRole(0, 3)), worker_config(cfg, WorkerRole(2, 3))
    assert leader.broker.client_id == "edge-gw-1" and leader.metrics.port == 9900
    assert second.broker.client_id == "edge-gw-1-w2" and second.metrics.port == 9902
    assert cfg.broker.client_id == "edge-gw-1" and second.source == cfg.source


@pytest.mark.parametrize("text, problem", [
    ("[workers]\ncount = 0\n", "workers.count: 0: Input should be greater than or equal to 1"),
    ("[workers]\ncount = 65\n", "workers.count: 65: Input should be less than or equal to 64"),
    ("[workers]\ncount = 2\n[sparkplug]\nenabled = true\n",
     "sparkplug.enabled: True: a Sparkplug edge node is one session with one seq counter"),
])
def test_worker_count_problems(tmp_path, text, problem):
    path = tmp_path / "gw.toml"
    path.write_text('[device]\nid = "gw-1"\n' + text)
    lines = check_config(path)
    assert len(lines) == 1 and problem in lines[0], lines


@pytest.mark.parametrize("flag, problem", [
    ("0", "error: --workers 0: must be 1..64"),
    ("2", "error: --workers 2: a Sparkplug edge node is one session"),
])
def test_workers_flag_problems(tmp_path, flag, problem):
    path = tmp_path / "gw.toml"
    path.write_text('[device]\nid = "gw-1"\n[sparkplug]\nenabled = true\n')
    run = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path),
                          "--workers", flag], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        run.stderr.strip().splitlines()[0]], run.stderr
    assert run.stderr.startswith(problem), run.stderr


# --------------------------------------------------------------------------------------------
# Route sync: the leader waits for the followers; a dead follower is not waited for
# --------------------------------------------------------------------------------------------

def test_the_leader_waits_until_each_follower_serves_the_change(tmp_path):
    reloads = []
    followers = [RouteFollower(tmp_path, i, lambda i=i: reloads.append(i)) for i in (1, 2)]
    for follower in followers:
        follower.start()
    try:
        late = RouteSignal(tmp_path, range(1, 3)).changed(timeout=WAIT_S)
        assert late == [] and sorted(reloads) == [1, 2]
        assert [f.applied for f in followers] == [1, 1]
        late = RouteSignal(tmp_path, range(1, 3)).changed(timeout=WAIT_S)
        assert late == [] and sorted(reloads) == [1, 1, 2, 2]
    finally:
        for follower in followers:
            follower.stop()


def test_a_follower_that_cannot_reload_is_named_and_a_dead_one_skipped(tmp_path):
    def broken() -> None:
        raise OSError("adapter file vanished")
    stuck = RouteFollower(tmp_path, 1, broken)
    stuck.start()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    applied = worker_dir(tmp_path, 2) / "routes.applied"
    applied.parent.mkdir(parents=True)
    applied.write_text(f"0 {dead.stdout.strip()}")  # a worker that died without a word
    try:
        assert RouteSignal(tmp_path, range(1, 3)).changed(timeout=0.5) == [1]
    finally:
        stuck.stop()


# --------------------------------------------------------------------------------------------
# Two workers: shared windows, one answer each, adapter changes seen by both
# --------------------------------------------------------------------------------------------

@IN_GATEWAY_RUN
def test_two_workers_share_windows_and_follow_an_upload(mosquitto, basicmotions_bundle,
                                                         tmp_path):
    config = workers_config(tmp_path, mosquitto.port, basicmotions_bundle, 2)
    state, log = load_config(config).device.state_dir, tmp_path / "run.log"
    x, _, _ = sample_windows(8)
    collector = Collector(mosquitto.port, RESULTS)
    proc = spawn(config, log)
    pub = Publisher(mosquitto.port)
    try:
        wait_online(collector, proc, log)
        wait_workers(collector, state, 2, log)
        before = [f"a{i}" for i in range(120)]
        for i, msg_id in enumerate(before):
            pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", msg_id, x[i % len(x)])
        assert collector.wait(lambda c: set(results_by_id(c)) >= set(before)), log.read_text()
        entry, path = derive_version(basicmotions_bundle, "line-a", 2, tmp_path / "versions")
        pub.raw(f"factory/{DEVICE}/adapters/put/line-a", envelope(entry, path))
        assert collector.wait(lambda c: any(
            d["lines"]["line-a"]["version"] == 2 for d in c.docs("/adapters/state")))
        after = [f"b{i}" for i in range(120)]  # published after the answer: all on v2
        for i, msg_id in enumerate(after):
            pub.json("factory/line-a/sensors/s", msg_id, x[i % len(x)])
        assert collector.wait(lambda c: set(results_by_id(c)) >= set(after)), log.read_text()
        assert collector.wait(lambda c: {d.get("worker") for d in c.docs("/stats")} >= {0, 1})
        pub.flush()
        stop(proc, log)
    finally:
        pub.close()
        proc.kill()
        collector.close()
    results = results_by_id(collector)
    assert {len(copies) for copies in results.values()} == {1}  # exactly one answer each
    assert collector.docs("/errors") == []
    versions = {json.loads(results[i][0])["adapter_version"] for i in after}
    assert versions == {2}, versions
    by_worker = computed(config, 2)
    assert by_worker[0] & by_worker[1] == set()
    for phase in (before, after):  # each worker computed part of each phase
        assert all(set(phase) & ids for ids in by_worker.values()), by_worker
    statuses = collector.status()
    assert [s["state"] for s in statuses] == ["online", "offline"], statuses  # the leader's


# --------------------------------------------------------------------------------------------
# SIGKILL of one worker: restarted, nothing lost
# --------------------------------------------------------------------------------------------

@IN_GATEWAY_RUN
@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)],
                         ids=["follower", "leader"])
def test_a_killed_worker_is_restarted_and_nothing_is_lost(mosquitto, basicmotions_bundle,
                                                           tmp_path, victim):
    """240 windows at 60/s; one worker is SIGKILLed once a third are answered. The
    supervisor restarts it; every window is answered, and any window answered twice was
    the killed worker's (its result went out, the PUBACK did not come back: the outbox sends
    the same bytes again)."""
    config = workers_config(tmp_path, mosquitto.port, basicmotions_bundle, 2)
    state, log = load_config(config).device.state_dir, tmp_path / "run.log"
    collector = Collector(mosquitto.port, RESULTS)
    proc = spawn(config, log)
    stream = None
    try:
        wait_online(collector, proc, log)
        pids = wait_workers(collector, state, 2, log)
        ids = [f"w{i}" for i in range(240)]
        stream = Stream(mosquitto.port, ids, rate=60).start()
        assert collector.wait(lambda c: len(results_by_id(c)) >= len(ids) // 3)
        os.kill(pids[victim], signal.SIGKILL)
        with collector._cond:
            mark = len(collector.messages)
        assert wait_workers(collector, state, 2, log, after=mark)[victim] != pids[victim]
        assert stream.wait_all_acked(), "the broker never acknowledged every window"
        collector.wait(lambda c: set(results_by_id(c)) >= set(ids))
        stop(proc, log)
    finally:
        if stream is not None:
            stream.close()
        proc.kill()
        collector.close()
    results = results_by_id(collector)
    lost = sorted(set(ids) - set(results))
    duplicated = {i for i, copies in results.items() if len(copies) > 1}
    by_worker = computed(config, 2)
    print(f"worker {victim} killed: sent {len(ids)}, lost {len(lost)}, answered twice "
          f"{len(duplicated)}; computed per worker {[len(s) for s in by_worker.values()]}")
    assert not lost, (lost, log.read_text()[-3000:])
    assert duplicated <= by_worker[victim], sorted(duplicated - by_worker[victim])
    assert all(len(set(copies)) == 1 for copies in results.values())  # resent, not recomputed
    assert collector.docs("/errors") == []
    assert f"worker {victim} ended (killed by SIGKILL)" in log.read_text()


# --------------------------------------------------------------------------------------------
# Fewer workers: the sessions of the others are answered, then ended
# --------------------------------------------------------------------------------------------

@IN_GATEWAY_RUN
def test_fewer_workers_retire_the_sessions_of_the_others(mosquitto, basicmotions_bundle,
                                                         tmp_path):
    """Two workers run and stop. 60 windows arrive while nothing runs: the broker queues
    them in both workers' sessions. One worker starts (plain `run`: workers.count = 1):
    worker 1 runs once more to answer its share and end its session. Every window is
    answered once; the next plain runtime takes windows again, none of them twice."""
    config = workers_config(tmp_path, mosquitto.port, basicmotions_bundle, 2)
    state, log = load_config(config).device.state_dir, tmp_path / "run.log"
    x, _, _ = sample_windows(4)
    collector = Collector(mosquitto.port, RESULTS)
    pub = Publisher(mosquitto.port)
    try:
        proc = spawn(config, log)
        wait_online(collector, proc, log)
        wait_workers(collector, state, 2, log)
        stop(proc, log)
        queued = [f"q{i}" for i in range(60)]
        for i, msg_id in enumerate(queued):
            pub.json("factory/line-b/sensors/s", msg_id, x[i % len(x)])
        pub.flush()
        proc = spawn(config, log, "--workers", "1")
        assert collector.wait(lambda c: set(results_by_id(c)) >= set(queued)), log.read_text()
        deadline = time.monotonic() + WAIT_S
        count_file = state / "workers" / "count"
        while count_file.read_text() != "1":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        stop(proc, log)
        assert "worker 1 retired" in log.read_text()
        proc = spawn(config, log, "--workers", "1")  # now one plain process
        marker = len(collector.status())
        wait_online(collector, proc, log, after=marker)
        later = [f"r{i}" for i in range(20)]
        for i, msg_id in enumerate(later):
            pub.json("factory/line-a/sensors/s", msg_id, x[i % len(x)])
        assert collector.wait(lambda c: set(results_by_id(c)) >= set(later))
        time.sleep(0.5)  # a copy through a stale subscription would come right behind
        stop(proc, log)
    finally:
        pub.close()
        collector.close()
    results = results_by_id(collector)
    assert {len(copies) for copies in results.values()} == {1}
    assert collector.docs("/errors") == []
