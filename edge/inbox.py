"""The watch folder: adapter envelopes dropped in `adapters.watch_dir` are taken in.

Writers should write elsewhere (or to a dot-file) and rename into the folder; a file is
picked up once its size and modification time held still for one poll, so a slow copy is
not read half-written either. Names starting with '.' and ending in '.tmp' or '.part' are
ignored. After the check chain a file moves to `accepted/` or to `rejected/` with a
`<file>.reason` text beside it, so the folder shows at a glance what happened to each drop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".reason")
Submit = Callable[[bytes, str, Callable[[str | None], None]], None]
Report = Callable[[str, str], None]  # (file name, reason) of a refusal decided here


class FolderWatcher:
    """Polls `directory` every `interval` s; `submit(data, source, done)` hands a file's
    bytes to the control thread, which calls `done(reason or None)` when it has decided."""

    def __init__(self, directory: Path, submit: Submit, *, max_bytes: int,
                 interval: float = 0.5, report: Report | None = None) -> None:
        self.dir = Path(directory)
        self.submit = submit
        self.report = report
        self.max_bytes = max_bytes
        self.interval = interval
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at last poll
        self._busy: set[str] = set()  # submitted, not decided yet
        self._stuck: set[str] = set()  # decided but could not be moved: not taken again
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for sub in ("", "accepted", "rejected"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except OSError as exc:  # the folder vanished or went read-only: keep watching
                log.warning("watch folder %s: %s", self.dir, exc)

    def poll(self) -> None:
        """One look at the folder: submit every file that held still since the last one."""
        current = {}
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or not entry.is_file(
                    follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
            current[name] = (stat.st_size, stat.st_mtime_ns)
        stable = [n for n, sig in current.items() if self._seen.get(n) == sig]
        self._seen = current
        self._stuck &= set(current)  # a stuck file that was removed may come back
        for name in stable:
            with self._lock:
                if name in self._busy or name in self._stuck:
                    continue
                self._busy.add(name)
            self._take(name, current[name][0])

    def _take(self, name: str, size: int) -> None:
        path = self.dir / name
        if size > self.max_bytes:
            return self._refused_here(name, f"file is {size} bytes, larger than the limit of "
                                      f"{self.max_bytes} bytes")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return self._refused_here(name, f"cannot read it ({exc.strerror})")
        self.submit(data, f"folder:{name}", lambda reason: self._decided(name, reason))

    def _refused_here(self, name: str, reason: str) -> None:
        if self.report is not None:
            self.report(name, reason)
        self._decided(name, reason)

    def _decided(self, name: str, reason: str | None) -> None:
        """Move the file out of the way; a reason file says why it was refused."""
        where = "rejected" if reason else "accepted"
        # a stamp keeps repeated drops apart; the name is cut to fit the 255-byte limit
        short = name.encode("utf-8", "surrogateescape")[-200:].decode("utf-8", "surrogateescape")
        target = self.dir / where / f"{time.strftime('%Y%m%dT%H%M%S')}-{short}"
        try:
            os.replace(self.dir / name, target)
            if reason:  # reasons quote sender-chosen text: never fail on its encoding
                target.with_name(target.name + ".reason").write_bytes(
                    (reason + "\n").encode("utf-8", "backslashreplace"))
        except OSError as exc:
            log.warning("watch folder: cannot move %s to %s/ (%s); leaving it", name, where,
                        exc)
            with self._lock:
                self._stuck.add(name)
        finally:
            with self._lock:
                self._busy.discard(name)
                self._seen.pop(name, None)
