"""The gateway against a Mosquitto that demands TLS, client certificates and passwords.

One broker per test with four listeners (tests/certs.py makes the PKI):
    plain       anonymous, no TLS: the tests' own publisher and observers
    mtls        TLS, client certificate required (its CN becomes the MQTT user name)
    password    TLS, user name and password (mosquitto_passwd), no anonymous clients
    wrong_name  TLS with a certificate from the right CA for the wrong host name

With the right certificate or password the runtime serves a real window end to end; with a
missing or wrong one it never comes online, the broker log shows the refusal and the runtime
log says why. A TLS config never falls back to plaintext. No test asserts timings.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import Pki, make_pki
from reference_bundle import sample_windows
from test_runtime import (
    WAIT_S,
    Collector,
    Publisher,
    _spawn,
    exactly_once,
    stops_cleanly,
    wait_until,
)

from edge.service import Service
from export.demo.local_broker import (
    MOSQUITTO,
    BrokerMissing,
    LocalBroker,
    free_port,
    port_open,
    write_runtime_config,
)

DEVICE = "gw-test"
CLIENT_ID = f"edge-{DEVICE}"
STATUS = f"factory/{DEVICE}/status"
USER, PASSWORD = "gateway", "correct horse battery staple"
LISTENERS = ("mtls", "password", "wrong_name")


@dataclass
class SecureBroker:
    """A running Mosquitto: `broker.port` is the plaintext listener, the rest are TLS."""

    broker: LocalBroker
    ports: dict[str, int]  # listener name -> port
    pki: Pki

    def log_text(self) -> str:
        return self.broker.log_text()


def secure_conf(ports: dict[str, int], pki: Pki, passwd: Path) -> str:
    """mosquitto.conf with one listener of each kind. `user root` because Mosquitto started
    as root otherwise becomes `mosquitto` before loading keys it may not read (pytest's
    tmp dirs are 0700); it is ignored when the tests run as another user."""
    server = f"certfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    return (
        "per_listener_settings true\nuser root\npersistence false\n"
        "max_queued_messages 100000\nlog_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        f"listener {ports['plain']} 127.0.0.1\nallow_anonymous true\n"
        f"listener {ports['mtls']} 127.0.0.1\nallow_anonymous false\n"
        f"cafile {pki.ca}\n{server}require_certificate true\nuse_identity_as_username true\n"
        f"listener {ports['password']} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwd}\ncafile {pki.ca}\n{server}"
        f"listener {ports['wrong_name']} 127.0.0.1\nallow_anonymous true\n"
        f"certfile {pki.wrong_name_cert}\nkeyfile {pki.wrong_name_key}\n")


def _listening(proc: subprocess.Popen, ports: Iterable[int]) -> bool:
    """True once every port accepts connections; False if mosquitto exits first."""
    wait_until(lambda: proc.poll() is not None
               or all(port_open("127.0.0.1", p) for p in ports), 10)
    return proc.poll() is None and all(port_open("127.0.0.1", p) for p in ports)


def run_mosquitto(directory: Path, names: Sequence[str], make_conf: Callable[[dict], str],
                  attempts: int = 3) -> tuple[LocalBroker, dict[str, int]]:
    """Start Mosquitto with `make_conf({name: free port})`, like local_broker.start_broker
    but with any listeners; the LocalBroker's `port` is the first name's."""
    if not Path(MOSQUITTO).exists():
        raise BrokerMissing(f"{MOSQUITTO} is not installed (make mosquitto)")
    directory.mkdir(parents=True, exist_ok=True)
    conf, log = directory / "mosquitto.conf", directory / "mosquitto.log"
    for _ in range(attempts):  # another process may take a free port before mosquitto
        ports = {name: free_port() for name in names}
        conf.write_text(make_conf(ports))
        with open(log, "wb") as out:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=directory)
        broker = LocalBroker("127.0.0.1", ports[names[0]], conf, log, proc)
        if _listening(proc, ports.values()):
            return broker, ports
        broker.stop()
    raise RuntimeError(f"mosquitto did not start:\n{log.read_text(errors='replace')}")


def make_passwd(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file, made the way docs/SECURITY.md says (mosquitto_passwd)."""
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(path),
                        user, password], check=True, capture_output=True, timeout=WAIT_S)
    return path


def start_secure_broker(directory: Path, pki: Pki) -> SecureBroker:
    directory.mkdir(parents=True, exist_ok=True)
    passwd = make_passwd(directory / "passwd", {USER: PASSWORD})
    broker, ports = run_mosquitto(directory, ("plain", *LISTENERS),
                                  lambda ports: secure_conf(ports, pki, passwd))
    return SecureBroker(broker, {k: ports[k] for k in LISTENERS}, pki)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure(tmp_path, pki):
    """A fresh broker per test, so no retained status leaks from one test to the next."""
    try:
        broker = start_secure_broker(tmp_path / "mosquitto", pki)
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    yield broker
    broker.broker.stop()
    print(f"--- mosquitto log ---\n{broker.log_text()}")  # shown for failing tests only


@pytest.fixture
def config(tmp_path, secure, basicmotions_bundle):
    """`config(listener, **broker_keys)` -> a runtime config for that listener (or a port)."""
    def make(listener: str | int, **broker: object) -> Path:
        port = secure.ports[listener] if isinstance(listener, str) else listener
        return write_runtime_config(tmp_path, port=port, bundle=basicmotions_bundle,
                                    lines={"line-a": {"adapter": "line-a"}},
                                    broker={"port": port, **broker})
    return make


def tls(pki: Pki, *, ca: Path | None = None, client: tuple[Path, Path] | None = None,
        insecure: bool = False) -> dict:
    """A [broker.tls] table: our CA unless `ca` is given, a client certificate if given."""
    table: dict = {"enabled": True, "ca": ca or pki.ca, "insecure": insecure}
    if client is not None:
        table["cert"], table["key"] = client
    return table


def write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")  # a trailing newline, as an editor leaves it
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------
# The right certificate or password: one real window served end to end
# --------------------------------------------------------------------------------------------

def serve_one_window(secure: SecureBroker, collector: Collector) -> dict:
    """Publish one real window on the plaintext listener; the gateway's result for it."""
    x, _, _ = sample_windows(1)
    pub = Publisher(secure.broker.port)
    pub.json("factory/line-a/sensors/imu", "tls-1", x[0])
    pub.close()
    assert collector.wait(lambda c: len(c.answers()) >= 1), secure.log_text()
    exactly_once(collector.answers(), ["tls-1"])
    (result,) = collector.docs("/inference")
    return result


def connected_lines(secure: SecureBroker) -> list[str]:
    """The broker's log lines for our client id connecting."""
    return [line for line in secure.log_text().splitlines()
            if "New client connected" in line and f" as {CLIENT_ID} " in line]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # IP and DNS names in the SAN
def test_mutual_tls_serves_a_window(secure, config, host):
    collector = Collector(secure.broker.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    pki = secure.pki
    svc = Service(config("mtls", host=host,
                         tls=tls(pki, client=(pki.client_cert, pki.client_key))))
    try:
        assert svc.start(WAIT_S), secure.log_text()
        result = serve_one_window(secure, collector)
        assert (result["line"], result["adapter"]) == ("line-a", "line-a")
        assert collector.status()[0]["state"] == "online"
        # The broker took the user name from our certificate (use_identity_as_username).
        (line,) = connected_lines(secure)
        assert f"u'{CLIENT_ID}'" in line
    finally:
        svc.stop(5)
        collector.close()


def test_password_over_tls_serves_a_window(secure, config, monkeypatch):
    """Credentials from environment variables, as a systemd unit's EnvironmentFile gives them."""
    monkeypatch.setenv("EDGE_MQTT_USER", USER)
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", PASSWORD)
    collector = Collector(secure.broker.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    svc = Service(config("password", tls=tls(secure.pki), username_env="EDGE_MQTT_USER",
                         password_env="EDGE_MQTT_PASSWORD"))
    try:
        assert svc.start(WAIT_S), secure.log_text()
        assert serve_one_window(secure, collector)["adapter"] == "line-a"
        (line,) = connected_lines(secure)
        assert f"u'{USER}'" in line
    finally:
        svc.stop(5)
        collector.close()


def test_cli_with_credential_files_serves_a_window(secure, config, tmp_path):
    """`edge-runtime run` as a subprocess, user name and password in files: it serves, exits
    0 on SIGTERM, and the password appears in neither the config nor the log."""
    cfg = config("password", tls=tls(secure.pki),
                 username_file=write_secret(tmp_path, "mqtt-user", USER),
                 password_file=write_secret(tmp_path, "mqtt-password", PASSWORD))
    log = tmp_path / "service.log"
    collector = Collector(secure.broker.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    with stops_cleanly(_spawn(cfg, log), log, collector) as proc:
        assert collector.wait(lambda c: any(s["state"] == "online" for s in c.status())
                              or proc.poll() is not None), log.read_text()
        assert proc.poll() is None, log.read_text()
        assert serve_one_window(secure, collector)["adapter"] == "line-a"
    assert PASSWORD not in cfg.read_text() and PASSWORD not in log.read_text()


# --------------------------------------------------------------------------------------------
# Wrong or missing certificate or password: refused, never online, and the logs say why
# --------------------------------------------------------------------------------------------

# case -> (listener, pki -> [broker] keys, words in Mosquitto's log, words in the runtime's)
REFUSALS = {
    "no_client_certificate": ("mtls", lambda p: {"tls": tls(p)},
                              "peer did not return a certificate", "certificate required"),
    "client_certificate_from_another_ca": (
        "mtls", lambda p: {"tls": tls(p, client=(p.rogue_cert, p.rogue_key))},
        "certificate verify failed", "unknown ca"),
    "wrong_password": ("password", lambda p: {"tls": tls(p), "username_env": "EDGE_MQTT_USER",
                                              "password_env": "EDGE_MQTT_WRONG"},
                       "not authorised", "Not authorized"),
    "no_password": ("password", lambda p: {"tls": tls(p)}, "not authorised", "Not authorized"),
    # A spoofed broker: its certificate does not chain to our CA ...
    "broker_from_another_ca": ("password", lambda p: {"tls": tls(p, ca=p.rogue_ca)},
                               "alert unknown ca", "certificate verify failed"),
    # ... or it is signed by our CA but for another host.
    "broker_for_another_host": ("wrong_name", lambda p: {"tls": tls(p)},
                                "alert bad certificate", "mismatch"),
}


def wait_for_refusal(secure: SecureBroker, caplog, broker_words: str,
                     runtime_words: str) -> None:
    """Until both logs tell of the refusal (only the gateway talks to these listeners)."""
    def seen() -> bool:
        return (broker_words in secure.log_text()
                and runtime_words.lower() in caplog.text.lower())

    assert wait_until(seen), f"broker log:\n{secure.log_text()}\nruntime log:\n{caplog.text}"


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_without_the_right_credentials(secure, config, caplog, monkeypatch, case):
    listener, keys, broker_words, runtime_words = REFUSALS[case]
    monkeypatch.setenv("EDGE_MQTT_USER", USER)
    monkeypatch.setenv("EDGE_MQTT_WRONG", PASSWORD + "!")
    caplog.set_level(logging.INFO)
    collector = Collector(secure.broker.port, (STATUS,))
    svc = Service(config(listener, **keys(secure.pki)))
    try:
        svc.start(connect_timeout=0)  # no wait: the refusal is awaited in the logs below
        wait_for_refusal(secure, caplog, broker_words, runtime_words)
        assert not svc.link.connected.is_set() and not svc.link.subscribed.is_set()
        # paho's "Client is not connected" at each turn of its loop between retries is noise
        # over the one reason logged per attempt (field trial: ERROR on every TLS retry)
        assert "Client is not connected" not in caplog.text
        assert connected_lines(secure) == []
        assert collector.status() == []  # never online (and no retained status either)
    finally:
        svc.stop(5)
        collector.close()


def test_cli_logs_why_it_was_refused(secure, config, tmp_path):
    cfg = config("password", tls=tls(secure.pki), username_file=write_secret(
        tmp_path, "user", USER), password_file=write_secret(tmp_path, "pw", "not it"))
    log = tmp_path / "service.log"
    proc = _spawn(cfg, log)
    try:
        assert wait_until(lambda: "refused the connection: Not authorized" in log.read_text()
                          or proc.poll() is not None), log.read_text()
        assert proc.poll() is None, log.read_text()  # it keeps retrying; it does not crash
        assert "not authorised" in secure.log_text() and connected_lines(secure) == []
    finally:  # killed: a SIGTERM would wait out the service's first connect wait
        proc.kill()
        proc.wait(5)


def test_insecure_skips_only_the_host_name_check(secure, config, caplog):
    """insecure = true accepts the wrong-name certificate (it still chains to our CA)."""
    caplog.set_level(logging.INFO)
    collector = Collector(secure.broker.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    svc = Service(config("wrong_name", tls=tls(secure.pki, insecure=True)))
    try:
        assert svc.start(WAIT_S), caplog.text
        assert serve_one_window(secure, collector)["adapter"] == "line-a"
        assert "host name is not checked" in caplog.text
    finally:
        svc.stop(5)
        collector.close()


# --------------------------------------------------------------------------------------------
# A TLS config never falls back to plaintext
# --------------------------------------------------------------------------------------------

def test_tls_config_never_talks_mqtt_to_a_plaintext_listener(secure, config, caplog):
    caplog.set_level(logging.INFO)
    collector = Collector(secure.broker.port, (STATUS,))
    svc = Service(config(secure.broker.port, tls=tls(secure.pki)))
    try:
        svc.start(connect_timeout=0)
        wait_for_refusal(secure, caplog, "protocol error", "TLS connection failed")
        assert not svc.link.connected.is_set()
        # The broker saw a TLS ClientHello where it expected CONNECT: no client id, no
        # session, nothing published.
        assert connected_lines(secure) == [] and collector.status() == []
    finally:
        svc.stop(5)
        collector.close()


class Listener:
    """A bare TCP server that records the first bytes of each connection, then hangs up:
    what a client sends before it knows whom it talks to."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(WAIT_S)
                try:
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self.sock.close()


def test_nothing_goes_out_in_cleartext(config, caplog, monkeypatch):
    """The first bytes the gateway sends are a TLS handshake record; its client id, user
    name and password are not among them."""
    monkeypatch.setenv("EDGE_MQTT_USER", USER)
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", PASSWORD)
    caplog.set_level(logging.INFO)
    server = Listener()
    svc = Service(config(server.port, tls={"enabled": True},  # the system CAs: none is shown
                         username_env="EDGE_MQTT_USER", password_env="EDGE_MQTT_PASSWORD"))
    try:
        svc.start(connect_timeout=0)
        assert wait_until(lambda: server.received and "TLS connection failed" in caplog.text)
        first = server.received[0]
        assert first[:1] == b"\x16" and first[1:2] == b"\x03", first[:16]  # TLS handshake
        for secret in (CLIENT_ID, USER, PASSWORD):
            assert secret.encode() not in first
        assert not svc.link.connected.is_set()
    finally:
        svc.stop(5)
        server.close()
