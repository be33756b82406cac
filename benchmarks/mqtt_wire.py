"""The gateway's MQTT receive path against stock paho's, side by side in one process.

For each payload kind (real BasicMotions windows as JSON, and as binary float32 with the
user properties id and shape), in `--rounds` interleaved rounds (stock first in even rounds,
lean first in odd ones): N windows are published at QoS 1 into the persistent session of a
subscriber that is offline, then the subscriber connects and drains them, acknowledging by
hand in groups of 32 as the gateway does after each micro-batch (stock: `client.ack` per
message; lean: `ack_many`). Measured: CPU time of this process per message (its network
thread and the acknowledging thread; the publisher has finished) and messages/s of the
drain. Every message must arrive; a round that loses one fails the run.

    .venv/bin/python benchmarks/mqtt_wire.py [--windows 8000] [--rounds 5] [--no-write]
        [--json FILE]

Writes its table into docs/BENCHMARKS.md under "## MQTT receive path (...)".
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from pipeline_load import Payloads  # noqa: E402
from report import machine_line, write_section  # noqa: E402

from edge.mqtt import MAX_INFLIGHT, no_delay  # noqa: E402
from edge.mqtt_wire import LeanClient  # noqa: E402
from export.demo.local_broker import start_broker  # noqa: E402

TITLE = "MQTT receive path (benchmarks/mqtt_wire.py)"
TOPIC = "bench/wire/imu"
ACK_GROUP = 32  # the gateway acknowledges a micro-batch's windows together (max_batch)
CLIENTS = {"stock": mqtt.Client, "lean": LeanClient}


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    props.ReceiveMaximum = 65535  # the whole backlog unacknowledged, as the gateway asks
    return props


def _client(cls: type, client_id: str) -> mqtt.Client:
    c = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
            manual_ack=True)
    c.on_socket_open = no_delay
    return c


def make_session(port: int, client_id: str) -> None:
    """The subscriber's persistent session, subscribed, then left offline."""
    c = _client(mqtt.Client, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.on_connect = lambda cl, *_a: cl.subscribe(TOPIC, qos=1)
    c.connect("127.0.0.1", port, clean_start=True, properties=_connect_props())
    c.loop_start()
    if not done.wait(10):
        raise RuntimeError("no SUBACK within 10 s")
    c.disconnect()
    c.loop_stop()


def fill(port: int, payloads: Payloads, count: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(MAX_INFLIGHT)
    pub.on_socket_open = no_delay
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in range(count):
        body, props = payloads.message(i)
        info = pub.publish(TOPIC, body, qos=1, properties=props)
    info.wait_for_publish(120)
    pub.disconnect()
    pub.loop_stop()


def drain(port: int, client_id: str, variant: str, count: int) -> dict:
    """Connect and take the backlog; CPU us per message and messages/s."""
    got: queue.SimpleQueue = queue.SimpleQueue()
    c = _client(CLIENTS[variant], client_id)
    c.on_message = lambda _c, _u, msg: got.put((msg.mid, msg.qos))
    cpu0, t0 = time.process_time(), time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    c.loop_start()
    done, pending = 0, []
    try:
        while done < count:
            try:
                pending.append(got.get(timeout=10))
            except queue.Empty:
                break
            if len(pending) >= ACK_GROUP or got.empty():
                if variant == "lean":
                    c.ack_many(pending)
                else:
                    for mid, qos in pending:
                        c.ack(mid, qos)
                done, pending = done + len(pending), []
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        time.sleep(0.3)  # the last PUBACKs reach the broker before the DISCONNECT
    finally:
        c.disconnect()
        c.loop_stop()
    return {"received": done, "cpu_us": 1e6 * cpu / max(done, 1), "rate": done / wall}


def run_kind(port: int, kind: str, count: int, rounds: int) -> dict:
    payloads = Payloads(kind)
    runs: dict[str, list[dict]] = {"stock": [], "lean": []}
    for r in range(rounds):
        for variant in (("stock", "lean") if r % 2 == 0 else ("lean", "stock")):
            client_id = f"wire-{kind}-{variant}-{r}"
            make_session(port, client_id)
            fill(port, payloads, count)
            runs[variant].append(drain(port, client_id, variant, count))
    med = {v: {k: statistics.median(x[k] for x in rs) for k in ("cpu_us", "rate")}
           for v, rs in runs.items()}
    return {"kind": kind, "size": payloads.size, "runs": runs, **med,
            "lost": sum(count - x["received"] for rs in runs.values() for x in rs),
            "cpu_ratios": [s["cpu_us"] / ln["cpu_us"]
                           for s, ln in zip(runs["stock"], runs["lean"], strict=True)]}


def report(rows: list[dict], count: int, rounds: int) -> str:
    head = ("| payload | bytes | stock paho CPU us / msg | lean CPU us / msg | stock / lean "
            "(per round) | stock msg/s | lean msg/s | lost |\n"
            "|---|---:|---:|---:|---|---:|---:|---:|\n")
    lines = [f"| {r['kind']} | {r['size']} | {r['stock']['cpu_us']:.0f} | "
             f"{r['lean']['cpu_us']:.0f} | {statistics.median(r['cpu_ratios']):.1f} "
             f"({min(r['cpu_ratios']):.1f} .. {max(r['cpu_ratios']):.1f}) | "
             f"{r['stock']['rate']:,.0f} | {r['lean']['rate']:,.0f} | {r['lost']} |"
             for r in rows]
    return (f"{machine_line(('paho-mqtt',))}; Mosquitto on loopback.\n\n"
            f"A backlog of {count:,} real BasicMotions windows at QoS 1, queued in an offline "
            "subscriber's persistent session, then drained by stock paho-mqtt "
            "(`mqtt.Client`) and by edge.mqtt_wire.LeanClient, acknowledged by hand in "
            f"groups of {ACK_GROUP}; {rounds} interleaved rounds, medians. CPU of this "
            "process per message (network thread and acknowledging thread).\n\n"
            + head + "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-wire-") as tmp:
        broker = start_broker(Path(tmp) / "mosquitto")
        try:
            rows = [run_kind(broker.port, kind, args.windows, args.rounds)
                    for kind in ("json", "binary")]
        finally:
            broker.stop()
    body = report(rows, args.windows, args.rounds)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        print(f"written to {write_section(TITLE, body)}")
    return 1 if any(r["lost"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
