"""A private Mosquitto for the demo, tests and benchmarks, and runtime configs for it.

    broker = start_broker(tmp_dir)          # listener on a free loopback port
    broker.kill()                           # SIGKILL: no clean shutdown, no final save
    broker = start_broker(tmp_dir, persistence=True, port=broker.port)  # same port and db
    cfg = write_runtime_config(tmp_dir, port=broker.port, bundle=bundle_dir,
                               lines={"line-a": {"adapter": "line-a"}, "line-b": {}})
    broker.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.contract import DEFAULT_PREFIX
from edge.mqtt import no_delay

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class BrokerMissing(RuntimeError):
    """mosquitto is not installed here."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class LocalBroker:
    """A running Mosquitto: where it listens, its config file and its log."""

    host: str
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would: what it had not saved is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def broker_conf(port: int, *, persistence: bool = False, extra: str = "",
                save_every_change: bool = True) -> str:
    """mosquitto.conf for a private loopback broker. A larger queue than the default 1000
    keeps a burst of QoS 1 test messages from being dropped by the broker itself. With
    persistence, mosquitto.db (in the broker's directory) is saved after every change, not
    every 30 minutes, so a SIGKILL loses only what came in since the last save; that costs
    the broker a whole save per message, so a long run under load (the soak) turns it off
    and relies on the save at a clean shutdown."""
    saving = ("autosave_on_changes true\nautosave_interval 1\n"
              if persistence and save_every_change else "")
    if persistence and os.geteuid() == 0:  # else mosquitto becomes `mosquitto`: no write here
        saving += "user root\n"
    return (f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\n"
            + saving +
            "max_queued_messages 100000\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            + extra)


def start_broker(directory: Path, *, persistence: bool = False, extra: str = "",
                 save_every_change: bool = True,
                 attempts: int = 3, port: int | None = None) -> LocalBroker:
    """Start `mosquitto -c conf` and wait until it accepts connections: on a free port, or
    on `port` (a restart: with persistence, the same `directory` holds its mosquitto.db, and
    its log goes on in the same file)."""
    if not Path(MOSQUITTO).exists():
        raise BrokerMissing(f"{MOSQUITTO} is not installed (make mosquitto)")
    directory = Path(directory).resolve()  # mosquitto runs with cwd=directory
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):  # another process may grab the free port before mosquitto
        listen = port if port is not None else free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(broker_conf(listen, persistence=persistence, extra=extra,
                                    save_every_change=save_every_change))
        log = directory / "mosquitto.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=directory)
        broker = LocalBroker("127.0.0.1", listen, conf, log, proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if port_open(broker.host, listen):
                return broker
            time.sleep(0.05)
        broker.stop()
    raise RuntimeError(f"mosquitto did not start:\n{broker.log_text()}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_runtime_config(directory: Path, *, port: int, bundle: Path | None,
                         lines: dict[str, dict] | None = None, device_id: str = "gw-test",
                         name: str = "runtime.toml", **sections: dict) -> Path:
    """A runtime TOML for a test broker and bundle. `lines` maps line -> {adapter, version};
    keyword sections (`batching={...}`, `limits={...}`, `topics={...}`) add or override keys."""
    tables: dict[str, dict] = {
        "device": {"id": device_id, "threads": 1, "state_dir": str(directory / "state"),
                   **({"bundle": str(bundle)} if bundle is not None else {})},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive": 10,
                   "clean_start": True, "session_expiry": 0},
        "topics": {"prefix": DEFAULT_PREFIX, "qos": 1, "stats_interval_s": 1},
        "batching": {"max_batch": 16, "max_wait_ms": 5},
        "limits": {"max_payload_bytes": 65536, "queue_bound": 1000},
    }
    for section, values in sections.items():
        tables.setdefault(section, {}).update(values)
    text = ""
    for section, values in tables.items():
        text += f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n"
                                           for k, v in values.items()) + "\n"
    for line, route in (lines or {}).items():
        text += f"[topics.lines.{line}]\n" + "".join(f"{k} = {_toml_value(v)}\n"
                                                    for k, v in route.items()) + "\n"
    path = Path(directory) / name
    path.write_text(text)
    return path


def subscriber(port: int, topics: Sequence[str], on_message: Callable,
               *, timeout: float = 10.0,
               client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """An MQTT v5 client (a `client_class`) of the private broker, subscribed to `topics`
    (QoS 1) by the time it returns, its network loop running."""
    subscribed = threading.Event()
    client = client_class(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_socket_open = no_delay
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
    if not subscribed.wait(timeout):
        raise RuntimeError(f"not subscribed to {list(topics)} within {timeout} s")
    return client
