"""The leader's routing changes, followed by every other worker before they are answered.

The leader's control plane changes routing (an upload, activate, rollback, revoke, prune),
saves the line assignments and adapter files in device.state_dir as it always has, then
calls `RouteSignal.changed()` before it publishes the adapter state, the command's answer:

    <state_dir>/workers/routes.gen          "<generation>"                 (the leader)
    <state_dir>/workers/<i>/routes.applied  "<generation> <pid>"           (worker i)

Each follower's `RouteFollower` thread looks at routes.gen every POLL_S; on a newer
generation it re-reads the assignments and adapters, installs the new table between two
batches (as the leader's control thread does) and writes routes.applied. The leader waits
for every live follower (its pid alive) up to SYNC_S, so a window published after the
answer is served by the new adapter whichever worker takes it. A follower that is down
builds its table from the same files when the supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..bundle import atomic_write
from .role import WORKERS_DIR, worker_dir

log = logging.getLogger(__name__)

GEN_FILE = "routes.gen"
APPLIED_FILE = "routes.applied"
POLL_S = 0.01  # a follower's look at routes.gen: one stat(2), 100 a second
SYNC_S = 5.0  # the leader's longest wait for the followers before answering


def _read_ints(path: Path) -> list[int]:
    try:
        return [int(part) for part in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def current_generation(state_dir: Path) -> int:
    return (_read_ints(Path(state_dir) / WORKERS_DIR / GEN_FILE) or [0])[0]


class RouteSignal:
    """The leader's side: bump the generation, wait for the followers to serve it."""

    def __init__(self, state_dir: Path, followers: range) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / WORKERS_DIR / GEN_FILE
        self.followers = followers  # worker indexes 1..count-1
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def changed(self, timeout: float = SYNC_S) -> list[int]:
        """Publish a new generation; the followers that did not confirm it in `timeout`."""
        generation = current_generation(self.state_dir) + 1
        atomic_write(self.path, str(generation).encode())
        deadline = time.monotonic() + timeout
        waiting = list(self.followers)
        while waiting:
            waiting = [i for i in waiting if self._behind(i, generation)]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(POLL_S / 2)
        if waiting:
            log.warning("routing change %d: worker(s) %s did not confirm within %.0f s; they "
                        "take it at their next look or restart", generation, waiting, timeout)
        return waiting

    def _behind(self, index: int, generation: int) -> bool:
        applied = _read_ints(worker_dir(self.state_dir, index) / APPLIED_FILE)
        if len(applied) != 2:
            return False  # never started: it reads the files when it does
        return applied[0] < generation and _alive(applied[1])


class RouteFollower:
    """A follower's side: a thread that calls `reload()` on each new generation."""

    def __init__(self, state_dir: Path, index: int, reload: Callable[[], None]) -> None:
        self.gen_path = Path(state_dir) / WORKERS_DIR / GEN_FILE
        self.applied_path = worker_dir(state_dir, index) / APPLIED_FILE
        self.reload = reload
        self.applied = current_generation(state_dir)  # read before the table is built
        self._seen: tuple | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        """Confirm the generation the table was built from, then watch for newer ones."""
        self.applied_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.applied_path, f"{self.applied} {os.getpid()}".encode())
        self._thread = threading.Thread(target=self._run, name="edge-routes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # a bug must not end following: the next look tries again
                log.exception("following the leader's routing failed; retrying")

    def poll(self) -> bool:
        """One look; True when a new generation was installed."""
        try:
            st = self.gen_path.stat()
        except FileNotFoundError:
            return False
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return False
        generation = current_generation(self.gen_path.parent.parent)
        if generation <= self.applied:
            self._seen = seen
            return False
        try:
            self.reload()
        except Exception as exc:  # e.g. a file pruned between two reads: look again
            if not self._failing:
                log.warning("routing change %d not applied yet: %s", generation, exc)
            self._failing = True
            return False
        self._failing = False
        self._seen, self.applied = seen, generation
        atomic_write(self.applied_path, f"{generation} {os.getpid()}".encode())
        return True
