"""Field-trial findings on adapter control and messages, against a real Mosquitto: a signed
revoke that withdraws a version (and stays in force across a restart), commands that refuse
fields they do not know, one name rule at every entry point, and error reports a person and
a strict JSON parser can read. Each case keeps its minimal input."""

from __future__ import annotations

import json
import re

import pytest
from adapter_versions import derive_version, envelope
from click.testing import CliRunner
from reference_bundle import sample_windows
from test_runtime import Collector, Publisher, mosquitto_pub

from export.cli import main as export_main
from export.fleet.revoke import signed_revoke
from export.signing import keygen

DEVICE = "gw-test"
BASE = f"factory/{DEVICE}/adapters"


def state(collector: Collector) -> dict:
    docs = collector.docs("/adapters/state")
    return docs[-1] if docs else {}


def wait_state(collector: Collector, check) -> dict:
    assert collector.wait(lambda c: check(state(c))), (state(collector),
                                                       collector.docs("/errors")[-3:])
    return state(collector)


def revoke_cli(port: int, key, version: int, reason: str = "saturates on lot 42") -> object:
    return CliRunner().invoke(export_main, [
        "revoke", "--device", DEVICE, "--broker", f"127.0.0.1:{port}", "--name", "line-a",
        "--version", str(version), "--key", str(key), "--reason", reason, "--timeout", "20"])


@pytest.mark.valid_inputs  # a signed revoke as edge-export writes it
def test_revoke_withdraws_a_version_and_lines_fall_back(swap_config, started, mosquitto,
                                                        keys, basicmotions_bundle, tmp_path):
    """v2 and v3 accepted; line-a follows the newest (v3), line-d is pinned to v3. A signed
    `edge-export revoke` of v3: both fall back to v2, its file is gone, the state says why,
    and a replay of v3 (or an older version) stays refused, also after a restart."""
    collector = Collector(mosquitto.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    lines = {"line-a": {"adapter": "line-a"}, "line-b": {},
             "line-d": {"adapter": "line-a", "version": 1}}
    config = swap_config(lines=lines, broker={"clean_start": False, "session_expiry": 60})
    svc = started(config)
    versions = {v: derive_version(basicmotions_bundle, "line-a", v, tmp_path / "v")
                for v in (2, 3)}
    pub = Publisher(mosquitto.port)
    for v in (2, 3):
        pub.raw(f"{BASE}/put/line-a", envelope(*versions[v], keys[0]))
        wait_state(collector, lambda s, v=v: s.get("lines", {}).get("line-a", {})
                   .get("version") == v)
    pub.raw(f"{BASE}/activate", json.dumps({"line": "line-d", "name": "line-a",
                                            "version": 3}).encode())
    wait_state(collector, lambda s: s["lines"]["line-d"]["version"] == 3)

    result = revoke_cli(mosquitto.port, keys[0], 3)
    assert result.exit_code == 0, result.output
    assert "line-a v3 revoked on gw-test" in result.output
    assert "line-a -> line-a v2" in result.output and "line-d -> line-a v2" in result.output
    # The CLI's own subscriber saw the new state; this collector may get it a moment later.
    doc = wait_state(collector, lambda s: bool(s.get("revoked")))
    assert [(r["name"], r["version"], r["reason"]) for r in doc["revoked"]] == [
        ("line-a", 3, "saturates on lot 42")]
    assert {h["version"] for h in doc["held"]} == {1, 2}
    assert not list((svc.cfg.device.state_dir / "adapters").glob("line-a.v3.*"))
    x, _, _ = sample_windows(1)
    pub.json("factory/line-a/sensors/s1", "after-revoke", x[0])
    assert collector.wait(lambda c: c.docs("/inference"))
    assert collector.docs("/inference")[-1]["adapter_version"] == 2

    svc.stop()
    svc = started(config)  # the revocation outlives the process
    for v in (3, 2):  # the revoked version, then one older than it
        pub.raw(f"{BASE}/put/line-a", envelope(*versions[v], keys[0]))
    entry, path = derive_version(basicmotions_bundle, "line-a", 3, tmp_path / "again",
                                 scale=9.0)
    pub.raw(f"{BASE}/put/line-a", envelope(entry, path, keys[0]))
    pub.close()
    assert collector.wait(lambda c: len(c.docs("/errors")) >= 2)
    reasons = [d["reason"] for d in collector.docs("/errors")]
    assert reasons[0] == ("line-a version 3 was revoked (saturates on lot 42); publish "
                          "version 4")
    assert reasons[1] == "line-a version 3 was revoked (saturates on lot 42); publish version 4"
    # v2 is held already (same bytes): no error, and no line moves back to it by itself
    assert svc.routes.routes["line-a"].version == 2
    collector.close()


@pytest.mark.parametrize("case, words", [
    ("unsigned", "revoke command is not signed and require_signed = true"),
    ("foreign key", "revoke command signed by key"),
    ("forged", "revoke command signature is invalid"),
    ("adapter context", "revoke command signature is invalid"),
    ("unknown field", "revoke: unknown field 'evil'; the fields are name, version, reason"),
    ("bad version", "revoke: 'version' must be an integer from 1 to"),
])
def test_bad_revokes_change_nothing(swap_config, started, mosquitto, keys, tmp_path, case,
                                    words):
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    svc = started(swap_config())
    doc = signed_revoke(name="line-a", version=1, key=keys[0], request="r1")
    if case == "unsigned":
        doc = {k: v for k, v in doc.items() if k not in ("signature", "key_id")}
    elif case == "foreign key":
        doc = signed_revoke(name="line-a", version=1, key=keygen(out=tmp_path / "o")[0])
    elif case == "forged":
        doc = {**doc, "version": 2}
    elif case == "adapter context":  # an adapter signature must not pass for a command
        import base64

        from edge.envelope import canonical
        from export.signing import load_private_key
        body = {k: v for k, v in doc.items() if k != "signature"}
        doc["signature"] = base64.b64encode(load_private_key(keys[0]).sign(
            canonical(body))).decode()
    elif case == "unknown field":
        doc = {**doc, "evil": 1}
    else:
        doc = {**doc, "version": "1"}
    pub = Publisher(mosquitto.port)
    pub.raw(f"{BASE}/revoke", json.dumps(doc).encode())
    pub.close()
    assert collector.wait(lambda c: c.docs("/errors"))
    assert words in collector.docs("/errors")[0]["reason"]
    assert svc.store.revoked.describe() == [] and svc.routes.routes["line-a"].version == 1
    collector.close()


@pytest.mark.parametrize("topic, payload, words", [
    ("activate", {"line": "line-b", "name": "line-a", "evil": 1},
     "activate: unknown field 'evil'; the fields are line, name, version, id"),
    ("rollback", {"line": "line-a", "version": 1},
     "rollback: unknown field 'version'; the fields are line, id"),
    ("activate", {"line": "..", "name": "line-a"}, "'line': line name '..' is not 1-64"),
    ("activate", {"line": "line-b", "name": ".."}, "'name': adapter name '..' is not 1-64"),
    ("put/..", None, "put/<name>: adapter name '..' is not 1-64"),
    ("put/.x", None, "put/<name>: adapter name '.x' is not 1-64"),
])
def test_commands_are_strict_about_fields_and_names(swap_config, started, mosquitto, keys,
                                                    basicmotions_bundle, tmp_path, topic,
                                                    payload, words):
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    svc = started(swap_config())
    before = svc.routes.describe()
    if payload is None:  # a valid envelope, on a topic whose name level breaks the rule
        data = envelope(*derive_version(basicmotions_bundle, "line-a", 2, tmp_path), keys[0])
    else:
        data = json.dumps(payload).encode()
    pub = Publisher(mosquitto.port)
    pub.raw(f"{BASE}/{topic}", data)
    pub.close()
    assert collector.wait(lambda c: c.docs("/errors"))
    assert words in collector.docs("/errors")[0]["reason"]
    assert svc.routes.describe() == before
    collector.close()


@pytest.mark.parametrize("topic, payload, field, words", [
    ("factory//sensors/imu-1", b'{"id": "e1", "values": []}', "reason",
     "topic has no line level after 'factory'"),
    ("factory/../sensors/imu-1", b'{"id": "e2", "values": []}', "reason",
     "line name '..' is not 1-64"),
    ("factory/line-b/sensors/s", b'{"id": "a\\udc80b", "values": "x"}', "id", "a\ufffdb"),
])
def test_error_reports_are_one_line_of_valid_utf8_json(service, mosquitto, topic, payload,
                                                       field, words):
    """A person reads what was wrong in one line; a strict JSON parser reads the report (no
    lone-surrogate escapes, which strict parsers refuse)."""
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/errors",))
    service()
    mosquitto_pub(mosquitto.port, topic, message=payload.decode())
    assert collector.wait(lambda c: c.messages)
    raw = collector.messages[0][1]
    assert not re.search(rb"\\u[dD][89a-fA-F]", raw), raw  # no surrogate escapes
    doc = json.loads(raw.decode("utf-8", "strict"))
    assert words in doc[field] and "\n" not in doc["reason"]
    collector.close()
