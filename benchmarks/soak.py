"""Soak: edge-runtime under steady load for minutes, with adapter swaps and a broker restart.

    python benchmarks/soak.py                  # 10 minutes; writes "Soak" in docs/BENCHMARKS.md
    python benchmarks/soak.py --minutes 0.5 --swap-every 5 --no-write   # a smoke run

The runtime runs as `edge-runtime run` (a subprocess, as deployed) against a private
Mosquitto with persistence. First a closed-loop burst measures its capacity on this machine;
then real BasicMotions windows go out at half that rate, alternating between a line that
follows the newest adapter version and a line on the base model. Every `--swap-every`
seconds a new signed adapter version is pushed over MQTT (the first line switches to it);
half way through, the broker is stopped and started again on the same port. Sender and
receiver keep persistent sessions, so nothing should be lost.

Reported: messages sent, results received, lost (target 0), duplicates, errors, end-to-end
p99 latency in the first and last minute, and the runtime's resident memory after warm-up
and at the end (target growth < 5%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from adapter_versions import derive_version, envelope  # noqa: E402
from pipeline import DEVICE, TOPICS  # noqa: E402
from pipeline_load import Payloads, RunningService  # noqa: E402
from reference_bundle import build_bundle  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from edge.contract import ANY  # noqa: E402
from export.demo.local_broker import start_broker, write_runtime_config  # noqa: E402
from export.signing import keygen  # noqa: E402

LINES = ("press-a", "press-b")  # follows the newest "line-a" version / the base model
PUT = TOPICS.put("line-a")


def persistent_client(port: int, client_id: str) -> mqtt.Client:
    """A v5 client whose broker session (subscriptions, queued QoS 1) outlives a restart."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.reconnect_delay_set(0.2, 2)
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    return c


class Results:
    """Arrival time of every answer by id; duplicates and errors counted."""

    def __init__(self, port: int, capacity: int) -> None:
        self.arrived = np.zeros(capacity)
        self.count = self.duplicates = self.errors = 0
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = persistent_client(port, "soak-results")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(TOPICS.results(ANY), SubscribeOptions(qos=1)),
             (TOPICS.errors, SubscribeOptions(qos=1))])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect(self.client)

    def _on_message(self, client, userdata, msg) -> None:
        now = time.perf_counter()
        doc = json.loads(msg.payload)
        with self.cond:
            if "reason" in doc:
                self.errors += 1
                print(f"  error: {doc}", flush=True)
                return
            i = int(doc["id"][1:])  # pipeline.Payloads ids: "b<i>"
            if self.arrived[i]:
                self.duplicates += 1
            else:
                self.arrived[i] = now
                self.count += 1
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout)


class Soak:
    def __init__(self, work: Path, minutes: float, swap_every: float) -> None:
        self.work, self.seconds, self.swap_every = work, minutes * 60, swap_every
        self.bundle = build_bundle(work)
        self.key, public = keygen(out=work / "keys" / "signing")
        self.broker = start_broker(work / "mosquitto", persistence=True,
                                   save_every_change=False)
        self.config = write_runtime_config(
            work, port=self.broker.port, bundle=self.bundle, device_id=DEVICE,
            lines={LINES[0]: {"adapter": "line-a"}, LINES[1]: {}},
            broker={"clean_start": False, "session_expiry": 3600},
            adapters={"require_signed": True, "trusted_keys": [str(public)]},
            topics={"stats_interval_s": 5}, limits={"queue_bound": 20000})
        self.payloads = Payloads("binary")
        self.results = Results(self.broker.port, 50_000_000)
        self.pub = persistent_client(self.broker.port, "soak-sensors")
        self.sent: dict[int, float] = {}
        self.next_id, self.version, self.swaps = 0, 1, 0

    def publish(self, i: int) -> None:
        body, props = self.payloads.message(i)
        self.sent[i] = time.perf_counter()
        self.pub.publish(TOPICS.sensors(LINES[i % 2], "s1"), body, qos=1, properties=props)

    def capacity(self, seconds: float = 10.0) -> float:
        """Closed loop, at most 64 unanswered: results per second."""
        start, first = time.perf_counter(), self.next_id
        while time.perf_counter() - start < seconds:
            self.results.wait_count(self.next_id - 63, 5.0)
            self.publish(self.next_id)
            self.next_id += 1
        self.results.wait_count(self.next_id, 60)
        return (self.next_id - first) / (time.perf_counter() - start)

    def swap(self) -> None:
        self.version += 1
        entry, path = derive_version(self.bundle, "line-a", self.version, self.work / "v")
        self.pub.publish(PUT, envelope(entry, path, self.key), qos=1)
        self.swaps += 1

    def restart_broker(self) -> float:
        """Stop and start the broker on the same port; the seconds it was away."""
        start = time.perf_counter()
        port = self.broker.port
        self.broker.stop()
        time.sleep(1.0)
        self.broker = start_broker(self.work / "mosquitto", persistence=True, port=port,
                                   save_every_change=False)
        return time.perf_counter() - start

    def run(self, rate: float, memory_at: float, runtime: psutil.Process) -> dict:
        """Open loop at `rate` msg/s; swaps on schedule; the broker restart half way."""
        start, k = time.perf_counter(), 0
        first = self.next_id
        next_swap, restarted, rss = start + self.swap_every, None, {}
        while (now := time.perf_counter()) - start < self.seconds:
            if now >= next_swap:
                self.swap()
                next_swap += self.swap_every
                rss.setdefault("series", []).append(round(runtime.memory_info().rss / 2**20, 1))
            if restarted is None and now - start >= self.seconds / 2:
                rss["before_restart"] = len(rss.get("series", []))  # samples taken before it
                restarted = self.restart_broker()
            if "start" not in rss and now - start >= memory_at:
                rss["start"] = runtime.memory_info().rss
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.publish(self.next_id)
            self.next_id += 1
            k += 1
        rss["end"] = runtime.memory_info().rss
        self.results.wait_count(self.next_id, 120)
        return {"first": first, "start": start, "rss": rss, "broker_down_s": restarted}


def latency_p99(results: Results, sent: dict[int, float], t0: float, t1: float) -> float:
    ids = [i for i, t in sent.items() if t0 <= t < t1 and results.arrived[i]]
    lat = [(results.arrived[i] - sent[i]) * 1000.0 for i in ids]
    return float(np.percentile(lat, 99)) if lat else float("nan")


def memory_trend(rss: dict) -> str:
    """Where the RSS growth happened: before the broker restart, at it, after it."""
    series, k = rss.get("series", []), rss.get("before_restart", 0)
    if not 2 <= k <= len(series) - 2:
        return ""
    return (f"RSS (MiB, sampled at each swap) before the broker restart: {series[1]:g} -> "
            f"{series[k - 1]:g}; across the restart: {series[k - 1]:g} -> {series[k]:g}; "
            f"after it: {series[k]:g} -> {series[-1]:g}. Growth concentrated at the restart is "
            "the burst of sensor messages queued while the broker was away (the queue is "
            "bounded by limits.queue_bound and 64 MiB of payload): memory the allocator keeps "
            "as a high-water mark, not a leak; growth spread over a phase would be one.")


def report(soak: Soak, rate: float, capacity: float, out: dict, minutes: float
           ) -> tuple[str, dict]:
    """The markdown table and the figures behind it."""
    sent = {i: t for i, t in soak.sent.items() if i >= out["first"]}
    received = int(sum(1 for i in sent if soak.results.arrived[i]))
    lost = len(sent) - received
    window = min(60.0, soak.seconds / 4)
    t0, t1 = out["start"], out["start"] + soak.seconds
    p99_start = latency_p99(soak.results, sent, t0 + 0, t0 + window)
    p99_end = latency_p99(soak.results, sent, t1 - window, t1)
    if lost:
        missing = sorted(t - out["start"] for i, t in sent.items() if not soak.results.arrived[i])
        print(f"lost messages were sent between {missing[0]:.1f} s and {missing[-1]:.1f} s; "
              f"the broker restarted at {soak.seconds / 2:.1f} s", flush=True)
    rss = out["rss"]
    growth = rss["end"] / rss["start"] - 1.0
    rows = [
        ("duration", f"{minutes:g} min at {rate:.0f} msg/s (capacity {capacity:.0f} msg/s)"),
        ("adapter swaps", f"{soak.swaps} (every {soak.swap_every:g} s, signed, over MQTT)"),
        ("broker restart", f"half way; broker away {out['broker_down_s']:.1f} s"),
        ("messages sent", str(len(sent))), ("results received", str(received)),
        ("lost (target 0)", f"{lost} {'pass' if lost == 0 else 'MISS'}"),
        ("duplicates", str(soak.results.duplicates)), ("errors", str(soak.results.errors)),
        (f"p99 latency, first / last {window:.0f} s", f"{p99_start:.1f} / {p99_end:.1f} ms"),
        ("runtime RSS after warm-up / at end",
         f"{rss['start'] / 2**20:.1f} / {rss['end'] / 2**20:.1f} MiB"),
        ("runtime RSS at each swap, MiB", ", ".join(f"{v:g}" for v in rss.get("series", []))),
        ("memory growth (target < 5%)",
         f"{100 * growth:+.1f}% {'pass' if growth < 0.05 else 'MISS'}"),
    ]
    print(f"runtime RSS at each swap (MiB): {rss.get('series', [])}")
    figures = {"sent": len(sent), "received": received, "lost": lost,
               "duplicates": soak.results.duplicates, "errors": soak.results.errors,
               "swaps": soak.swaps, "p99_start_ms": p99_start, "p99_end_ms": p99_end,
               "rss_start": rss["start"], "rss_end": rss["end"], "rate": rate}
    return "\n".join(["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]), figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--swap-every", type=float, default=30.0)
    parser.add_argument("--rate", type=float, help="msg/s [default: half the capacity]")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        soak = Soak(Path(tmp), args.minutes, args.swap_every)
        service = RunningService(soak.config, in_process=False, log=Path(tmp) / "runtime.log")
        try:
            service.wait_online(soak.broker.port, TOPICS.status)
            capacity = soak.capacity(seconds=min(10.0, soak.seconds / 4))
            rate = args.rate or capacity / 2
            print(f"capacity {capacity:.0f} msg/s; soaking {args.minutes:g} min at "
                  f"{rate:.0f} msg/s", flush=True)
            out = soak.run(rate, min(60.0, soak.seconds / 4), psutil.Process(service.proc.pid))
        finally:
            code = service.stop()
            soak.broker.stop()
        table, figures = report(soak, rate, capacity, out, args.minutes)
        trend = memory_trend(out["rss"])
        print(table)
        print(trend)
        print(f"runtime exit code {code}")
        if args.json:
            args.json.write_text(json.dumps({**figures, "exit_code": code}))
        if code != 0:
            print((Path(tmp) / "runtime.log").read_text()[-3000:])
    if not args.no_write:
        write_section("Soak (benchmarks/soak.py)",
                      f"{machine_line()}\n\n{table}\n\nThe runtime is `edge-runtime run` "
                      "(subprocess); sender and receiver keep persistent MQTT sessions; "
                      "latency is end to end, publish to result received.\n\n" + trend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
