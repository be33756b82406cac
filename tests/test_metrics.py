"""[metrics]: /metrics and /healthz of a real service against a real Mosquitto, scraped over
HTTP during the run and parsed with prometheus_client's own parser; the Grafana dashboard's
queries against a real scrape; a taken port; a scrape storm while windows are answered.
No test asserts timings."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from reference_bundle import sample_windows
from test_runtime import (
    BAD_PAYLOADS,
    ERRORS,
    WAIT_S,
    Collector,
    Publisher,
    exactly_once,
    wait_until,
)

from edge.errors import ConfigError
from edge.metrics.recorder import BUCKETS, OTHER, Recorder
from edge.mqtt import publish_properties
from edge.outbox import Outbox, Outgoing
from edge.service import Service
from edge.status import error_kind

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "edge-gateway.json"
METRICS_ON = {"enabled": True, "port": 0}
# The kind each bad payload of test_runtime's table is counted under; the rest: bad_message.
KINDS = {"unknown_line": "unknown_line", "huge": "too_large"}


def get(svc: Service, path: str) -> tuple[int, bytes]:
    """(HTTP status, body) of GET `path` on the service's metrics port."""
    url = f"http://127.0.0.1:{svc.metrics.server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(svc: Service) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one /metrics scrape, parsed by
    prometheus_client.parser."""
    status, body = get(svc, "/metrics")
    assert status == 200
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def test_scrape_counts_what_was_sent(service, mosquitto):
    """Real windows on both lines and every bad payload of test_runtime: results and latency
    counts per line and adapter, errors by kind, received, routing, connection, outbox."""
    x, _, _ = sample_windows(12)
    svc = service(metrics=METRICS_ON)
    assert scrape(svc)["edge_windows_received_total"][()] == 0  # scraped before any traffic
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    ids = [f"w{i}" for i in range(len(x))]
    for i, msg_id in enumerate(ids):
        pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", msg_id, x[i])
    for case, line, payload, ctype, props, _ in BAD_PAYLOADS:
        properties = publish_properties(ctype, props) if ctype or props else None
        pub.raw(f"factory/{line}/sensors/{case}", payload, properties)
    pub.close()
    sent = len(ids) + len(BAD_PAYLOADS)
    assert collector.wait(lambda c: len(c.answers()) >= sent)
    exactly_once(collector.docs("/inference"), ids)
    version = str(collector.docs("/inference")[0]["adapter_version"] or "")

    def settled() -> bool:  # the text is rebuilt at most every 0.5 s
        return scrape(svc)["edge_windows_received_total"][()] == sent
    assert wait_until(settled)
    m = scrape(svc)
    per_line = {"line-a": ("line-a", 6), "line-b": ("base", 6)}
    for line, (adapter, n) in per_line.items():
        a_version = version if adapter != "base" else ""
        labels = {"line": line, "adapter": adapter, "version": a_version}
        assert value(m, "edge_results_total", **labels) == n, m["edge_results_total"]
        assert value(m, "edge_latency_seconds_count", **labels) == n
        buckets = [value(m, "edge_latency_seconds_bucket", **labels, le=le)
                   for le in [repr(b) for b in BUCKETS] + ["+Inf"]]
        assert buckets == sorted(buckets) and buckets[-1] == n
    assert sum(m["edge_inference_seconds_count"].values()) >= 2  # one run per model at least
    expected = Counter(KINDS.get(case, "bad_message") for case, *_ in BAD_PAYLOADS)
    assert {dict(k)["reason"]: v for k, v in m["edge_errors_total"].items()} == expected
    assert value(m, "edge_batch_windows_total") == len(ids)
    assert value(m, "edge_line_adapter_info", line="line-a", adapter="line-a",
                 version=version) == 1
    assert value(m, "edge_line_adapter_info", line="line-b", adapter="base", version="") == 1
    for name in ("edge_mqtt_connected", "edge_mqtt_subscribed", "edge_ready"):
        assert value(m, name) == 1, name
    assert value(m, "edge_outbox_messages") == svc.outbox.count
    assert value(m, "edge_outbox_file_bytes") > 0
    assert value(m, "process_cpu_seconds_total") > 0  # prometheus_client's process collector
    collector.close()


def test_healthz_is_503_until_connected_subscribed_and_warm(runtime_config, mosquitto):
    """Bound at construction: 503 naming what is missing, 200 once started, 503 again naming
    the connection when the broker goes away."""
    svc = Service(runtime_config(metrics=METRICS_ON))
    try:
        status, body = get(svc, "/healthz")
        assert status == 503
        assert json.loads(body) == {"ready": False, "connected": False, "subscribed": False,
                                    "warmed_up": False,
                                    "missing": ["connected", "subscribed", "warmed_up"]}
        assert svc.start()
        status, body = get(svc, "/healthz")
        assert (status, json.loads(body)["missing"]) == (200, [])
        mosquitto.stop()
        assert wait_until(lambda: get(svc, "/healthz")[0] == 503)
        doc = json.loads(get(svc, "/healthz")[1])
        assert "connected" in doc["missing"] and doc["warmed_up"] is True
        assert scrape(svc)["edge_ready"][()] == 0
        assert get(svc, "/nothing")[0] == 404
    finally:
        svc.stop(2)


def test_port_in_use_refuses_to_start(runtime_config, tmp_path):
    """One ConfigError naming the key and the port; nothing held afterwards: the same state
    directory starts at once with a free port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = runtime_config(metrics={"enabled": True, "port": port})
        with pytest.raises(ConfigError) as err:
            Service(config)
    message = str(err.value)
    assert "metrics.port" in message and str(port) in message and "\n" not in message
    svc = Service(runtime_config(metrics=METRICS_ON))  # the state lock was released
    svc.stop(1)


def test_activate_counts_a_swap_and_moves_the_line(service, mosquitto):
    """An activate command: edge_adapter_swaps_total goes to 1 and edge_line_adapter_info
    shows line-b on the adapter; a refused command counts under reason="command"."""
    svc = service(metrics=METRICS_ON)
    collector = Collector(mosquitto.port, (f"factory/{svc.cfg.device.id}/#",))
    pub = Publisher(mosquitto.port)
    topic = f"factory/{svc.cfg.device.id}/adapters/activate"
    pub.raw(topic, json.dumps({"line": "line-b", "name": "line-a"}).encode())
    pub.raw(topic, json.dumps({"line": "line-b", "name": "no-such-adapter"}).encode())
    pub.close()
    assert collector.wait(lambda c: len(c.docs("/errors")) == 1 and any(
        d.get("lines", {}).get("line-b", {}).get("adapter") == "line-a"
        for d in c.docs("/adapters/state")))

    def moved() -> bool:
        m = scrape(svc)
        return (value(m, "edge_adapter_swaps_total") == 1
                and value(m, "edge_errors_total", reason="command") == 1)
    assert wait_until(moved)
    info = {dict(k)["line"]: dict(k)["adapter"]
            for k in scrape(svc)["edge_line_adapter_info"]}
    assert info == {"line-a": "line-a", "line-b": "line-a"}
    collector.close()


def test_cli_port_in_use_is_one_line_and_exit_2(runtime_config):
    """`edge-runtime run` in a subprocess: one `error:` line naming metrics.port, exit 2 (the
    systemd unit does not restart on 2)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = runtime_config(metrics={"enabled": True, "port": port})
        out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=WAIT_S * 2)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2, out.stderr
    assert len(errors) == 1 and "metrics.port" in errors[0] and str(port) in errors[0], \
        out.stderr


def test_scrape_storm_does_not_stall_inference(service, mosquitto):
    """Many threads scraping without pause and clients that connect and say nothing, while
    windows come in: every window is answered once, and /metrics still answers after."""
    x, _, _ = sample_windows(40)
    svc = service(metrics=METRICS_ON)
    port = svc.metrics.server.port
    stop = threading.Event()
    statuses: Counter = Counter()

    def hammer(path: str) -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    r.read()
                    statuses[r.status] += 1
            except urllib.error.HTTPError as exc:
                statuses[exc.code] += 1
            except OSError:
                statuses["refused"] += 1

    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    threads = [threading.Thread(target=hammer, args=(p,), daemon=True)
               for p in ["/metrics"] * 12 + ["/healthz"] * 4]
    for t in threads:
        t.start()
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    ids = [f"s{i}" for i in range(len(x))]
    try:
        for i, msg_id in enumerate(ids):
            pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", msg_id, x[i])
        pub.flush()
        assert collector.wait(lambda c: len(c.answers()) >= len(ids))
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_S)
        for s in silent:
            s.close()
    exactly_once(collector.answers(), ids)
    assert statuses[200] > 0, statuses
    assert set(statuses) <= {200, 503, "refused"}, statuses
    assert wait_until(lambda: sum(scrape(svc).get("edge_results_total", {}).values())
                      == len(ids))
    pub.close()
    collector.close()


def test_dashboard_queries_only_scraped_names(service, mosquitto):
    """Every metric name in a query of deploy/grafana/edge-gateway.json is in a real scrape:
    a sample's name, or one its family's type implies (a counter's _total, a histogram's
    _bucket/_sum/_count) for families without samples yet (no errors, no drifting line)."""
    x, _, _ = sample_windows(4)
    svc = service(metrics=METRICS_ON)
    collector = Collector(mosquitto.port, ("factory/+/inference",))
    pub = Publisher(mosquitto.port)
    for i in range(len(x)):
        pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", f"d{i}", x[i])
    pub.close()
    assert collector.wait(lambda c: len(c.docs("/inference")) >= len(x))
    status, body = get(svc, "/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    names = {s.name for f in families for s in f.samples}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names |= {f.name + end for f in families for end in suffixes.get(f.type, ("",))}
    queried = dashboard_metric_names()
    assert {"edge_results_total", "edge_latency_seconds_bucket",
            "edge_outbox_messages", "edge_errors_total", "edge_line_adapter_info"} <= queried
    assert sorted(queried - names) == []
    collector.close()


def dashboard_metric_names() -> set[str]:
    """Metric names in the dashboard's PromQL: edge_* and process_* identifiers."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {n for e in exprs for n in re.findall(r"\b((?:edge|process)_[a-z0-9_]+)\b", e)}


# --------------------------------------------------------------------------------------------
# The parts on their own
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reason, kind", [
    ("unknown line 'z': no route in topics.lines (known lines: a)", "unknown_line"),
    ("topic has no line level after 'factory': sensor topics are ...", "bad_topic"),
    ("line name 'a b' is not allowed (the topic level after 'factory')", "bad_topic"),
    ("payload is 70000 bytes, larger than the limit of 65536 bytes", "too_large"),
    ("queue full (2 messages, 10 bytes waiting for inference); message dropped", "queue_full"),
    ("the service is shutting down; this message was not processed", "shutdown"),
    ("the service stopped before this message was processed", "shutdown"),
    ("the line lost its route before inference", "no_route"),
    ("inference failed: [ONNXRuntimeError] ...", "inference_failed"),
    ("internal error: ValueError: boom", "internal"),
    ("values: expected 6 channels, got 5", "bad_message"),
])
def test_error_kinds(reason, kind):
    assert error_kind(reason) == kind


class _Item:
    def __init__(self, line: str, received: float) -> None:
        self.line, self.received = line, received


class _Route:
    def __init__(self, adapter: str, version: int | None) -> None:
        self.key = (adapter, version)


def test_recorder_buckets_and_series_cap():
    """A latency on a bound counts in that bound's bucket (Prometheus' le); label sets past
    the cap go to one _other series."""
    rec = Recorder(max_series=2)
    items = [_Item("a", 0.0), _Item("b", -5.0), _Item("c", 0.0)]
    routes = [_Route("x", 1), _Route("base", None), _Route("base", None)]
    rec.answered(items, routes, 0.002, now=BUCKETS[3])
    answered, runs = rec.snapshot()
    assert answered[("a", "x", "1")].buckets[3] == 1
    assert answered[("b", "base", "")].buckets[-1] == 1  # above every bound: +Inf only
    assert answered[OTHER].count == 1 and set(answered) == {("a", "x", "1"),
                                                            ("b", "base", ""), OTHER}
    assert list(runs) == [("base+bank", "")]  # one run served two models
    rec.answered(items[:1], routes[:1], 0.002, now=BUCKETS[3])
    assert rec.snapshot()[1][("x", "1")].count == 1


def test_outbox_oldest_age(runtime_config, tmp_path):
    """None when empty; from the oldest waiting message's commit; from the open for messages
    left by an earlier run; None again once everything is removed."""
    from edge.config import load_config

    cfg = load_config(runtime_config())
    cfg.device.state_dir.mkdir(parents=True, exist_ok=True)
    box = Outbox.open(cfg)
    assert box.oldest_age() is None
    box.commit([Outgoing("t", b"1")])
    box.commit([Outgoing("t", b"2"), Outgoing("t", b"3")])
    first = box.oldest_age()
    assert first is not None and first >= 0
    box.remove([r.seq for r in box.after(0, 1)])
    assert box.oldest_age() is not None and box.file_bytes() > 0
    box.close()
    box = Outbox.open(cfg)  # two messages from "before the restart"
    assert box.count == 2 and box.oldest_age() is not None
    box.remove([r.seq for r in box.after(0, 10)])
    assert box.oldest_age() is None
    box.close()
