"""One wire contract (edge/contract/): every entry point accepts exactly the names the
contract's rules accept. Boundary names (64 and 65 characters, '.', a leading '-', '/',
'+', '#', non-ASCII, "base", the empty name) are walked through the config, the export
side (push, revoke, envelopes, attach), the topic builders, and a running gateway's MQTT
commands, put topics, envelopes and sensor topics; each must agree with the rule. The
preprocessing record has one format, and training normalises as the gateway does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge.config import check_config
from edge.contract import (
    ANY,
    BASE,
    NAME_RULE,
    STD_FLOOR,
    Normalizer,
    Preprocessing,
    TopicLayout,
    device_problem,
    name_problem,
    prefix_problem,
)
from edge.envelope import pack
from edge.errors import AdapterError, ConfigError, DataError, EdgeError, IncompatibleBundle
from export.onnx.adapter_files import check_adapter_name

NAMES = ["x" * 64, "x" * 65, "l" + "1" * 63, ".", "a.b", "..", ".x", "-x", "x-", "_x", "a_b",
         "a/b", "+", "#", "a+b", "a#", "ü", "line-ü", "a b", "", BASE, "press-3"]
DEVICES = ["gw-1", "x" * 64, "x" * 65, "-gw", "_gw", "gw.1", "gw/1", "+", "#", "gw ü", "", "gw 1"]
PREFIXES = ["factory", "acme/plant1", "fäctory", "a//b", "/a", "a/", "a+b", "#", "a b", "",
            "x" * 300]


def valid(name: str, what: str) -> bool:
    return name_problem(name, what) is None


def accepts(call) -> bool:
    """True when `call()` returns, False when it raises an EdgeError or ValueError."""
    try:
        call()
    except (EdgeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# The rules themselves, pinned at their boundaries
# --------------------------------------------------------------------------------------------

def test_the_rules_at_their_boundaries():
    ok_line = {"x" * 64, "l" + "1" * 63, "a.b", "x-", "a_b", BASE, "press-3"}
    assert {n for n in NAMES if valid(n, "line")} == ok_line
    assert {n for n in NAMES if valid(n, "adapter")} == ok_line - {BASE}
    assert "reserved for the base model" in name_problem(BASE, "adapter")
    assert {d for d in DEVICES if device_problem(d) is None} == {"gw-1", "x" * 64, "-gw", "_gw"}
    assert {p for p in PREFIXES if prefix_problem(p) is None} == {
        "factory", "acme/plant1", "fäctory", "x" * 300}


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------

def _config_ok(tmp_path: Path, body: str) -> bool:
    path = tmp_path / "gw.toml"
    path.write_text(body, encoding="utf-8")
    return check_config(path) == []


@pytest.mark.parametrize("name", NAMES)
def test_config_agrees(tmp_path, name):
    key = json.dumps(name)  # a TOML basic string: JSON's escapes are TOML's
    line = f'[device]\nid = "gw-1"\n[topics.lines.{key}]\n'
    assert _config_ok(tmp_path, line) == valid(name, "line")
    adapter = f'[device]\nid = "gw-1"\n[topics.lines.l1]\nadapter = {key}\n'
    # "base" is no adapter name: in a route it means the base model
    assert _config_ok(tmp_path, adapter) == (valid(name, "adapter") or name == BASE)


@pytest.mark.parametrize("device", DEVICES)
def test_device_ids_agree(tmp_path, device):
    from export.fleet.link import check_gateway

    rule = device_problem(device) is None
    assert _config_ok(tmp_path, f"[device]\nid = {json.dumps(device)}\n") == rule
    assert accepts(lambda: check_gateway(device, "factory", 1.0)) == rule
    assert accepts(lambda: TopicLayout("factory", device)) == (rule or device == ANY)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefixes_agree(tmp_path, prefix):
    from export.fleet.link import check_gateway

    rule = prefix_problem(prefix) is None
    body = f'[device]\nid = "gw-1"\n[topics]\nprefix = {json.dumps(prefix)}\n'
    assert _config_ok(tmp_path, body) == rule
    assert accepts(lambda: check_gateway("gw-1", prefix, 1.0)) == rule
    assert accepts(lambda: TopicLayout(prefix, "gw-1")) == rule


# --------------------------------------------------------------------------------------------
# The topic builders and the export side
# --------------------------------------------------------------------------------------------

def envelope(name: str, version: int = 1) -> bytes:
    """An unsigned envelope whose header names `name` (its body is no real adapter)."""
    body = b"\0"
    return pack({"name": name, "version": version, "kind": "lora", "rank": 1,
                 "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                 "base_fingerprint": "0" * 64}, body)


def envelope_file(path: Path, name: str) -> Path:
    path.write_bytes(envelope(name))
    return path


@pytest.mark.parametrize("name", NAMES)
def test_topics_and_export_side_agree(tmp_path, keys, name):
    from export.fleet.push import check_activate, load_envelope
    from export.fleet.revoke import signed_revoke

    topics = TopicLayout("factory", "gw-1")
    line, adapter = valid(name, "line"), valid(name, "adapter")
    assert accepts(lambda: topics.results(name)) == (line or name == ANY)
    assert accepts(lambda: topics.sensors(name)) == (line or name == ANY)
    assert accepts(lambda: topics.put(name)) == (adapter or name == ANY)
    assert accepts(lambda: check_activate(name)) == line  # push --activate LINE
    assert accepts(lambda: signed_revoke(name=name, version=1, key=keys[0])) == adapter
    file = envelope_file(tmp_path / "e.bin", name)
    assert accepts(lambda: load_envelope(envelope=file)) == adapter


@pytest.mark.parametrize("name", NAMES)
def test_attach_agrees(name):
    assert accepts(lambda: check_adapter_name(name)) == valid(name, "adapter")


def test_the_export_errors_name_the_flag(tmp_path, keys):
    from export.fleet.link import check_gateway
    from export.fleet.push import check_activate, load_envelope
    from export.fleet.revoke import signed_revoke

    with pytest.raises(ConfigError, match=r"^--device 'gw/1': must be 1-64"):
        check_gateway("gw/1", "factory", 1.0)
    with pytest.raises(ConfigError, match=r"^--prefix 'a\+b': must be topic levels"):
        check_gateway("gw-1", "a+b", 1.0)
    with pytest.raises(ConfigError, match=rf"^--activate: line name '\.x' is not {NAME_RULE}"):
        check_activate(".x")
    with pytest.raises(ConfigError, match="^--name: adapter name 'base' is reserved"):
        signed_revoke(name=BASE, version=1, key=keys[0])
    with pytest.raises(AdapterError, match="^the envelope's adapter name 'a/b' is not"):
        load_envelope(envelope=envelope_file(tmp_path / "e.bin", "a/b"))


# --------------------------------------------------------------------------------------------
# The preprocessing record and the one normalisation
# --------------------------------------------------------------------------------------------

def test_the_preprocessing_record_has_one_format():
    from export.data import ChannelStats

    X = np.random.default_rng(0).normal(3.0, 2.0, (5, 2, 7)).astype(np.float32)  # (N, C, L)
    record = Preprocessing.of(ChannelStats.from_data(X), 7, ["a", "b"])
    doc = json.loads(json.dumps(record.to_dict()))
    assert set(doc) == {"length", "channel_names", "mean", "std"}  # as manifest.json has it
    assert Preprocessing.from_dict(doc) == record
    legacy = {"length": 7, "channel_stats": {"mean": doc["mean"], "std": doc["std"]}}
    assert Preprocessing.from_dict(legacy) == record.model_copy(
        update={"channel_names": ["ch0", "ch1"]})  # files from before: read, never written
    for empty in (None, {}, {"length": 7}, {"length": 7, "channel_stats": {}}):
        assert Preprocessing.from_dict(empty) is None  # trained without normalisation
    for bad, words in (({**doc, "std": [1.0, 0.0]}, "std > 0"),
                       ({**doc, "mean": [0.0]}, "equal-length"),
                       ({**doc, "length": "long"}, "length"),
                       ({**doc, "extra": 1}, "extra"),
                       ({"length": 7, "channel_stats": {"mean": [0.0]}}, "exactly the keys")):
        with pytest.raises(DataError, match=words):
            Preprocessing.from_dict(bad)


def test_training_and_the_gateway_normalise_alike():
    from export.data import ChannelStats

    X = np.random.default_rng(1).normal(-1.0, 5.0, (6, 3, 11)).astype(np.float32)
    X[:, 2] = 4.0  # a constant channel: std floored, never a division by zero
    stats = ChannelStats.from_data(X)
    gateway = Normalizer.from_preprocessing(Preprocessing.of(stats, 11, ["x", "y", "z"]), 3)
    assert isinstance(stats, Normalizer) and stats.std[2] == np.float32(STD_FLOOR)
    np.testing.assert_array_equal(gateway.apply(X), stats.apply(X))  # (N, C, L), bit for bit
    np.testing.assert_array_equal(gateway.apply(X[0]), stats.apply(X)[0])  # one window (C, L)
    with pytest.raises(DataError):  # training data is the problem on the training side
        stats.apply(X[:, :2])
    with pytest.raises(IncompatibleBundle):  # the bundle is, on the gateway
        gateway.apply(X[:, :2])


# --------------------------------------------------------------------------------------------
# A running gateway: MQTT commands, put topics, envelopes, sensor topics
# --------------------------------------------------------------------------------------------

DEVICE = "gw-test"


def _refused_by_rule(reason: str) -> bool:
    return NAME_RULE in reason or "reserved for the base model" in reason \
        or "no line level" in reason  # the empty line level of a sensor topic


class Probe:
    """Messages to a gateway, each answered once: an error naming its id, or (commands that
    went through) the retained adapter state whose `last` names it."""

    def __init__(self, mosquitto) -> None:
        from test_runtime import Collector, Publisher

        self.topics = TopicLayout("factory", DEVICE)
        self.collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
        self.pub = Publisher(mosquitto.port)

    def send(self, topic: str, payload: bytes | dict) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.pub.raw(topic, data)

    def answers(self, ids: list[str]) -> dict[str, str | None]:
        """id -> the refusal's reason, or None when the command was applied."""
        def found(c) -> dict:
            out = {e["id"]: e["reason"] for e in c.docs("/errors")}
            for state in c.docs("/adapters/state"):
                last = state.get("last") or {}
                if last.get("result") == "done":
                    out[last.get("id")] = None
            return out

        self.pub.flush()
        assert self.collector.wait(lambda c: all(i in found(c) for i in ids)), (
            ids, self.collector.docs("/errors")[-5:])
        got = found(self.collector)
        return {i: got[i] for i in ids}


def _level_ok(name: str) -> bool:
    """Can `name` be one level of a published topic? ('/' splits it, wildcards are refused
    by the broker: those names can never reach the gateway through a topic.)"""
    return not any(c in name for c in "/+#")


def test_a_gateway_agrees_over_mqtt(service, mosquitto):
    service(adapters={"require_signed": False})
    probe = Probe(mosquitto)
    t = probe.topics
    for i, name in enumerate(NAMES):
        sent: dict[str, str] = {}  # id -> the kind of name it probes
        for kind, topic, doc in (
                ("line", t.activate, {"line": name, "name": BASE, "id": f"act-line-{i:04}"}),
                ("adapter", t.activate, {"line": "line-b", "name": name,
                                         "id": f"act-name-{i:04}"}),
                ("line", t.rollback, {"line": name, "id": f"rollback-{i:04}"}),
                ("adapter", t.revoke, {"name": name, "version": 1, "id": f"revoke-{i:04}"})):
            probe.send(topic, doc)
            sent[doc["id"]] = kind
        # an envelope header naming it, on a valid put topic (versions tell answers apart)
        probe.send(t.put("line-a"), envelope(name, 1000 + i))
        sent[f"{name[:64]}.v{1000 + i}"] = "adapter"
        if _level_ok(name):  # the name as the topic level
            # by hand: the topic builders refuse the bad names this test sends
            probe.send(f"{t.put(ANY)[:-1]}{name}", envelope("line-a", 2000 + i))
            sent[f"line-a.v{2000 + i}"] = "adapter"
            probe.send(f"factory/{name}/sensors/s", {"id": f"sensor-{i:04}", "values": []})
            sent[f"sensor-{i:04}"] = "line"
        answers = probe.answers(list(sent))
        for msg_id, kind in sent.items():
            reason = answers[msg_id] or ""
            rule = valid(name, kind) or (kind == "adapter" and name == BASE
                                         and msg_id.startswith("act-name"))
            assert (not _refused_by_rule(reason)) == rule, (name, msg_id, reason)
    probe.collector.close()
    probe.pub.close()

