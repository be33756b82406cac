"""The runtime's log lines: plain text or one JSON object per line, and a rate limit.

    setup_logging("info", "json")    # edge-runtime run --log-level info --log-format json

JSON lines carry "time" (ISO 8601, UTC), "level", "logger", "message", the context a call
passes with `extra=` ("line", "id", ...) and "exc" (the traceback) when there is one: what
journald's JSON output and log shippers (Vector, Fluent Bit, Promtail) index. A stdlib
Formatter rather than python-json-logger: twenty lines, and one dependency fewer on the
gateway.

Levels: ERROR is for what needs a person (the disk refuses the outbox, the broker refuses
TLS or the credentials, a bug); a refused message or command is WARNING at most, and it is
also answered on the errors topic. The same line repeated (one template from one logger at
one level) is let through BURST times, then once per INTERVAL_S with the number suppressed,
so a flood of bad input cannot flood the journal.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import time

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BURST = 10  # lines of one kind let through at once
INTERVAL_S = 10.0  # then one per this many seconds
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
               .isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["exc"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class RateLimit(logging.Filter):
    """BURST records per kind (logger, level, template), then one per `interval` seconds,
    which says in `suppressed` how many were dropped since the last one let through."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL_S) -> None:
        super().__init__()
        self.burst, self.interval = burst, interval
        self._lock = threading.Lock()
        self._kinds: dict[tuple, list] = {}  # kind -> [tokens, last refill, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:  # debugging asks for everything
            return True
        kind = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                if len(self._kinds) > 4096:  # templates are few; this only bounds memory
                    self._kinds.clear()
                state = self._kinds[kind] = [float(self.burst), now, 0]
            state[0] = min(self.burst, state[0] + (now - state[1]) / self.interval)
            state[1] = now
            if state[0] < 1.0:
                state[2] += 1
                return False
            state[0] -= 1.0
            suppressed, state[2] = state[2], 0
        if suppressed:
            record.suppressed = suppressed  # a JSON field; text lines get a note
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        suppressed = getattr(record, "suppressed", 0)
        return f"{line} ({suppressed} similar lines suppressed)" if suppressed else line


def setup_logging(level: str, fmt: str = "text", worker: int | None = None) -> None:
    """Root logging to stderr at `level` in `fmt` ("text" or "json"), rate limited; in a
    worker process (edge/workers/) each line names the worker: `[w1]`, or `"worker": 1`."""
    handler = logging.StreamHandler(sys.stderr)
    text = TEXT_FORMAT if worker is None else TEXT_FORMAT.replace(
        "%(name)s", f"[w{worker}] %(name)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter(text))
    handler.addFilter(RateLimit())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    # Like basicConfig, nothing changes where the root logger has handlers already (pytest).
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


class _WorkerField(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True
