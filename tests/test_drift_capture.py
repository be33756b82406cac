"""The capture store (issue 14, item 3) on real BasicMotions windows: the size cap removes the
oldest records, a restart keeps the store, a record cut short is skipped with a warning, and
`edge-runtime capture export` writes an npz that export.data.load_dataset reads. In the
running gateway against the real Mosquitto broker: a line's own test windows are seldom
captured, the same windows with a x2 gain are (reason outlier or drifting), and the store
outlives a restart.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from click.testing import CliRunner
from reference_bundle import basicmotions_split
from test_drift_service import profiled_bundle, send  # noqa: F401  (a fixture, used by name)
from test_runtime import Collector, Publisher

from edge.cli import main
from edge.drift.capture import FOLDER
from edge.drift.capture_store import CaptureStore, Record
from export.data import load_dataset

CLASSES = basicmotions_split("train").class_names


def record(i: int, line: str = "press-3", reason: str = "outlier") -> Record:
    return Record(line=line, adapter="base", version=None, top=0.4, predicted=CLASSES[i % 2],
                  classes=list(CLASSES), received=1_800_000_000.0 + i, reason=reason,
                  id=f"w-{i}", drift_state="drift")


def fill(store: CaptureStore, n: int, **kw) -> list:
    x = basicmotions_split("test").X  # (40, 6, 100) real windows
    return [store.write(record(i, **kw), x[i % len(x)]) for i in range(n)]


def test_cap_keeps_the_newest_and_a_restart_keeps_the_store(tmp_path):
    one = len(CaptureStore(tmp_path / "probe", 1 << 20).write(record(0), np.zeros((6, 100)))
              .read_bytes())
    store = CaptureStore(tmp_path / FOLDER, max_bytes=int(one * 5.5))  # room for 5
    fill(store, 12)
    assert store.bytes <= store.max_bytes
    assert [r.id for r, _ in store.read()] == [f"w-{i}" for i in range(7, 12)]  # oldest out

    again = CaptureStore(tmp_path / FOLDER, max_bytes=store.max_bytes)  # a restart
    assert again.bytes == store.bytes
    again.write(record(12), basicmotions_split("test").X[0])
    ids = [r.id for r, _ in again.read()]
    assert ids == [f"w-{i}" for i in range(8, 13)]
    first_x = next(again.read())[1]
    assert first_x.dtype == np.float32 and first_x.shape == (6, 100)
    np.testing.assert_array_equal(first_x, basicmotions_split("test").X[8])


def test_a_record_cut_short_is_skipped_with_a_warning(tmp_path, caplog):
    store = CaptureStore(tmp_path / FOLDER, max_bytes=1 << 20)
    paths = fill(store, 4)
    with open(paths[1], "r+b") as fh:  # a power cut in the middle of the window's bytes
        fh.truncate(paths[1].stat().st_size // 2)
    (tmp_path / FOLDER / ".000000000005.cap.tmp").write_bytes(b"ECAP")  # a write cut off
    with caplog.at_level(logging.WARNING):
        ids = [r.id for r, _ in CaptureStore(tmp_path / FOLDER, 1 << 20).read()]
    assert ids == ["w-0", "w-2", "w-3"]
    assert any(paths[1].name in m and "cut short" in m for m in caplog.messages)
    restarted = CaptureStore(tmp_path / FOLDER, 1 << 20)
    restarted.tidy()  # the writer's start removes the leftover temporary file
    assert not list((tmp_path / FOLDER).glob(".*"))
    assert restarted.write(record(4), np.ones((6, 100))).name == "000000000005.cap"


def test_selection_reasons_and_the_rate_per_line(tmp_path):
    """Real BasicMotions windows against a profile of the line's own training windows:
    own ones are not kept, gained ones are outliers, a drifting line keeps 1 in 5, and a
    line's bucket of `per_minute` tokens bounds what is kept until the clock refills it."""
    from drift_data import make_profile

    from edge.config import CaptureConfig
    from edge.drift.capture import Capture
    from edge.drift.monitor import window_stats

    train, test = basicmotions_split("train").X, basicmotions_split("test").X
    onehot = np.eye(len(CLASSES))[basicmotions_split("train").y] * 0.9 + 0.025  # scores
    profile = make_profile(train, onehot, list(CLASSES))
    now = [0.0]
    capture = Capture(CaptureConfig(drifting_share=0.2, per_minute=30), tmp_path,
                      clock=lambda: now[0])
    try:
        top = np.full(len(test), 0.9)
        own = capture.select("a", top, *window_stats(test), "ok", profile)
        assert len(own) <= 2, own
        gained = capture.select("b", top, *window_stats(test * 2.0), "ok", profile)
        assert gained and {r for _, r in gained} == {"outlier"}
        drifting = capture.select("c", top, *window_stats(test), "drift", profile)
        assert len(drifting) >= 8 and {r for _, r in drifting} <= {"drifting", "outlier"}
        low = capture.select("d", np.full(len(test), 0.3), *window_stats(test), "ok", None)
        assert [r for _, r in low] == ["low_score"] * 30  # 40 wanted, 30 tokens
        assert capture.select("d", top * 0.3, *window_stats(test), "ok", None) == []
        now[0] = 10.0  # 10 s later: 5 tokens back
        assert len(capture.select("d", top * 0.3, *window_stats(test), "ok", None)) == 5
    finally:
        capture.close()


def config_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(f'[device]\nid = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def test_capture_export_list_and_clear(tmp_path):
    config = config_file(tmp_path)
    store = CaptureStore(tmp_path / "state" / FOLDER, 1 << 20)
    fill(store, 6)
    fill(CaptureStore(store.folder, 1 << 20), 2, line="press-4", reason="low_score")
    run = CliRunner().invoke

    listed = run(main, ["capture", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "press-3  outlier  6 window(s)" in listed.output
    assert "press-4  low_score  2 window(s)" in listed.output

    out = tmp_path / "captured.npz"
    done = run(main, ["capture", "export", "--config", str(config), "--out", str(out),
                      "--line", "press-3", "--since", "2027-01-15T08:00:01+00:00"])
    assert done.exit_code == 0, done.output
    assert "wrote 5 window(s) of 6 channel(s) x 100" in done.output  # w-0 is older
    assert "PREDICTED" in done.output
    data = load_dataset(out)  # the loader of `edge-export train --data`, torch-free
    assert data.X.shape == (5, 6, 100) and data.X.dtype == np.float32
    assert data.class_names == list(CLASSES)
    np.testing.assert_array_equal(data.X[0], basicmotions_split("test").X[1])
    with np.load(out, allow_pickle=False) as npz:  # the extra arrays ride along
        assert npz["line"].tolist() == ["press-3"] * 5
        assert npz["reason"].tolist() == ["outlier"] * 5
        assert npz["version"].tolist() == [-1] * 5 and npz["score"].shape == (5,)

    bad = run(main, ["capture", "export", "--config", str(config), "--out", str(out),
                     "--since", "yesterday"])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error: --since:")
    cleared = run(main, ["capture", "clear", "--config", str(config)])
    assert "removed 8 captured window(s)" in cleared.output
    empty = run(main, ["capture", "export", "--config", str(config), "--out", str(out)])
    assert empty.exit_code == 3 and empty.output.count("\n") == 1, empty.output
    assert empty.output.startswith("error: no captured windows")


def captured(state_dir) -> list[Record]:
    return [r for r, _ in CaptureStore(state_dir / FOLDER, 1 << 30).read()]


def test_gateway_captures_a_gain_shift_and_keeps_it_across_a_restart(
        mosquitto, runtime_config, started, profiled_bundle, tmp_path):  # noqa: F811
    config = runtime_config(**{"drift.capture": {"drifting_share": 0.2}})
    state = tmp_path / "state"
    test = basicmotions_split("test").X
    rng = np.random.default_rng(1)
    own = np.concatenate([test[rng.permutation(len(test))] for _ in range(2)])  # 80 windows
    gained = np.concatenate([test[rng.permutation(len(test))] * 2.0 for _ in range(3)])[:100]
    collector = Collector(mosquitto.port, ("factory/+/inference", "factory/gw-test/stats"))
    pub = Publisher(mosquitto.port)
    try:
        svc = started(config, bundle=profiled_bundle)
        send(pub, collector, "line-b", own, "own")
        send(pub, collector, "line-b", gained, "gain")
        assert collector.wait(lambda c: any(d["capture"]["stored"] > 0
                                            for d in c.docs("factory/gw-test/stats")))
        svc.stop()  # the writer stores what is queued before the service ends
        records = captured(state)
        own_kept = [r for r in records if r.id.startswith("own-")]
        gain_kept = [r for r in records if r.id.startswith("gain-")]
        print(f"captured: own {len(own_kept)} of {len(own)}, gain {len(gain_kept)} of "
              f"{len(gained)}; reasons {[(r.id, r.reason, round(r.top, 2)) for r in own_kept]}, "
              f"{sorted({r.reason for r in gain_kept})}")
        assert len(own_kept) <= len(own) // 10  # a line's own windows: few captures
        assert len(gain_kept) >= 20
        assert {r.reason for r in gain_kept} & {"outlier", "drifting"}
        kept = gain_kept[0]
        assert (kept.line, kept.adapter, kept.version) == ("line-b", "base", None)
        assert kept.predicted in kept.classes and 0 < kept.top <= 1
        assert abs(kept.received - time.time()) < 600

        started(config, bundle=profiled_bundle)  # a restart keeps the store
        assert [r.id for r in captured(state)][:len(records)] == [r.id for r in records]
    finally:
        pub.close()
        collector.close()


@pytest.mark.parametrize("bad", [{"max_bytes": 10}, {"drifting_share": 0},
                                 {"reasons": ["noise"]}, {"low_score": 2}])
def test_capture_config_is_checked(tmp_path, bad):
    from edge.config import check_config

    config = config_file(tmp_path)
    key, value = next(iter(bad.items()))
    text = repr(value).replace("'", '"')
    config.write_text(config.read_text() + f"\n[drift.capture]\n{key} = {text}\n")
    problems = check_config(config)
    assert len(problems) == 1 and f"drift.capture.{key}" in problems[0], problems
