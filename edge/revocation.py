"""Revoked adapter versions: withdrawn by a signed `revoke` command, never held again.

    revoked = Revocations.load(state_dir)          # <state_dir>/revoked.json
    revoked.add("press-3", 8, reason="drifts on lot 42", signer="1f2e...")
    ("press-3", 8) in revoked                      # a replay of v8 stays refused
    revoked.newest("press-3")                      # 8: new uploads must be newer than this

A revoked version counts for the version rules like a held one (a newer upload must exceed
it), so a revoked v8 can never come back as v8, and older versions cannot be replayed to
slip under it. The file is written atomically; an unreadable one is an error at start, since
forgetting a revocation would let the bad version back in.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from .bundle import atomic_write
from .errors import ConfigError, StorageError

REVOKED_FILE = "revoked.json"
MAX_REASON = 500


class Revocations:
    """(name, version) -> {"reason", "signer", "ts", "sha256"}, persisted on every change."""

    def __init__(self, path: Path, entries: dict[tuple[str, int], dict]) -> None:
        self.path = path
        self._entries = entries
        self._lock = threading.Lock()

    @classmethod
    def load(cls, state_dir: Path) -> Revocations:
        path = Path(state_dir) / REVOKED_FILE
        if not path.is_file():
            return cls(path, {})
        try:
            doc = json.loads(path.read_text())
            entries = {(str(e["name"]), int(e["version"])): {
                k: e.get(k) for k in ("reason", "signer", "ts", "sha256")}
                for e in doc["revoked"]}
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ConfigError(f"device.state_dir: {path} is unreadable ({exc}); restore it "
                              "or remove it knowingly: it lists the revoked adapters") from None
        return cls(path, entries)

    def __contains__(self, key: tuple[str, int]) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: tuple[str, int]) -> dict | None:
        with self._lock:
            return self._entries.get(key)

    def newest(self, name: str) -> int:
        with self._lock:
            return max((v for n, v in self._entries if n == name), default=0)

    def add(self, name: str, version: int, *, reason: str, signer: str,
            sha256: str | None) -> None:
        """Record a revocation and save it before anything else changes."""
        with self._lock:
            entries = {**self._entries, (name, version): {
                "reason": reason[:MAX_REASON], "signer": signer,
                "ts": round(time.time(), 3), "sha256": sha256}}
            doc = {"revoked": [{"name": n, "version": v, **meta}
                               for (n, v), meta in sorted(entries.items())]}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, json.dumps(doc, indent=1).encode())
            except OSError as exc:
                raise StorageError(f"device.state_dir: cannot save {self.path} "
                                   f"({exc.strerror or exc})") from None
            self._entries = entries

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"name": n, "version": v, **meta}
                    for (n, v), meta in sorted(self._entries.items())]
