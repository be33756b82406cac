"""Hot swap against a real Mosquitto: adapters pushed over MQTT and dropped in the watch
folder while real BasicMotions windows stream on several lines; every result checked
against what the named adapter version gives offline."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from adapter_versions import Offline, derive_version, envelope
from reference_bundle import build_bank_bundle, sample_windows
from test_runtime import WAIT_S, Collector, Publisher

from edge.engine import DeviceSlots
from export.signing import keygen

DEVICE = "gw-test"
PUT = f"factory/{DEVICE}/adapters/put/line-a"
ACTIVATE = f"factory/{DEVICE}/adapters/activate"
ROLLBACK = f"factory/{DEVICE}/adapters/rollback"
SWAPS = 50


def state_of(collector: Collector) -> dict | None:
    docs = collector.docs("/adapters/state")
    return docs[-1] if docs else None


def wait_line(collector: Collector, line: str, version: int | None) -> dict:
    def ok(c: Collector) -> bool:
        state = state_of(c)
        return state is not None and state["lines"].get(line, {}).get("version") == version
    assert collector.wait(ok), (state_of(collector), collector.docs("/errors")[-3:])
    return state_of(collector)


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Write beside the folder's view, then rename in: the documented way to drop a file."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


class FastCollector(Collector):
    """Collector for thousands of messages: each parsed once on arrival, kept by kind, so
    a wait predicate costs O(1) (it runs at every arrival, in the service's process)."""

    KINDS = ("/inference", "/errors", "/adapters/state")

    def __init__(self, port: int, topics: tuple[str, ...]) -> None:
        self.by_kind: dict[str, list[dict]] = {k: [] for k in self.KINDS}
        self.ids: set[str] = set()
        super().__init__(port, topics)

    def _on_message(self, client, userdata, msg) -> None:
        kind = next((k for k in self.KINDS if msg.topic.endswith(k)), None)
        if kind is None:
            return
        doc = json.loads(msg.payload)
        with self._cond:
            self.by_kind[kind].append(doc)
            if kind == "/inference":
                self.ids.add(doc["id"])
            self._cond.notify_all()

    def docs(self, topic_part: str) -> list[dict]:
        with self._cond:
            return list(self.by_kind[topic_part])


class Stream(threading.Thread):
    """Publishes windows round-robin on `lines` until stopped; remembers id -> window row."""

    def __init__(self, port: int, lines: list[str], x: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(port)
        self.lines, self.x, self.n = lines, x, len(x)
        self.sent: dict[str, tuple[str, int]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            for line in self.lines:
                msg_id = f"{line}-{i}"
                self.sent[msg_id] = (line, i % self.n)
                self.pub.json(f"factory/{line}/sensors/s1", msg_id, self.x[i % self.n])
            i += 1
            time.sleep(0.01)
        self.pub.close()


@pytest.mark.parametrize("io_binding, swaps", [("auto", SWAPS), ("on", 8)])
def test_fifty_swaps_over_mqtt_and_folder(swap_config, started, mosquitto, keys,
                                          basicmotions_bundle, tmp_path, io_binding, swaps):
    """50 new versions, alternately pushed over MQTT and dropped in the folder, plus
    activations of line-c, while three lines stream: every message gets exactly one result,
    each result equals the named version offline, and no line ever goes back a version.
    io_binding "on": every version is uploaded once and bound through IOBinding, as on a
    GPU (the CPU device here), and a swap is a rebind."""
    x, _, _ = sample_windows(20)
    versions = {v: derive_version(basicmotions_bundle, "line-a", v, tmp_path / "versions")
                for v in range(2, swaps + 2)}
    collector = FastCollector(mosquitto.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    svc = started(swap_config(device={"io_binding": io_binding}))
    assert svc.engine.bound == (io_binding == "on")
    stream = Stream(mosquitto.port, ["line-a", "line-b", "line-c"], x)
    stream.start()
    probe, inbox = Publisher(mosquitto.port), tmp_path / "inbox"
    try:
        for v in range(2, swaps + 2):
            data = envelope(*versions[v], key=keys[0])
            if v % 2:
                drop(inbox, f"line-a.v{v}.edgeadp", data)
            else:
                probe.raw(PUT, data)
            wait_line(collector, "line-a", v)
            if v % 5 == 0:
                probe.raw(ACTIVATE, json.dumps({"line": "line-c", "name": "line-a",
                                                "version": v - 1}).encode())
                wait_line(collector, "line-c", v - 1)
            probe_id = f"probe-{v}"  # the new version serves at least this message
            probe.json("factory/line-a/sensors/s1", probe_id, x[v % len(x)])
            stream.sent[probe_id] = ("line-a", v % len(x))
            assert collector.wait(lambda c, want=probe_id: want in c.ids), (
                probe_id, len(stream.sent), len(collector.docs("/inference")),
                svc.counters.totals, svc.outbox.count, svc.queue.qsize())
    finally:
        stream.halt.set()
        stream.join(WAIT_S)
        probe.close()
    sent = dict(stream.sent)
    assert collector.wait(lambda c: len(c.by_kind["/inference"]) >= len(sent))
    time.sleep(0.3)  # a duplicate would arrive right behind the last answer
    collector.close()

    results = collector.docs("/inference")
    print(f"sent {len(sent)}, results {len(results)}, swaps {swaps} + "
          f"{swaps // 5} activations")
    assert collector.docs("/errors") == []
    counts = Counter(d["id"] for d in results)
    assert counts == Counter(list(sent)), "every message exactly one result"
    check_values(results, sent, x, versions, basicmotions_bundle)
    newest: dict[str, int] = defaultdict(int)
    for doc in results:  # in arrival order, which is the gateway's publish order
        if doc["adapter_version"] is not None:
            assert doc["adapter_version"] >= newest[doc["line"]], doc
            newest[doc["line"]] = doc["adapter_version"]
    served = {d["adapter_version"] for d in results if d["line"] == "line-a"}
    # the B scales of v2 and v9 are 1.0 and 2.75 (adapter_versions.scale_for)
    low, high = (Offline(basicmotions_bundle).scores(versions[v][1], versions[v][0], x)
                 for v in (2, 9))
    assert np.abs(low - high).max() > 10 * 2e-5, "versions must be told apart by their scores"
    assert set(range(2, swaps + 2)) <= served


def check_values(results: list[dict], sent: dict, x: np.ndarray, versions: dict,
                 bundle: Path) -> None:
    """Each result's scores equal the offline run of the version it names."""
    offline = Offline(bundle)
    manifest_entry = offline.manifest.adapter("line-a", 1)
    cache: dict = {}
    for doc in results:
        line, row = sent[doc["id"]]
        version = doc["adapter_version"]
        if version not in cache:
            if version is None:
                cache[version] = offline.scores(None, None, x)
            elif version == 1:
                cache[version] = offline.scores(bundle / manifest_entry.file, manifest_entry, x)
            else:
                entry, path = versions[version]
                cache[version] = offline.scores(path, entry, x)
        assert doc["adapter"] == ("base" if version is None else "line-a")
        assert doc["line"] == line
        labels = list(doc["scores"])
        np.testing.assert_allclose([doc["scores"][k] for k in labels], cache[version][row],
                                   atol=2e-5, err_msg=str(doc))


# --------------------------------------------------------------------------------------------
# Refusals: each with its reason, the live adapter unchanged
# --------------------------------------------------------------------------------------------

def _bad_envelopes(bundle: Path, keys: tuple[Path, Path], tmp: Path) -> list[tuple]:
    """(what, envelope bytes, words the reason must contain) for each refusal."""
    from edge.envelope import MAGIC, MAX_HEADER, pack, unpack
    from export.signing import envelope_for

    out = tmp / "bad"
    entry, path = derive_version(bundle, "line-a", 2, out)
    good = envelope(entry, path, keys[0])
    header, body = unpack(good, 1 << 30)
    corrupt = bytearray(good)
    corrupt[-20] ^= 0xFF  # a flipped bit in the adapter bytes
    other_key = keygen(out=tmp / "other" / "k")[0]
    garbage = b"\x00not an onnx adapter" * 50
    wrong_base = entry.model_copy(update={"base_fingerprint": "0" * 64})

    def broken(version: int, edit) -> bytes:
        bad_entry, bad_path = derive_version(bundle, "line-a", version, out, edit=edit)
        return envelope(bad_entry, bad_path, keys[0])

    def reshaped(arrays: dict) -> dict:
        name = next(k for k in arrays if k.endswith("lora_A"))
        return {**arrays, name: np.zeros((arrays[name].shape[0] + 1, arrays[name].shape[1]),
                                         np.float32)}

    def nan(arrays: dict) -> dict:
        name = next(k for k in arrays if k.endswith("lora_B"))
        value = arrays[name].copy()
        value.flat[0] = np.nan
        return {**arrays, name: value}

    def huge(arrays: dict) -> dict:  # finite, but the line answers one class for everything
        name = next(k for k in arrays if k.endswith("lora_B"))
        value = arrays[name].copy()
        value.flat[np.argmax(np.abs(value))] = 1e30
        return {**arrays, name: value}

    def resigned(**changes) -> bytes:
        return envelope_for(entry.model_copy(update=changes), path.read_bytes(), key=keys[0])

    return [
        ("corrupted", bytes(corrupt), "sha256"),
        ("not an adapter", envelope_for(entry.model_copy(update={"version": 3}), garbage,
                                        key=keys[0]), "not a valid .onnx_adapter"),
        ("wrong base", envelope_for(wrong_base, path.read_bytes(), key=keys[0]),
         "trained on base"),
        ("wrong shapes", broken(4, reshaped), "shape"),
        ("NaN", broken(5, nan), "NaN"),
        ("unsigned", envelope(entry, path, None), "not signed"),
        ("foreign key", envelope(entry, path, other_key), "not among the trusted keys"),
        ("forged signature", pack({**header, "version": 6}, body), "signature is invalid"),
        ("oversize", envelope_for(entry, path.read_bytes() + b"\0" * 70_000, key=keys[0]),
         "exceeds limits.max_adapter_bytes"),
        ("oversize envelope", good + b"\0" * (65_536 + MAX_HEADER + 13), "exceeds the limit"),
        ("bad magic", b"EDGEADP0" + good[len(MAGIC):], "bad magic"),
        ("huge weight", envelope(*derive_version(bundle, "line-a", 7, out, edit=huge,
                                                 keep_original_reference=True), keys[0]),
         "does not reproduce the outputs its exporter recorded: max |difference|"),
        ("no expected outputs", resigned(reference_logits=None),
         "records no expected outputs"),
        ("other reference rows", resigned(reference_sha256="0" * 64),
         "recorded for other reference inputs"),
        ("name '..'", resigned(name=".."), "adapter name '..' is not 1-64 letters"),
    ]


def test_bad_adapters_are_refused_with_their_reason(swap_config, started, mosquitto, keys,
                                                    basicmotions_bundle, tmp_path):
    cfg = swap_config(limits={"max_payload_bytes": 65536, "queue_bound": 1000,
                              "max_adapter_bytes": 65536})
    collector = Collector(mosquitto.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    svc = started(cfg)
    before = wait_line(collector, "line-a", 1)["lines"]
    cases = _bad_envelopes(basicmotions_bundle, keys, tmp_path)
    pub, inbox = Publisher(mosquitto.port), tmp_path / "inbox"
    for i, (what, data, words) in enumerate(cases):
        if i % 3 == 2:  # some through the folder
            drop(inbox, f"bad-{i}.edgeadp", data)
        else:
            pub.raw(PUT, data)
        assert collector.wait(lambda c, n=i + 1: len(c.docs("/errors")) >= n), what
        reason = collector.docs("/errors")[i]["reason"]
        print(f"{what:>20}: {reason}")
        assert words in reason, (what, reason)
        assert "\n" not in reason and "onnxruntime_src" not in reason, reason
    x, _, _ = sample_windows(1)
    pub.json("factory/line-a/sensors/s1", "after", x[0])
    pub.close()
    assert collector.wait(lambda c: c.docs("/inference"))
    assert collector.docs("/inference")[0]["adapter_version"] == 1
    assert state_of(collector)["lines"] == before
    assert sorted(h["version"] for h in svc.store.describe()) == [1]
    assert sorted(p.name for p in (svc.cfg.device.state_dir / "adapters").iterdir()) == []
    rejected = sorted((inbox / "rejected").glob("*.reason"))
    assert len(rejected) == len(cases) // 3 and not list((inbox / "accepted").iterdir())
    collector.close()


def test_same_version_other_bytes_and_older_versions_are_refused(
        swap_config, started, mosquitto, keys, basicmotions_bundle, tmp_path):
    """No silent replacement and no replay of an older signed version."""
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    started(swap_config())
    pub = Publisher(mosquitto.port)
    for version, scale in ((3, 1.5), (3, 1.5), (3, 0.7), (2, 1.2)):
        entry, path = derive_version(basicmotions_bundle, "line-a", version,
                                     tmp_path / f"s{scale}", scale=scale)
        pub.raw(PUT, envelope(entry, path, keys[0]))
    pub.close()
    assert collector.wait(lambda c: len(c.docs("/errors")) >= 2)
    reasons = [d["reason"] for d in collector.docs("/errors")]
    assert "already held with other content" in reasons[0]
    assert "older than the newest held version 3" in reasons[1]
    assert state_of(collector)["lines"]["line-a"]["version"] == 3
    assert state_of(collector)["last"]["result"] in ("already held", "refused")
    collector.close()


# --------------------------------------------------------------------------------------------
# Rollback, restart, the memory budget
# --------------------------------------------------------------------------------------------

@pytest.mark.valid_inputs  # envelopes, activate and rollback: all good ones
def test_activate_rollback_and_restart_keep_the_routing(swap_config, started, mosquitto, keys,
                                                        basicmotions_bundle, tmp_path):
    x, _, _ = sample_windows(2)
    entry, path = derive_version(basicmotions_bundle, "line-a", 2, tmp_path / "v")
    collector = Collector(mosquitto.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    cfg = swap_config()
    svc = started(cfg)
    pub = Publisher(mosquitto.port)
    pub.raw(PUT, envelope(entry, path, keys[0]))
    wait_line(collector, "line-a", 2)
    pub.raw(ACTIVATE, b'{"line": "line-b", "name": "line-a", "version": 2, "id": "a1"}')
    wait_line(collector, "line-b", 2)
    pub.raw(ACTIVATE, b'{"line": "line-b", "name": "line-a", "version": 1}')
    wait_line(collector, "line-b", 1)
    pub.raw(ROLLBACK, b'{"line": "line-b"}')
    state = wait_line(collector, "line-b", 2)
    assert state["lines"]["line-b"]["follow"] == "pinned"
    svc.stop()

    svc = started(cfg)  # a restart: held adapters and the routing come back from disk
    assert {h["version"]: h["source"] for h in svc.store.describe()} == {1: "bundle",
                                                                         2: "mqtt"}
    assert svc.routes.describe()["line-b"] == {"adapter": "line-a", "version": 2}
    assert svc.routes.describe()["line-a"] == {"adapter": "line-a", "version": 2}
    pub.json("factory/line-b/sensors/s1", "b", x[0])
    assert collector.wait(lambda c: any(d["id"] == "b" for d in c.docs("/inference")))
    result = next(d for d in collector.docs("/inference") if d["id"] == "b")
    assert (result["adapter"], result["adapter_version"]) == ("line-a", 2)
    np.testing.assert_allclose(list(result["scores"].values()),
                               Offline(basicmotions_bundle).scores(path, entry, x)[0],
                               atol=2e-5)
    pub.raw(ROLLBACK, b'{"line": "line-b"}')  # the history survived the restart too
    wait_line(collector, "line-b", None)  # v1 was undone before: back to the base
    pub.raw(ROLLBACK, b'{"line": "line-b", "id": "r"}')
    assert collector.wait(lambda c: c.docs("/errors"))
    assert collector.docs("/errors")[0]["id"] == "r"
    assert "no earlier adapter" in collector.docs("/errors")[0]["reason"]
    pub.close()
    collector.close()


def test_memory_budget_drops_idle_adapters_and_reloads_them(swap_config, started, keys,
                                                            basicmotions_bundle, tmp_path):
    """A budget of ~2 adapters with 6 held: routed ones stay loaded, idle ones are dropped
    and come back from disk when a line needs them."""
    cfg = swap_config(adapters={"require_signed": True, "trusted_keys": [str(keys[1])],
                                "memory_budget_mb": 0.016})
    svc = started(cfg)
    for v in range(2, 8):
        entry, path = derive_version(basicmotions_bundle, "line-a", v, tmp_path / "v")
        held, new = svc.store.accept(envelope(entry, path, keys[0]), "test")
        assert new
    assert svc.store.cache.bytes <= 16 * 1024 + 2 * held.size
    assert svc.store.cache.evictions >= 3
    loaded = [h["version"] for h in svc.store.describe() if h["loaded"]]
    assert 1 in loaded  # line-c is pinned to v1: never dropped
    table = svc.tables.build(svc.control.lines.activate("line-b", "line-a", 2))
    assert table.routes["line-b"].session_adapter is not None
    assert svc.store.cache.holds(("line-a", 2))


# --------------------------------------------------------------------------------------------
# A bank bundle: one run for rows of different lines
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("io_binding", ["auto", "on"])
def test_bank_bundle_serves_mixed_lines_in_one_run(swap_config, started, mosquitto, keys,
                                                   basicmotions_bundle, tmp_path, io_binding):
    bank = build_bank_bundle(basicmotions_bundle.parent, 4)
    x, _, _ = sample_windows(12)
    entry, path = derive_version(basicmotions_bundle, "line-a", 2, tmp_path / "v")
    collector = Collector(mosquitto.port, ("factory/+/inference", f"factory/{DEVICE}/#"))
    svc = started(swap_config(lines={"line-a": {"adapter": "line-a", "version": 1},
                                     "line-b": {}, "line-c": {"adapter": "line-a"}},
                              device={"io_binding": io_binding}), bank)
    assert svc.engine.banked and svc.routes.bank is not None
    assert isinstance(svc.routes.bank, DeviceSlots) == (io_binding == "on")
    pub = Publisher(mosquitto.port)
    pub.raw(PUT, envelope(entry, path, keys[0]))
    wait_line(collector, "line-c", 2)
    runs = []
    for name in ("run", "run_with_features"):  # the drift watch takes the features too
        real = getattr(svc.engine, name)
        setattr(svc.engine, name,
                lambda *a, real=real, **k: runs.append(len(a[0])) or real(*a, **k))
    lines = ["line-a", "line-b", "line-c"]
    for i in range(len(x)):
        pub.json(f"factory/{lines[i % 3]}/sensors/s1", f"m{i}", x[i])
    pub.close()
    assert collector.wait(lambda c: len(c.docs("/inference")) >= len(x))
    offline = Offline(basicmotions_bundle)
    v1 = offline.manifest.adapter("line-a", 1)
    want = {"line-a": offline.scores(basicmotions_bundle / v1.file, v1, x),
            "line-b": offline.scores(None, None, x), "line-c": offline.scores(path, entry, x)}
    for doc in collector.docs("/inference"):
        row = int(doc["id"][1:])
        np.testing.assert_allclose(list(doc["scores"].values()), want[doc["line"]][row],
                                   atol=2e-5)
    assert len(runs) < len(x) and max(runs) > 1, runs  # rows of several lines shared runs
    collector.close()


def test_bank_too_small_refuses_the_activation(swap_config, started, mosquitto, keys,
                                               basicmotions_bundle, tmp_path):
    bank = build_bank_bundle(basicmotions_bundle.parent, 2)
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    svc = started(swap_config(lines={"line-a": {"adapter": "line-a"}, "line-b": {}}), bank)
    entry, path = derive_version(basicmotions_bundle, "line-a", 2, tmp_path / "v")
    svc.store.accept(envelope(entry, path, keys[0]), "test")
    pub = Publisher(mosquitto.port)
    pub.raw(ACTIVATE, b'{"line": "line-c", "name": "line-a", "version": 1, "id": "c"}')
    pub.close()
    assert collector.wait(lambda c: c.docs("/errors"))
    assert "bank holds 2 adapters" in collector.docs("/errors")[0]["reason"]
    assert "line-c" not in svc.routes.routes
    collector.close()


def test_repeated_ids_and_retained_commands_are_not_applied_again(
        swap_config, started, mosquitto, keys, basicmotions_bundle, tmp_path):
    """A QoS 1 redelivery (same id) changes nothing; a retained command replayed by the
    broker at the next subscription is refused, so it cannot undo later changes."""
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    cfg = swap_config()
    svc = started(cfg)
    pub = Publisher(mosquitto.port)
    first = b'{"line": "line-b", "name": "line-a", "version": 1, "id": "x"}'
    pub.raw(ACTIVATE, first)
    wait_line(collector, "line-b", 1)
    pub.raw(ACTIVATE, b'{"line": "line-b", "name": "base", "id": "y"}')
    wait_line(collector, "line-b", None)
    pub.raw(ACTIVATE, first)  # x again: answered with the state, not applied
    pub.raw(ROLLBACK, b'{"line": "line-b", "id": "z"}')
    pub.flush()
    state = wait_line(collector, "line-b", 1)  # z undid y; x did nothing
    assert state["last"]["id"] == "z"
    assert collector.docs("/errors") == []

    retained = b'{"line": "line-b", "name": "base", "id": "r"}'
    pub.client.publish(ACTIVATE, retained, qos=1, retain=True).wait_for_publish()
    wait_line(collector, "line-b", None)  # a live delivery: applied once
    pub.raw(ROLLBACK, b'{"line": "line-b", "id": "r2"}')
    wait_line(collector, "line-b", 1)
    svc.stop()
    svc = started(cfg)  # the broker replays the retained activate at the new subscription
    assert collector.wait(lambda c: any("retained" in d["reason"]
                                        for d in c.docs("/errors")))
    assert svc.routes.describe()["line-b"] == {"adapter": "line-a", "version": 1}
    pub.client.publish(ACTIVATE, b"", qos=1, retain=True).wait_for_publish()  # cleared
    pub.close()
    collector.close()


def test_old_versions_are_deleted_unless_a_line_may_need_them(
        swap_config, started, mosquitto, keys, basicmotions_bundle, tmp_path):
    """keep_versions = 2: each put deletes older accepted versions, except one a line is
    pinned to or may roll back to; the bundle's own stays."""
    cfg = swap_config(adapters={"require_signed": True, "trusted_keys": [str(keys[1])],
                                "keep_versions": 2})
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#",))
    svc = started(cfg)
    pub = Publisher(mosquitto.port)
    for v in range(2, 7):
        entry, path = derive_version(basicmotions_bundle, "line-a", v, tmp_path / "v")
        pub.raw(PUT, envelope(entry, path, keys[0]))
        wait_line(collector, "line-a", v)
        if v == 3:  # line-b pinned to v3, then moved on: v3 stays for its rollback
            pub.raw(ACTIVATE, b'{"line": "line-b", "name": "line-a", "version": 3}')
            wait_line(collector, "line-b", 3)
            pub.raw(ACTIVATE, b'{"line": "line-b", "name": "base"}')
            wait_line(collector, "line-b", None)
    pub.close()
    assert collector.wait(lambda c: [h["version"] for h in state_of(c)["held"]] == [1, 3, 5, 6])
    assert sorted(h["version"] for h in svc.store.describe()) == [1, 3, 5, 6]
    files = sorted(p.name for p in (cfg.parent / "state" / "adapters").iterdir())
    assert files == [f"line-a.v{v}.{ext}" for v in (3, 5, 6) for ext in ("json",
                                                                        "onnx_adapter")]
    collector.close()
