"""The pieces of hot swap without a broker: the LRU of loaded adapters, the line
assignments and their file, the watch folder, and the store's start-up from disk."""

from __future__ import annotations

import json
import threading

import pytest
from adapter_versions import derive_version, envelope

from edge.adapter_cache import LoadedCache
from edge.adapters import AdapterStore
from edge.bundle import read_manifest
from edge.config import load_config
from edge.engine import Engine
from edge.errors import BadMessage
from edge.inbox import FolderWatcher
from edge.line_state import Assignment, LineState
from export.signing import keygen


def test_cache_drops_least_recently_used_but_never_pinned():
    cache = LoadedCache(budget_bytes=300)
    for key in "abc":
        cache.put(key, key.upper(), 100)
    cache.get("a")  # a is now the most recent
    cache.pin({"b"})
    cache.put("d", "D", 100)  # over budget: c goes (b is pinned, a was used)
    assert [k for k in "abcd" if cache.holds(k)] == ["a", "b", "d"]
    cache.pin({"a", "b", "d"})
    cache.put("e", "E", 100)  # everything else pinned: e is the only one that can go
    assert not cache.holds("e") and cache.bytes == 300
    cache.pin({"a", "b", "d", "x"})
    cache.put("x", "X", 100)  # pinned beyond the budget: kept, with a warning
    assert cache.holds("x") and cache.bytes == 400 and cache.evictions == 2


@pytest.fixture
def cfg(runtime_config):
    return load_config(runtime_config(lines={"l1": {"adapter": "line-a"}, "l2": {}}))


def test_line_state_activate_rollback_and_persistence(cfg):
    state = LineState.load(cfg)
    assert state.lines == {"l1": Assignment("line-a", None), "l2": Assignment(None)}
    state = state.activate("l2", "line-a", 3).activate("l2", "line-a", 4)
    state = state.rollback("l2")
    assert state.lines["l2"] == Assignment("line-a", 3)
    state.save()
    again = LineState.load(cfg)
    assert again.lines == state.lines and again.history == state.history
    assert again.rollback("l2").lines["l2"] == Assignment(None)
    with pytest.raises(BadMessage, match="no earlier adapter"):
        again.rollback("l2").rollback("l2")


def test_line_state_config_change_or_corrupt_file_starts_from_the_config(cfg, runtime_config):
    LineState.load(cfg).activate("l2", "line-a", 2).save()
    path = cfg.device.state_dir / "routing.json"
    changed = load_config(runtime_config(lines={"l1": {"adapter": "line-a"}, "l3": {}}))
    assert LineState.load(changed).lines == {"l1": Assignment("line-a"), "l3": Assignment(None)}
    for junk in (b"{", b"[]", b'{"lines": {"l1": 5}}', b"\xff\xfe", json.dumps(
            {"lines": {"l1": {"adapter": 3}}, "config_lines": {}}).encode()):
        path.write_bytes(junk)
        assert LineState.load(cfg).lines == LineState.from_config(cfg).lines


def test_watch_folder_takes_settled_files_once_and_files_them(tmp_path):
    got: list[tuple[bytes, str]] = []
    decide = threading.Event()

    def submit(data, source, done):
        got.append((data, source))
        done(None if data == b"good" else "it is bad")
        decide.set()

    watcher = FolderWatcher(tmp_path / "in", submit, max_bytes=10)
    (tmp_path / "in" / ".hidden").write_bytes(b"good")
    (tmp_path / "in" / "a.part").write_bytes(b"good")
    (tmp_path / "in" / "ok.edgeadp").write_bytes(b"good")
    (tmp_path / "in" / "bad.edgeadp").write_bytes(b"bad")
    (tmp_path / "in" / "big.edgeadp").write_bytes(b"x" * 11)
    watcher.poll()
    assert got == []  # seen once: not yet known to have settled
    watcher.poll()
    assert sorted(got) == [(b"bad", "folder:bad.edgeadp"), (b"good", "folder:ok.edgeadp")]
    watcher.poll()
    assert len(got) == 2  # each file once
    accepted = [p.name for p in (tmp_path / "in" / "accepted").iterdir()]
    rejected = sorted(p.name for p in (tmp_path / "in" / "rejected").iterdir())
    assert len(accepted) == 1 and accepted[0].endswith("ok.edgeadp")
    assert len(rejected) == 4  # bad and big, each with its reason
    reasons = [p.read_text() for p in (tmp_path / "in" / "rejected").glob("*.reason")]
    assert sorted(r.split(" ")[0] for r in reasons) == ["file", "it"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        ".hidden", "a.part", "accepted", "rejected"]


def test_store_skips_tampered_or_foreign_files_at_start(cfg, basicmotions_bundle, tmp_path):
    private, public = keygen(out=tmp_path / "k")
    cfg.adapters.trusted_keys = [public]
    manifest = read_manifest(basicmotions_bundle)
    engine = Engine(basicmotions_bundle / manifest.base.file)
    store = AdapterStore.open(cfg, basicmotions_bundle, manifest, engine)
    for v in (2, 3, 4):
        entry, path = derive_version(basicmotions_bundle, "line-a", v, tmp_path / "v")
        store.accept(envelope(entry, path, private), "test")
    adapters = cfg.device.state_dir / "adapters"
    (adapters / "line-a.v3.onnx_adapter").write_bytes(b"tampered")
    meta = json.loads((adapters / "line-a.v4.json").read_text())
    (adapters / "line-a.v4.json").write_text(json.dumps({**meta, "base_fingerprint": "0" * 64}))
    (adapters / ".line-a.v5.123.tmp").write_bytes(b"half written")  # a crash mid-intake
    again = AdapterStore.open(cfg, basicmotions_bundle, manifest, engine)
    assert sorted(h["version"] for h in again.describe()) == [1, 2]
    assert not list(adapters.glob(".*.tmp"))
