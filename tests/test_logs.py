"""`edge-runtime --version`, `run --log-format json` (the CLI in a subprocess against a real
Mosquitto: every stderr line is a JSON object, no ERROR for refused input), the JSON formatter
and the rate limit on repeated lines."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from reference_bundle import sample_windows
from test_runtime import WAIT_S, Collector, Publisher, stops_cleanly

from edge import __version__
from edge.logs import JsonFormatter, RateLimit

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEVICE = "gw-test"


def edge_runtime(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge.cli", *args], env=ENV, **kwargs)


def test_version_is_one_line_with_onnxruntime_and_providers():
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--version"], env=ENV,
                         capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"edge-runtime {re.escape(__version__)} \(onnxruntime [\w.]+, "
                        r"providers: .*CPUExecutionProvider.*\)", lines[0]), lines[0]


def test_run_with_json_logs(runtime_config, mosquitto, tmp_path):
    """A real run with a refused window and a refused command: each stderr line parses as
    JSON with time, level, logger, message; the refused command's line carries its id; no
    line is ERROR (nothing here needs a person); SIGTERM exits 0."""
    config = runtime_config()
    log = tmp_path / "stderr.log"
    collector = Collector(mosquitto.port)
    with open(log, "w") as err:
        proc = edge_runtime("run", "--config", str(config), "--log-format", "json",
                            stdout=subprocess.DEVNULL, stderr=err)
    with stops_cleanly(proc, log, collector):
        assert collector.wait(lambda c: any(s["state"] == "online" for s in c.status())), \
            log.read_text()
        x, _, _ = sample_windows(1)
        pub = Publisher(mosquitto.port)
        pub.raw("factory/line-a/sensors/s", b'{"id": "bad", "values": [1, 2')
        pub.raw(f"factory/{DEVICE}/adapters/activate",
                json.dumps({"line": "line-a", "name": "no-such-adapter", "id": "c7"}).encode())
        pub.json("factory/line-a/sensors/s", "good", x[0])
        pub.close()
        assert collector.wait(lambda c: len(c.docs("/inference")) == 1
                              and len(c.docs("/errors")) == 2), log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records, "no log lines"
    for rec in records:
        assert {"time", "level", "logger", "message"} <= set(rec), rec
        assert rec["time"].endswith("+00:00")
    assert [r for r in records if r["level"] == "ERROR"] == []
    refused = [r for r in records if r.get("id") == "c7"]
    assert len(refused) == 1 and refused[0]["level"] == "WARNING", records
    assert any(r["logger"] == "edge.service" and r["message"].startswith("stopped")
               for r in records)


def test_json_formatter_fields_extras_and_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("edge.test").makeRecord(
            "edge.test", logging.ERROR, __file__, 1, "batch of %d failed", (3,),
            sys.exc_info(), extra={"line": "press-3", "id": object()})
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "batch of 3 failed" and doc["level"] == "ERROR"
    assert doc["logger"] == "edge.test" and doc["line"] == "press-3"
    assert doc["id"].startswith("<object")  # anything not JSON is written as its str()
    assert "ValueError: boom" in doc["exc"]
    assert "\n" not in JsonFormatter().format(record)  # one record, one line


def test_rate_limit_lets_a_burst_through_then_counts_what_it_dropped():
    limit = RateLimit(burst=3, interval=0.05)
    log = logging.getLogger("edge.test.rate")

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return log.makeRecord(log.name, level, __file__, 1, msg, ("x",), None)

    passed = [limit.filter(record("refused %s")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limit.filter(record("another %s"))  # another template: its own budget
    assert limit.filter(record("refused %s", logging.DEBUG))  # debug: never limited
    time.sleep(0.06)  # more than one interval: one more line may go
    later = record("refused %s")
    assert limit.filter(later) and later.suppressed == 7
