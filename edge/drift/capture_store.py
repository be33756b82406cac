"""The capture store on disk: captured windows in `<state_dir>/capture/`, one file each,
bounded in bytes, oldest out first, readable after a power cut.

    store = CaptureStore(state_dir / "capture", max_bytes=64 << 20)
    store.write(Record(line=..., adapter=..., version=..., top=..., predicted=..., ...), x)
    for record, x in store.read(): ...        # oldest first; broken files skipped, logged

A record file `<seq:012d>.cap` is

    b"ECAP"  uint32 LE header length  header (UTF-8 JSON)  x: C*L float32 LE

The header holds the record's fields, the window's shape and the CRC-32 of its bytes. A
file is written to a temporary name, fsynced and renamed (edge.bundle.atomic_write), so a
crash leaves it whole or absent; a file cut short anyway (a power cut on a file system
that reorders, a disk error) fails the length or CRC check and is skipped with a warning,
never an exception. Leftover temporary files (`.<name>.*`) are removed by the writer at
start (`tidy`).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import atomic_write
from ..contract.shapes import sample_shape_problem

log = logging.getLogger(__name__)

MAGIC = b"ECAP"
SUFFIX = ".cap"
_LEN = struct.Struct("<I")
MAX_HEADER = 1 << 20  # a header past this is not one of ours


@dataclass
class Record:
    """One captured window's fields (the sample itself travels beside it, float32 of the
    model's sample shape: (F,), (C, L) or (C, H, W))."""

    line: str
    adapter: str  # "base" for the base model
    version: int | None
    top: float  # top softmax score
    predicted: str  # predicted class name (a provisional label)
    classes: list[str]  # the model's class names, in its order
    received: float  # time.time() when the window arrived
    reason: str  # "ood", "outlier", "low_score" or "drifting"
    id: str = ""  # the sensor message's id
    drift_state: str = ""  # the line's drift state at capture
    ood: float | None = None  # Mahalanobis distance of its features (None: not known)
    seq: int = field(default=0, compare=False)  # set by the store: order of capture


def encode(record: Record, x: np.ndarray) -> bytes:
    """The file bytes of a record and its sample x (C, L) (or any sample shape)."""
    data = np.ascontiguousarray(x, "<f4").tobytes()
    head = {**asdict(record), "shape": list(x.shape), "crc32": zlib.crc32(data)}
    head_bytes = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + _LEN.pack(len(head_bytes)) + head_bytes + data


def decode(blob: bytes) -> tuple[Record, np.ndarray]:
    """(record, x float32 of the recorded sample shape) of a file's bytes; ValueError saying
    what is wrong."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError("not a capture record")
    (n,) = _LEN.unpack_from(blob, 4)
    if n > MAX_HEADER or 8 + n > len(blob):
        raise ValueError("header cut short")
    head = json.loads(blob[8:8 + n])
    shape, crc = tuple(head.pop("shape")), head.pop("crc32")
    data = blob[8 + n:]
    if sample_shape_problem(shape) or len(data) != 4 * math.prod(shape):
        raise ValueError(f"{len(data)} data bytes for shape {shape}: cut short")
    if zlib.crc32(data) != crc:
        raise ValueError("CRC mismatch")
    return Record(**head), np.frombuffer(data, "<f4").reshape(shape).astype(np.float32)


class CaptureStore:
    """The records in `folder`, at most `max_bytes` of files; oldest removed first.

    One writer (the gateway's capture thread, or a CLI command) at a time; readers may run
    beside it (a record is whole once its name exists)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._files: deque[tuple[Path, int]] = deque()  # (path, bytes), oldest first
        self.bytes = 0  # sum of the sizes in _files
        self._lock = threading.Lock()
        self._next = 1
        if self.folder.is_dir():
            self._scan()

    def tidy(self) -> None:
        """Remove temporary files an atomic write left when it was cut off before its rename
        (the writer calls it at start; a reader must not: it would race the writer)."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(".*"):
                tmp.unlink(missing_ok=True)

    def _scan(self) -> None:
        for path in self.paths():
            try:
                self._files.append((path, path.stat().st_size))
            except OSError:
                continue
        self.bytes = sum(size for _, size in self._files)
        if self._files:
            self._next = _seq(self._files[-1][0]) + 1

    def paths(self) -> list[Path]:
        """Record files, oldest first (names are zero-padded sequence numbers)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"*{SUFFIX}") if _seq(p) > 0)

    def write(self, record: Record, x: np.ndarray) -> Path | None:
        """Store one record, first removing the oldest ones it needs room from. None when a
        single record is larger than the whole cap."""
        with self._lock:
            record.seq = self._next
            blob = encode(record, x)
            if len(blob) > self.max_bytes:
                return None
            while self._files and self.bytes + len(blob) > self.max_bytes:
                old, size = self._files.popleft()
                old.unlink(missing_ok=True)  # gone already when `capture clear` ran
                self.bytes -= size
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{self._next:012d}{SUFFIX}"
            atomic_write(path, blob)
            self._files.append((path, len(blob)))
            self.bytes += len(blob)
            self._next += 1
            return path

    def read(self) -> Iterator[tuple[Record, np.ndarray]]:
        """Every readable record with its window (C, L), oldest first; a broken file is
        logged and skipped."""
        for path in self.paths():
            try:
                yield decode(path.read_bytes())
            except FileNotFoundError:  # removed by the writer meanwhile
                continue
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("capture record %s skipped: %s", path.name, exc)

    def clear(self) -> int:
        """Remove every record; how many there were."""
        with self._lock:
            paths = self.paths()
            for path in paths:
                path.unlink(missing_ok=True)
            self._files.clear()
            self.bytes = 0
            return len(paths)


def _seq(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return 0
