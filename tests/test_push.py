"""`edge-export push` against a real Mosquitto and a real gateway (an in-process Service):
accepted, already held, refused (unsigned, untrusted key), `--activate` switching a line
that then serves a real window with the new version, and the timeouts that say why.

The workstation side is a copy of the gateway's bundle with `line-a` v2 added to its
manifest (what `edge-export add-adapter` leaves behind); the gateway runs the original,
which holds only v1. No test asserts timings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from adapter_versions import Offline, derive_version, envelope
from certs import make_pki
from click.testing import CliRunner
from reference_bundle import build_bank_bundle, sample_windows
from test_runtime import WAIT_S, Collector, Publisher

from edge.bundle import read_manifest, write_manifest
from edge.errors import AdapterRejected, ConfigError, EdgeError
from edge.service import Service
from export.cli import main
from export.demo.local_broker import (
    MOSQUITTO,
    BrokerMissing,
    LocalBroker,
    free_port,
    port_open,
    start_broker,
    write_runtime_config,
)
from export.fleet.push import push
from export.signing import keygen

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "gw-test"
STATE = f"factory/{DEVICE}/adapters/state"
USER, PASSWORD = "workstation", "a password only the environment holds"


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    """(private, public): the key the gateway trusts."""
    return keygen(out=tmp_path / "keys" / "signing")


@pytest.fixture
def gateway(runtime_config, keys):
    """`gateway(**config_kwargs)` -> a started Service trusting `keys` and requiring
    signatures; line-a follows the newest line-a, line-b runs the base."""
    started: list[Service] = []

    def start(bundle: Path | None = None, **kwargs) -> Service:
        kwargs.setdefault("adapters", {"require_signed": True, "trusted_keys": [str(keys[1])]})
        svc = Service(runtime_config(**kwargs), bundle_dir=bundle)
        started.append(svc)
        assert svc.start(), "gateway did not connect"
        return svc

    yield start
    for svc in started:
        svc.stop(5)


@pytest.fixture
def workstation(tmp_path, basicmotions_bundle) -> Path:
    """A copy of the gateway's bundle whose manifest also lists line-a v2."""
    bundle = tmp_path / "workstation"
    shutil.copytree(basicmotions_bundle, bundle)
    v1 = read_manifest(bundle).adapter("line-a", 1)
    folder = Path(v1.file).parent
    entry, path = derive_version(bundle, "line-a", 2, bundle / folder)
    manifest = read_manifest(bundle)
    added = entry.model_copy(update={"file": (folder / path.name).as_posix()})
    write_manifest(bundle, manifest.model_copy(update={"adapters": [*manifest.adapters, added]}))
    return bundle


def cli(*args: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `edge-export` run in-process by click's runner."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def where(mosquitto) -> list[str]:
    return ["--broker", f"{mosquitto.host}:{mosquitto.port}", "--device", DEVICE]


def retained_state(port: int) -> dict:
    """The adapter state a newcomer gets: the retained one."""
    collector = Collector(port, (STATE,))
    try:
        assert collector.wait(lambda c: c.docs("/adapters/state"))
        return collector.docs("/adapters/state")[-1]
    finally:
        collector.close()


def held(state: dict) -> dict[tuple[str, int], dict]:
    return {(h["name"], h["version"]): h for h in state["held"]}


# --------------------------------------------------------------------------------------------
# Accepted, already held, activated
# --------------------------------------------------------------------------------------------

def test_push_from_a_bundle_is_accepted(gateway, workstation, keys, mosquitto):
    svc = gateway()
    code, out, err = cli("push", "--bundle", workstation, "--name", "line-a", "--key",
                         keys[0], *where(mosquitto))
    assert code == 0, err
    assert out.strip().splitlines() == [out.strip()]  # one result line
    assert out.startswith(f"line-a v2 accepted by {DEVICE} (sha256 ") and "signed" in out
    assert svc.store.resolve("line-a", 2).source == "mqtt"
    state = retained_state(mosquitto.port)
    want = read_manifest(workstation).adapter("line-a", 2)
    assert held(state)[("line-a", 2)]["sha256"] == want.sha256
    assert state["lines"]["line-a"]["version"] == 2  # line-a follows the newest version


def test_already_held_is_success(gateway, workstation, keys, mosquitto):
    svc = gateway()
    options = dict(bundle=workstation, name="line-a", key=keys[0], device=DEVICE,
                   broker=f"{mosquitto.host}:{mosquitto.port}")
    first = push(**options)
    again = push(**options)
    bundled = push(**{**options, "version": 1})  # v1 ships in the gateway's bundle
    assert (first.version, first.already_held) == (2, False)
    assert (again.version, again.already_held, again.sha256) == (2, True, first.sha256)
    assert (bundled.version, bundled.already_held) == (1, True)
    assert "already held by" in again.describe() and again.device_state == "online"
    svc.stop(5)  # its retained state still lists v2, and says so even while it is down
    offline = push(**options, timeout=5)
    assert (offline.already_held, offline.device_state) == (True, "offline")
    assert offline.describe().endswith("; the device is offline")


def test_activate_switches_a_line_that_then_serves_the_new_version(
        gateway, workstation, keys, mosquitto, basicmotions_bundle, tmp_path):
    gateway()
    sign = ["sign", "--bundle", workstation, "--name", "line-a", "--key", keys[0]]
    file = tmp_path / "line-a.v2.envelope"
    assert cli(*sign, "--out", file)[0] == 0
    code, out, err = cli("push", "--envelope", file, "--activate", "line-b", *where(mosquitto))
    assert code == 0, err
    assert "line-a v2 accepted" in out and "line line-b now runs line-a v2" in out
    line_b = retained_state(mosquitto.port)["lines"]["line-b"]
    assert (line_b["adapter"], line_b["version"], line_b["follow"]) == ("line-a", 2, "pinned")

    x, _, _ = sample_windows(1)
    collector = Collector(mosquitto.port, ("factory/line-b/inference", f"factory/{DEVICE}/errors"))
    pub = Publisher(mosquitto.port)
    pub.json("factory/line-b/sensors/imu", "after-push", x[0])
    pub.close()
    assert collector.wait(lambda c: len(c.answers()) >= 1, WAIT_S)
    (result,) = collector.docs("/inference")
    collector.close()
    assert (result["id"], result["adapter"], result["adapter_version"]) == (
        "after-push", "line-a", 2)
    entry = read_manifest(workstation).adapter("line-a", 2)
    probs = Offline(basicmotions_bundle).scores(workstation / entry.file, entry, x)[0]
    np.testing.assert_allclose([result["scores"][k] for k in entry.class_names], probs,
                               atol=1e-4)


def test_push_of_an_envelope_file_from_the_python_api(gateway, workstation, keys, mosquitto,
                                                      tmp_path):
    """A version derived straight from the adapter file, never listed in a manifest."""
    svc = gateway()
    entry, path = derive_version(workstation, "line-a", 5, tmp_path / "v5")
    file = tmp_path / "line-a.v5.envelope"
    file.write_bytes(envelope(entry, path, keys[0]))
    lines: list[str] = []
    result = push(envelope=file, device=DEVICE, broker=f"127.0.0.1:{mosquitto.port}",
                  activate="line-b", progress=lines.append)
    assert (result.name, result.version, result.activated) == ("line-a", 5, "line-b")
    assert result.signed and not result.already_held and result.sha256 == entry.sha256
    assert f"device {DEVICE} is online" in lines  # the retained status, seen on the way
    assert svc.routes.lookup("line-b").key == ("line-a", 5)


def start_tls_broker(directory: Path, pki) -> tuple[LocalBroker, int]:
    """Mosquitto with a plaintext listener (the gateway's) and a TLS listener that wants a
    user name and password (the workstation's): (broker, TLS port)."""
    directory.mkdir(parents=True, exist_ok=True)
    passwd = directory / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), USER, PASSWORD],
                   check=True, capture_output=True, timeout=WAIT_S)
    plain, secure = free_port(), free_port()
    conf, log = directory / "mosquitto.conf", directory / "mosquitto.log"
    # `user root`: mosquitto started as root would otherwise drop to `mosquitto` before
    # reading keys in pytest's 0700 tmp dirs (ignored when the tests run as another user).
    conf.write_text("per_listener_settings true\nuser root\npersistence false\n"
                    "log_dest stderr\nlog_type all\n"
                    f"listener {plain} 127.0.0.1\nallow_anonymous true\n"
                    f"listener {secure} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {passwd}\ncafile {pki.ca}\n"
                    f"certfile {pki.server_cert}\nkeyfile {pki.server_key}\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=directory)
    broker = LocalBroker("127.0.0.1", plain, conf, log, proc)
    for _ in range(200):  # up to 10 s for both listeners
        if proc.poll() is not None or all(port_open("127.0.0.1", p) for p in (plain, secure)):
            break
        time.sleep(0.05)
    if proc.poll() is not None or not port_open("127.0.0.1", secure):
        broker.stop()
        pytest.fail(f"mosquitto did not start:\n{broker.log_text()}")
    return broker, secure


def test_push_over_tls_with_a_password_from_the_environment(
        tmp_path, basicmotions_bundle, workstation, keys, monkeypatch):
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed")
    pki = make_pki(tmp_path / "pki")
    broker, tls_port = start_tls_broker(tmp_path / "tls-broker", pki)
    svc = Service(write_runtime_config(
        tmp_path, port=broker.port, bundle=basicmotions_bundle, lines={"line-a": {}},
        adapters={"require_signed": True, "trusted_keys": [str(keys[1])]}))
    try:
        assert svc.start(), broker.log_text()
        push_ = ["push", "--bundle", workstation, "--name", "line-a", "--key", keys[0],
                 "--device", DEVICE, "--username-env", "PUSH_USER", "--password-env", "PUSH_PW"]
        secure = ["--broker", f"127.0.0.1:{tls_port}", "--tls-ca", pki.ca]
        monkeypatch.setenv("PUSH_USER", USER)
        monkeypatch.setenv("PUSH_PW", "not the password")
        code, _, err = cli(*push_, *secure)
        assert code == EdgeError.exit_code and "refused the connection" in err
        assert "--password-env" in err
        monkeypatch.setenv("PUSH_PW", PASSWORD)
        code, _, err = cli(*push_, "--broker", f"127.0.0.1:{tls_port}", "--tls")
        assert code == EdgeError.exit_code and "TLS handshake failed" in err  # not our CA
        code, _, err = cli(*push_, "--broker", f"127.0.0.1:{broker.port}", "--tls-ca", pki.ca)
        assert code == EdgeError.exit_code and "is it a TLS listener?" in err  # plaintext
        code, out, err = cli(*push_, *secure)
        assert code == 0, err + broker.log_text()
        assert out.startswith(f"line-a v2 accepted by {DEVICE}")
        assert ("line-a", 2) in svc.store.held
        # The secret never shows: not in the output, not in the process's arguments.
        assert PASSWORD not in out + err and PASSWORD not in " ".join(map(str, push_ + secure))
    finally:
        svc.stop(5)
        broker.stop()


# --------------------------------------------------------------------------------------------
# Refusals: the gateway's reason, one line, AdapterRejected's exit code
# --------------------------------------------------------------------------------------------

def test_unsigned_push_is_refused_with_the_gateways_reason(gateway, workstation, mosquitto):
    """The installed command in a subprocess: progress on stderr, one `error:` line."""
    svc = gateway()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "edge-export"), "push", "--bundle", str(workstation),
         "--name", "line-a", *where(mosquitto), "--timeout", str(WAIT_S)],
        capture_output=True, text=True, timeout=2 * WAIT_S, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == AdapterRejected.exit_code, proc.stderr
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: device {DEVICE} refused line-a v2: adapter is not signed and "
                      "require_signed = true"]
    assert "warning: the envelope is unsigned" in proc.stderr
    assert ("line-a", 2) not in svc.store.held


def test_a_key_the_gateway_does_not_trust_is_refused(gateway, workstation, mosquitto, tmp_path):
    svc = gateway()
    stranger, _ = keygen(out=tmp_path / "other" / "stranger")
    code, out, err = cli("push", "--bundle", workstation, "--name", "line-a", "--key",
                         stranger, *where(mosquitto))
    assert code == AdapterRejected.exit_code and out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "refused line-a v2" in line and "not among the trusted keys" in line
    assert ("line-a", 2) not in svc.store.held


def test_refused_activation_names_the_reason(gateway, workstation, keys, mosquitto,
                                            basicmotions_bundle):
    """A bank bundle with room for 2 adapters, lines on line-a v1 and the base: v2 is held,
    but running it on a third line would need a third bank entry."""
    bank = build_bank_bundle(basicmotions_bundle.parent, 2)
    svc = gateway(bank, lines={"line-a": {"adapter": "line-a", "version": 1}, "line-b": {}})
    code, out, err = cli("push", "--bundle", workstation, "--name", "line-a", "--key",
                         keys[0], "--activate", "line-c", *where(mosquitto))
    assert code == AdapterRejected.exit_code and out == "", err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: device {DEVICE} refused to activate on line line-c: ")
    assert "bank holds 2 adapters" in line
    assert ("line-a", 2) in svc.store.held and "line-c" not in svc.routes.routes


# --------------------------------------------------------------------------------------------
# Timeouts and option errors: each names what to change
# --------------------------------------------------------------------------------------------

def test_timeout_when_no_gateway_ever_connected(workstation, keys, mosquitto):
    code, out, err = cli("push", "--bundle", workstation, "--name", "line-a", "--key",
                         keys[0], *where(mosquitto), "--timeout", "2")
    assert code == EdgeError.exit_code and out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "--timeout 2 s" in line and f"nothing is retained on factory/{DEVICE}/status" in line
    assert "--device" in line and "--prefix" in line


def test_timeout_when_the_gateway_is_offline(gateway, workstation, keys, mosquitto):
    gateway().stop(5)  # leaves its retained offline status behind
    with pytest.raises(EdgeError, match=r"--timeout 2 s; .*status says offline, shutdown"):
        push(bundle=workstation, name="line-a", key=keys[0], device=DEVICE, timeout=2,
             broker=f"127.0.0.1:{mosquitto.port}")


def test_no_broker_listening(workstation, keys):
    port = free_port()
    with pytest.raises(EdgeError, match=f"--broker 127.0.0.1:{port}: cannot connect"):
        push(bundle=workstation, name="line-a", key=keys[0], device=DEVICE, timeout=5,
             broker=f"127.0.0.1:{port}")


def test_a_broker_size_limit_is_named(workstation, keys, tmp_path):
    """Mosquitto drops a client whose message exceeds message_size_limit, without a PUBACK."""
    try:
        broker = start_broker(tmp_path / "small", extra="message_size_limit 1000\n")
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    try:
        with pytest.raises(EdgeError, match=r"during the publish of \d+ bytes .*size limit"):
            push(bundle=workstation, name="line-a", key=keys[0], device=DEVICE,
                 broker=f"127.0.0.1:{broker.port}", timeout=WAIT_S)
    finally:
        broker.stop()


@pytest.fixture
def envelope_file(workstation, keys, tmp_path) -> Path:
    file = tmp_path / "line-a.envelope"
    assert cli("sign", "--bundle", workstation, "--name", "line-a", "--key", keys[0],
               "--out", file)[0] == 0
    return file


OPTION_ERRORS = [
    # (extra options, words of the one error line); {env}/{bundle}/{key} filled in below
    ([], "pass --envelope FILE"),
    (["--bundle", "{bundle}"], "--bundle DIR with --name NAME"),
    (["--envelope", "{env}", "--key", "{key}"], "leave out --bundle and --key"),
    (["--envelope", "{env}", "--name", "line-b"], "--name line-b: the envelope holds line-a v2"),
    (["--envelope", "{env}", "--version", "3"], "--version 3: the envelope holds line-a v2"),
    (["--envelope", "{bundle}/manifest.json"], "not an adapter envelope"),
    (["--envelope", "{env}", "--broker", "gw:99999"], "--broker 'gw:99999': expected HOST"),
    (["--envelope", "{env}", "--activate", "line/b"], "--activate: line name 'line/b' is not"),
    (["--envelope", "{env}", "--device", "gw/+"], "--device 'gw/+'"),
    (["--envelope", "{env}", "--prefix", "a/#"], "--prefix 'a/#'"),
    (["--envelope", "{env}", "--timeout", "0"], "--timeout 0.0: must be > 0"),
    (["--envelope", "{env}", "--username-env", "EDGE_PUSH_TEST_UNSET"],
     "--username-env EDGE_PUSH_TEST_UNSET: environment variable is not set"),
    (["--envelope", "{env}", "--tls-cert", "{key}"], "--tls-cert and --tls-key go together"),
]


@pytest.mark.parametrize(("extra", "words"), OPTION_ERRORS)
def test_option_errors_name_the_flag(extra, words, envelope_file, workstation, keys,
                                     monkeypatch):
    monkeypatch.delenv("EDGE_PUSH_TEST_UNSET", raising=False)
    fill = {"env": envelope_file, "bundle": workstation, "key": keys[0]}
    args = [a.format(**fill) for a in extra]
    base = ["--device", DEVICE] if "--device" not in args else []
    code, out, err = cli("push", *base, *args)
    assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert words in err, err
    expected = {ConfigError.exit_code, AdapterRejected.exit_code}
    assert code in expected
