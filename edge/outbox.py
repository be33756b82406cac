"""The outbox: results and errors on disk until the broker has acknowledged them (PUBACK).

    box = Outbox.open(cfg)                          # <device.state_dir>/outbox.sqlite3
    box.commit([Outgoing(topic, payload)], keys=["line-a/w1"])   # one transaction
    rows = box.after(seq=0, limit=20)               # oldest first, read from the file
    rows = box.take(cursor=0, limit=20)             # the sender's read: [(seq, Outgoing)]
    box.remove([seq for seq, _ in rows])            # acknowledged by the broker
    box.close()

One SQLite file in WAL mode holds two tables: `outbox`, the messages waiting for the broker,
in order, and `seen`, the dedupe window (recent sensor message keys, edge/dedupe.py). A
batch's answers and its keys go in one transaction: after a crash both are there or neither.

Durability. WAL mode survives a crash of the process at any point (SIGKILL included); what
`synchronous` decides is power loss. An append is what lets the service acknowledge a sensor
message, so with `outbox.synchronous = "full"` (the default) each append is fsynced: an
acknowledged message's answer is on disk even if the power fails right after. Removals
never fsync (NORMAL): a removal undone by a power cut only means a result is sent twice,
which QoS 1 allows, and the next append's fsync makes earlier removals durable anyway.
`"normal"` skips the append fsync too: faster on slow flash, and a power cut may then lose
the answers of the last batches, whose sensor messages were already acknowledged.

The handoff. A commit also keeps its messages in memory (up to HANDOFF_MAX), so the sender
(`take`) gets what it must publish without reading back rows it was just handed; it reads
the file only for rows no memory holds: those left by an earlier run, and those of commits
past the cap (a broker away for long) or after drop_oldest deleted unsent rows.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .config import Config, OutboxSettings
from .errors import ConfigError, StorageError

log = logging.getLogger(__name__)

FILE_NAME = "outbox.sqlite3"
MAX_STAMPS = 4096  # (last seq, time) of recent commits kept for the oldest message's age
# Committed messages kept in memory for the sender (~0.5 KB each for results): past this many
# waiting, the sender reads the file instead (a broker away; the file holds them all anyway).
HANDOFF_MAX = 4096
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the sender's cursor relies on it
    topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, props TEXT);
CREATE TABLE IF NOT EXISTS seen (
    n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE);
"""
_DELETE_SPAN = "DELETE FROM outbox WHERE seq BETWEEN ? AND ?"
_INSERT_OUTBOX = "INSERT INTO outbox (topic, payload, qos, props) VALUES "
_INSERT_SEEN = "INSERT OR REPLACE INTO seen (key) VALUES "
_CHUNKS = (32, 16, 8, 4, 2, 1)  # rows per multi-row INSERT: 45 rows -> 32 + 8 + 4 + 1


@functools.lru_cache(maxsize=16)
def _values_sql(head: str, columns: int, rows: int) -> str:
    """'INSERT ... VALUES (?,?),(?,?)' for `rows` rows of `columns` values."""
    one = "(" + ",".join("?" * columns) + ")"
    return head + ",".join([one] * rows)


class Outgoing(NamedTuple):
    """One publish: `props` is the JSON of its PUBLISH properties (edge/delivery.py). A named
    tuple: one is made per answer, at a third of a frozen dataclass's cost."""

    topic: str
    payload: bytes
    qos: int = 1
    props: str | None = None


class Stored(NamedTuple):
    """A message read back from the outbox; `seq` orders them, oldest first."""

    topic: str
    payload: bytes
    qos: int = 1
    props: str | None = None
    seq: int = 0


Row = tuple[int, Outgoing]  # (seq, message): what the sender takes


class Outbox:
    """The SQLite file, shared by the worker (appends), paho's thread (error reports) and the
    sender (reads, removals): two connections behind one lock, one for appends and reads at
    outbox.synchronous, one for removals at NORMAL (no PRAGMA switch per transaction)."""

    def __init__(self, path: Path, settings: OutboxSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._lock = threading.Lock()
        self._db = self._connect()
        self._rm: sqlite3.Connection | None = None  # removals (see the module docstring)
        try:
            if self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("the file system does not support WAL")
            self._db.executescript(_SCHEMA)
            self._write_probe()
            full = settings.synchronous == "full"
            self._db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._rm = self._connect()
            self._rm.execute("PRAGMA synchronous=NORMAL")  # a lost removal = a resend
            # Range DELETEs at the table's tail: 256 KiB of page cache, not SQLite's 2 MiB
            # (the main connection keeps its own; both are resident for the process's life).
            self._rm.execute("PRAGMA cache_size=-256")
            self._count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            # When each commit's messages went in: [(last seq of the commit, time.time())],
            # oldest first. Messages from before a restart count from the open.
            self._stamps: list[tuple[int, float]] = []
            if self._count:
                self._stamps.append((self._last_seq(), time.time()))
            # The handoff: committed (seq, message) not yet taken, oldest first; it holds
            # every message with seq >= _mem_from (None: no such seq known, read the file).
            self._mem: deque[Row] = deque()
            self._mem_from: int | None = None if self._count else self._last_seq() + 1
        except sqlite3.Error:
            self._db.close()
            if self._rm is not None:
                self._rm.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)

    @classmethod
    def open(cls, cfg: Config, directory: Path | None = None) -> Outbox:
        """The outbox in `device.state_dir`, or `directory` (a worker's own, edge/workers/),
        created when missing. A directory that cannot hold it (read-only, full, not a
        directory) is a one-line ConfigError naming the key."""
        state = cfg.device.state_dir if directory is None else directory
        try:
            state.mkdir(parents=True, exist_ok=True)
            box = cls(state / FILE_NAME, cfg.outbox)
        except (OSError, sqlite3.Error) as exc:
            where = f"{cfg.source}: " if cfg.source else ""
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"{where}device.state_dir: {str(state)!r}: cannot keep the "
                              f"outbox there ({reason}); it must be a writable directory "
                              "with free space") from None
        if box.count:
            log.info("outbox %s: %d messages from before the restart will be sent first",
                     box.path, box.count)
        return box

    def _write_probe(self) -> None:
        """A real write at open: a read-only or full disk fails here, not at the first result
        (SQLite opens a read-only file without complaint)."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO seen (key) VALUES ('')")
        self._db.execute("DELETE FROM seen WHERE key = ''")
        self._db.execute("COMMIT")

    @property
    def count(self) -> int:
        """Messages waiting for the broker."""
        return self._count

    def full(self) -> bool:
        return self._count >= self.settings.max_messages

    # -- writes -----------------------------------------------------------------------------
    def commit(self, messages: Sequence[Outgoing], keys: Sequence[str] = ()
               ) -> tuple[int | None, int]:
        """Append `messages` in order and remember the dedupe `keys`, in one transaction.
        Returns (seq of the last message appended or None, how many old messages drop_oldest
        deleted to stay within max_messages). Raises StorageError when the disk refuses
        (nothing is stored then)."""
        if not messages and not keys:
            return None, 0
        last = None
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._insert(_INSERT_OUTBOX, messages)  # Outgoing: (topic, payload, qos, props)
                if messages:
                    last = self._db.execute("SELECT seq FROM sqlite_sequence "
                                            "WHERE name = 'outbox'").fetchone()[0]
                dropped = self._trim_outbox(self._count + len(messages))
                if keys:
                    self._remember(keys)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(self._db)
                raise StorageError(f"outbox {self.path}: cannot append: {exc}") from None
            self._count += len(messages) - dropped
            if last is not None:
                self._stamp(last)
                self._hand_off(last, messages, dropped)
        return last, dropped

    def _hand_off(self, last: int, messages: Sequence[Outgoing], dropped: int) -> None:
        """Keep a commit's messages (seqs last-n+1 .. last: one transaction's AUTOINCREMENT
        rows are consecutive) for `take`. Under the lock, so commits land in seq order."""
        if dropped or len(self._mem) + len(messages) > HANDOFF_MAX:
            self._forget()  # unsent rows were deleted, or too many wait: the file decides
            return
        first = last - len(messages) + 1
        if self._mem_from is None:
            self._mem_from = first  # complete from this commit on
        self._mem.extend(zip(range(first, last + 1), messages, strict=True))

    def _forget(self) -> None:
        self._mem.clear()
        self._mem_from = None

    def _stamp(self, last: int) -> None:
        self._stamps.append((last, time.time()))
        if len(self._stamps) > MAX_STAMPS:  # thin out, keeping the first and last: a dropped
            del self._stamps[1:-1:2]  # stamp's messages take the next one's (later) time

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return 0 if row is None else row[0]

    def _trim_outbox(self, count: int) -> int:
        excess = count - self.settings.max_messages
        if excess <= 0 or self.settings.when_full != "drop_oldest":
            return 0
        return self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                                "ORDER BY seq LIMIT ?)", (excess,)).rowcount

    def _remember(self, keys: Sequence[str]) -> None:
        # REPLACE moves a key that is back after leaving the window to the newest end.
        self._insert(_INSERT_SEEN, [(k,) for k in keys])
        self._db.execute("DELETE FROM seen WHERE n <= (SELECT max(n) FROM seen) - ?",
                         (self.settings.dedupe_window,))

    def _insert(self, head: str, rows: Sequence[tuple]) -> None:
        """`head` + VALUES for `rows`, in order, as multi-row statements of _CHUNKS rows: one
        statement step per chunk instead of one per row (~40% less CPU a row than
        executemany), from a handful of statement texts that stay in the statement cache."""
        done, n = 0, len(rows)
        for size in _CHUNKS:
            while n - done >= size:
                self._db.execute(_values_sql(head, len(rows[done]), size),
                                 [v for row in rows[done:done + size] for v in row])
                done += size

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged messages (one transaction). Raises StorageError."""
        spans = seq_ranges(seqs)  # [(first, last)]: PUBACKs come in order, so mostly one
        if not spans:
            return
        with self._lock:
            db = self._rm  # synchronous NORMAL: see the module docstring
            try:
                if len(spans) == 1:  # one statement is its own transaction
                    removed = db.execute(_DELETE_SPAN, spans[0]).rowcount
                else:
                    db.execute("BEGIN IMMEDIATE")
                    removed = db.executemany(_DELETE_SPAN, spans).rowcount
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise StorageError(f"outbox {self.path}: cannot remove: {exc}") from None
            self._count -= removed
            if self._mem_from is not None and spans[-1][1] >= self._mem_from:
                self._forget()  # rows removed before the sender took them (not the sender)

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (a full disk does that itself)

    # -- reads ------------------------------------------------------------------------------
    def take(self, cursor: int, limit: int) -> list[Row]:
        """The sender's read: up to `limit` (seq, message) with seq above `cursor`, oldest
        first; from memory when it holds all of them, else from the file. `cursor` only grows
        between calls (what is at or below it is dropped from memory). Raises StorageError."""
        with self._lock:
            mem = self._mem
            while mem and mem[0][0] <= cursor:
                mem.popleft()  # taken from the file meanwhile (after a restart, an overflow)
            if self._mem_from is not None and cursor + 1 >= self._mem_from:
                rows = [mem.popleft() for _ in range(min(limit, len(mem)))]
            else:  # rows no memory holds come first
                rows = self._read(cursor, limit)
                if len(rows) == limit:
                    return rows
                # The file holds nothing after these (commits take this lock too): any
                # later message is handed off, so memory is complete from here on.
            self._mem_from = (rows[-1][0] if rows else cursor) + 1
            return rows

    def _read(self, cursor: int, limit: int) -> list[Row]:
        return [(s, Outgoing(t, p, q, pr)) for s, t, p, q, pr in self._select(cursor, limit)]

    def _select(self, cursor: int, limit: int) -> list[tuple]:
        """(seq, topic, payload, qos, props) of up to `limit` rows past `cursor` in the file."""
        try:
            return self._db.execute(
                "SELECT seq, topic, payload, qos, props FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (cursor, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read: {exc}") from None

    def after(self, seq: int, limit: int) -> list[Stored]:
        """Up to `limit` messages with a sequence number above `seq`, oldest first, as the
        file holds them (the sender takes them with `take`)."""
        with self._lock:
            rows = self._select(seq, limit)
        return [Stored(topic=t, payload=p, qos=q, props=pr, seq=s) for s, t, p, q, pr in rows]

    def oldest(self) -> int | None:
        """The sequence number of the oldest waiting message; None when there is none, or
        when the file cannot be read (callers only wait on it: they stop waiting)."""
        with self._lock:
            try:
                return self._db.execute("SELECT min(seq) FROM outbox").fetchone()[0]
            except sqlite3.Error as exc:
                log.warning("outbox %s: cannot read: %s", self.path, exc)
                return None

    def oldest_age(self) -> float | None:
        """Seconds since the oldest waiting message was stored (since the open for those from
        before a restart); None when none waits or the file cannot be read. One indexed
        query: cheap enough for every scrape."""
        oldest = self.oldest()
        with self._lock:
            if oldest is None or not self._stamps:
                return None
            at = bisect_left(self._stamps, (oldest, float("-inf")))
            del self._stamps[:at]  # commits whose messages have all gone
            if not self._stamps:
                return None
            return max(time.time() - self._stamps[0][1], 0.0)

    def file_bytes(self) -> int:
        """The outbox file and its write-ahead log, in bytes (0 for a part that is missing)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    def recent_keys(self) -> list[str]:
        """The dedupe window as stored, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT key FROM seen ORDER BY n DESC LIMIT ?",
                                    (self.settings.dedupe_window,)).fetchall()
        return [k for (k,) in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            for db in (self._rm, self._db):
                try:
                    db.close()
                except sqlite3.Error as exc:
                    log.warning("closing the outbox %s: %s", self.path, exc)


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sequence numbers -> [(first, last)] runs of consecutive ones, ascending:
    [7, 3, 4, 5, 9] -> [(3, 5), (7, 7), (9, 9)]."""
    spans: list[tuple[int, int]] = []
    first = last = None
    for seq in sorted(set(seqs)):
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None:
            spans.append((first, last))
        first = last = seq
    if first is not None:
        spans.append((first, last))
    return spans
