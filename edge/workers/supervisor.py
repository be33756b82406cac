"""`edge-runtime run` with `[workers] count > 1`: one supervisor process and N workers.

The supervisor loads no model and touches no broker. It holds the state directory's lock,
starts each worker (edge/workers/role.py) as a spawned process, and restarts one that dies
(a crash, an OOM kill, SIGKILL) after a back-off: its persistent MQTT session and its outbox
bring back every window it had taken and not answered. A worker that fails before it is
ready (a bad bundle, a taken port) stops them all, with that worker's exit code: restarting
would fail the same way. SIGTERM / SIGINT stop the followers, then the leader (the leader
publishes the retained `offline` last), each draining as a one-process runtime does.

When the count went down since the last run (`<state_dir>/workers/count`), the workers past
the new count run once more as retiring workers: each answers what its broker session
still holds, then ends that session, so no window waits in a session nobody reconnects to.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from ..bundle import atomic_write
from ..config import Config
from ..state_lock import StateLock
from .role import WORKERS_DIR, WorkerRole

log = logging.getLogger(__name__)

COUNT_FILE = "count"
BACKOFF_S = (0.2, 1.0, 5.0, 30.0)  # restart delays after deaths in quick succession
STABLE_S = 60.0  # a worker that lived this long starts again at the first delay
STOP_S = 30.0  # a worker's drain before it is killed
RETIRE_IDLE_S = 2.0  # a retiring worker ends after this long without a window


@dataclass
class WorkerProcess:
    role: WorkerRole
    process: multiprocessing.process.BaseProcess | None = None
    ready: object = None  # a multiprocessing Event, set once serving
    started: float = 0.0
    deaths: int = 0  # in quick succession, for the back-off
    restart_at: float | None = None


def previous_count(state_dir: Path) -> int:
    try:
        return max(1, int((Path(state_dir) / WORKERS_DIR / COUNT_FILE).read_text()))
    except (OSError, ValueError):
        return 1


def needs_supervisor(cfg: Config) -> bool:
    """More than one worker now, or workers of an earlier run to retire."""
    return cfg.workers.count > 1 or previous_count(cfg.device.state_dir) > 1


class Supervisor:
    """Runs `count` workers of the config at `config_path` until SIGTERM or SIGINT."""

    def __init__(self, cfg: Config, config_path: Path, bundle: Path | None, *,
                 log_level: str = "info", log_format: str = "text") -> None:
        self.cfg, self.config_path, self.bundle = cfg, Path(config_path), bundle
        self.log_args = (log_level, log_format)
        self.count = cfg.workers.count
        self.state_dir = Path(cfg.device.state_dir)
        self.lock = StateLock.acquire(self.state_dir)  # no one-process runtime beside us
        self.ctx = multiprocessing.get_context("spawn")  # no threads or sockets inherited
        retiring = range(self.count, previous_count(self.state_dir))
        self.workers = [WorkerProcess(WorkerRole(i, self.count)) for i in range(self.count)]
        self.retirees = [WorkerProcess(WorkerRole(i, self.count, retiring=True))
                         for i in retiring]
        self.stopping = False
        if not self.retirees:
            self._record_count()

    def run(self) -> int:
        """Start every worker, watch them; the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        code = 1  # unless the watch ends normally
        try:
            log.info("starting %d worker(s) (shared subscription group edge-%s)%s", self.count,
                     self.cfg.device.id, f", retiring {len(self.retirees)}"
                     if self.retirees else "")
            for worker in self.retirees + self.workers:
                self._spawn(worker)
            code = self._watch()
        finally:
            stopped = self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.lock.release()
        return code or stopped

    def _on_signal(self, signum, frame) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _spawn(self, worker: WorkerProcess) -> None:
        worker.ready = self.ctx.Event()
        worker.process = self.ctx.Process(
            target=worker_main, name=f"edge-worker-{worker.role.index}",
            args=(str(self.config_path), self.count, None if self.bundle is None else
                  str(self.bundle), worker.role, self.log_args, worker.ready))
        worker.process.start()
        worker.started, worker.restart_at = time.monotonic(), None

    def _watch(self) -> int:
        """Until a signal: restart workers that die; 0, or the exit code of a worker that
        failed before it was ready."""
        while not self.stopping:
            live = [w.process.sentinel for w in self.workers + self.retirees
                    if w.process is not None and w.process.is_alive()]
            wait(live, timeout=0.2)
            for worker in list(self.workers + self.retirees):
                code = self._check(worker)
                if code:
                    return code
        return 0

    def _check(self, worker: WorkerProcess) -> int:
        proc = worker.process
        now = time.monotonic()
        if proc is None:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)
            return 0
        if proc.is_alive():
            return 0
        code, was_ready = proc.exitcode, worker.ready.is_set()
        worker.process = None
        if worker in self.retirees:
            return self._retired(worker, code)
        if not was_ready and code != 0:
            log.error("worker %d failed at start (exit %s); stopping", worker.role.index, code)
            return code if code and code > 0 else 1
        worker.deaths = 1 if now - worker.started > STABLE_S else worker.deaths + 1
        delay = BACKOFF_S[min(worker.deaths, len(BACKOFF_S)) - 1]
        log.warning("worker %d ended (%s); restarting in %.1f s", worker.role.index,
                    _describe_exit(code), delay)
        worker.restart_at = now + delay
        return 0

    def _retired(self, worker: WorkerProcess, code: int | None) -> int:
        self.retirees.remove(worker)
        if code == 0:
            log.info("worker %d retired: its broker session is answered and ended",
                     worker.role.index)
        else:
            log.warning("retiring worker %d ended (%s); it retires at the next start",
                        worker.role.index, _describe_exit(code))
        if not self.retirees and code == 0:
            self._record_count()
        return 0

    def _record_count(self) -> None:
        (self.state_dir / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_dir / WORKERS_DIR / COUNT_FILE, str(self.count).encode())

    def _stop_all(self) -> int:
        """SIGTERM the retirees and followers, then the leader; each gets STOP_S to drain."""
        code = 0
        order = self.retirees + self.workers[1:] + self.workers[:1]
        for group in (order[:-1], order[-1:]):
            procs = [w.process for w in group if w.process is not None and w.process.is_alive()]
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(STOP_S)
                if proc.is_alive():
                    log.error("%s did not stop in %.0f s; killed", proc.name, STOP_S)
                    proc.kill()
                    proc.join(5)
                if proc.exitcode not in (0, None):
                    code = code or 1
        return code


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def worker_main(config_path: str, count: int, bundle: str | None, role: WorkerRole,
                log_args: tuple[str, str], ready) -> None:
    """One worker process: load the config, serve with `role` until SIGTERM."""
    from ..cli_errors import error_lines
    from ..config import load_config
    from ..errors import EdgeError
    from ..heap import freeze_loaded
    from ..logs import setup_logging
    from ..service import Service
    from .role import with_workers

    setup_logging(*log_args, worker=role.index)
    stop = threading.Event()  # a signal while loading: start, then stop at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cfg = with_workers(load_config(config_path), count)
        service = Service(cfg, bundle_dir=bundle, role=role)
    except EdgeError as exc:  # the CLI's one line and exit code, from the worker
        print("\n".join(error_lines(f"worker {role.index}: {exc}")), file=sys.stderr)
        sys.exit(exc.exit_code)
    freeze_loaded()
    ready.set()
    if role.retiring:
        sys.exit(retire(service, stop))
    sys.exit(service.run_forever(stop))


def retire(service, stop: threading.Event) -> int:
    """Answer what the session holds until RETIRE_IDLE_S pass without a window, then end
    the session (a signal ends it early: the session stays for the next start)."""
    service.start(connect_timeout=None)
    last, quiet_since = -1, time.monotonic()
    while not stop.wait(0.2):
        received = service.counters.totals["received"]
        if received != last or not service.link.subscribed.is_set():
            last, quiet_since = received, time.monotonic()
        elif time.monotonic() - quiet_since >= RETIRE_IDLE_S and service.queue.empty():
            break
    service.stop(end_session=not stop.is_set())
    return 0
