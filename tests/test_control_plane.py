"""The control plane built from its parts, without a service or a broker: a real adapter
store on the reference bundle, the line assignments, a route holder, and a link that
records what would go over MQTT."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from adapter_versions import derive_version, envelope
from test_control_fuzz import Answer

from edge.adapters import AdapterStore
from edge.bundle import read_manifest
from edge.commands import Command
from edge.config import load_config
from edge.control import ControlPlane, ControlSettings
from edge.engine import Engine
from edge.line_state import STATE_FILE, LineState
from edge.routing import RouteHolder, TableBuilder
from edge.status import Counters
from export.demo.local_broker import write_runtime_config

ADAPTERS = "factory/gw-test/adapters"
LINES = {"line-a": {"adapter": "line-a"}, "line-b": {}}


class RecordingLink:
    """The ControlLink the control plane needs: subscriptions, publishes, error reports."""

    def __init__(self) -> None:
        self.filters: list[str] = []
        self.states: list[dict] = []
        self.reports: list[tuple[str | None, str, str]] = []

    def handle(self, topic_filter, handler, qos=None) -> None:
        self.filters.append(topic_filter)

    def publish(self, topic, payload, *, qos=None, retain=False) -> None:
        assert (topic, qos, retain) == (f"{ADAPTERS}/state", 1, True)
        self.states.append(json.loads(payload))

    def report(self, msg_id, topic, reason) -> None:
        self.reports.append((msg_id, topic, reason))


@pytest.fixture
def parts(tmp_path, basicmotions_bundle, keys):
    """(config, store, tables, holder, lines): what Service hands the control plane."""
    cfg = load_config(write_runtime_config(
        tmp_path, port=1, bundle=basicmotions_bundle, lines=LINES,
        adapters={"require_signed": True, "trusted_keys": [str(keys[1])]}))
    manifest = read_manifest(basicmotions_bundle)
    engine = Engine(basicmotions_bundle / manifest.base.file, threads=1)
    store = AdapterStore.open(cfg, basicmotions_bundle, manifest, engine)
    tables = TableBuilder(store, manifest, tuple(manifest.inputs[0].shape[1:]))
    lines = LineState.load(cfg)
    return cfg, store, tables, RouteHolder(tables.build(lines)), lines


def control_plane(parts, lines=None) -> tuple[ControlPlane, RecordingLink, Counters]:
    cfg, store, tables, holder, loaded = parts
    link, counters = RecordingLink(), Counters()
    control = ControlPlane(settings=ControlSettings.from_config(cfg, bank=0),
                           lines=loaded if lines is None else lines, routing=holder,
                           build=tables.build, store=store, link=link, counters=counters)
    control.start()
    return control, link, counters


def command(control: ControlPlane, kind: str, doc: dict) -> str | None:
    answer = Answer()
    control.submit(Command(kind, json.dumps(doc).encode(), f"{ADAPTERS}/{kind}", "test",
                           time.monotonic(), None, answer))
    return answer.wait()


def test_changes_install_tables_in_the_holder_and_answer_with_the_state(
        parts, keys, basicmotions_bundle, tmp_path):
    cfg, store, _, holder, _ = parts
    control, link, counters = control_plane(parts)
    try:
        assert link.filters == [f"{ADAPTERS}/{t}" for t in
                                ("put/+", "activate", "rollback", "revoke")]
        first = holder.current()
        assert first.describe() == {"line-a": {"adapter": "line-a", "version": 1},
                                    "line-b": {"adapter": "base", "version": None}}
        assert command(control, "activate", {"line": "line-b", "name": "line-a",
                                             "version": 1, "id": "a1"}) is None
        assert holder.current().describe()["line-b"] == {"adapter": "line-a", "version": 1}
        assert first.describe()["line-b"]["adapter"] == "base"  # installed, never edited
        saved = json.loads((cfg.device.state_dir / STATE_FILE).read_text())
        assert saved["lines"]["line-b"] == {"adapter": "line-a", "version": 1}
        state = link.states[-1]
        assert state["device"] == "gw-test" and state["bank"] == 0
        assert state["last"]["id"] == "a1" and state["lines"]["line-b"]["version"] == 1

        answer = Answer()  # a newer version: the line that follows the newest switches
        data = envelope(*derive_version(basicmotions_bundle, "line-a", 2, tmp_path), keys[0])
        control.submit_file(data, "folder:line-a.v2", answer)
        assert answer.wait() is None
        assert holder.current().describe()["line-a"] == {"adapter": "line-a", "version": 2}
        assert ("line-a", 2) in store.held and link.states[-1]["last"]["result"] == "accepted"

        assert command(control, "rollback", {"line": "line-b"}) is None
        assert holder.current().describe()["line-b"] == {"adapter": "base", "version": None}
        assert link.reports == [] and counters.totals["errors"] == 0
    finally:
        control.stop()
    assert not control.alive()


def test_a_failed_save_puts_the_previous_table_back(parts, tmp_path):
    """The switch happens before the save (fsync kept out of it); a save that fails puts
    the table it replaced back in the holder, and the command is refused."""
    _, _, _, holder, lines = parts
    (tmp_path / "blocker").write_text("a file where the state folder should be")
    unsavable = replace(lines, path=tmp_path / "blocker" / STATE_FILE)
    control, link, counters = control_plane(parts, unsavable)
    try:
        before = holder.current()
        reason = command(control, "activate", {"line": "line-b", "name": "line-a",
                                                "id": "s1"})
        assert reason is not None and "cannot save" in reason
        assert holder.current() is before and control.lines is unsavable
        assert link.reports == [("s1", f"{ADAPTERS}/activate", reason)]
        assert counters.totals["errors"] == 1 and link.states == []
        assert control.last["result"] == "refused"
        assert control.alive()
    finally:
        control.stop()
