"""One runtime per state directory: an advisory lock on `<device.state_dir>/edge-runtime.lock`.

Two runtimes on one config would share the MQTT client id (each kicking the other off the
broker about once a second), the outbox and the adapter store. The lock is flock(2): the
kernel drops it when the holder dies however it dies (SIGKILL, power loss), so a stale lock
can never block a restart. The file holds the holder's pid, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from .errors import ConfigError

LOCK_FILE = "edge-runtime.lock"


class StateLock:
    """Held from `acquire` until `release`, or until the file object is closed or collected
    (a Service dropped without stop() does not keep its state locked forever)."""

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self.path = path
        self._file: IO[bytes] | None = file

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock, or ConfigError naming the pid that holds it."""
        path = Path(state_dir) / LOCK_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(path, "a+b", buffering=0)  # held open: the lock lives as long
        except OSError as exc:
            raise ConfigError(f"device.state_dir: {state_dir}: cannot create {path.name} "
                              f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read(32).decode("ascii", "replace").strip()
            file.close()
            raise ConfigError(f"device.state_dir: {state_dir} is in use by another "
                              f"edge-runtime (pid {holder if holder.isdigit() else 'unknown'}"
                              "); stop that one, or give this one its own device.state_dir "
                              "and device.id") from None
        try:
            file.truncate(0)
            file.write(f"{os.getpid()}\n".encode())
        except OSError as exc:  # full, or a file size limit: the state is unusable anyway
            file.close()
            raise ConfigError(f"device.state_dir: {state_dir}: cannot write {path.name} "
                              f"({exc.strerror or exc})") from None
        return cls(path, file)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
