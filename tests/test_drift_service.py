"""The drift watch in the running gateway, against the real Mosquitto broker: a line served by
a bundle whose manifest carries the base's profile (computed here from the training windows,
as the export side does) stays `ok` on its own test windows, goes to `drift` within
DETECT_WINDOWS windows of x2 gain, announces the change on the events topic and in stats, and
is still `drift` after a restart. A line whose model has no profile is `unknown`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from drift_data import bundle_line
from reference_bundle import basicmotions_split
from test_runtime import Collector, Publisher

DEVICE = "gw-test"
DRIFT = f"factory/{DEVICE}/drift"
DETECT_WINDOWS = 100  # as in test_drift_monitor.py: 2 x the default window of 50


@pytest.fixture(scope="module")
def profiled_bundle(basicmotions_bundle, tmp_path_factory):
    """The fixture bundle with the base model's drift profile computed here and written into
    its manifest, and its adapter's profile removed."""
    out = tmp_path_factory.mktemp("profiled") / "bundle"
    shutil.copytree(basicmotions_bundle, out)
    line = bundle_line(out, basicmotions_split("train").X, basicmotions_split("test").X)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["base"]["drift_profile"] = line.profile.model_dump(mode="json")
    for entry in manifest["adapters"]:  # line-a's adapter: no profile (an older export)
        entry["drift_profile"] = None
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def send(pub: Publisher, collector: Collector, line: str, windows: np.ndarray, tag: str) -> None:
    """Publish the windows on `line` and wait until each has its result."""
    before = len(collector.docs(f"factory/{line}/inference"))
    for i, window in enumerate(windows):
        pub.binary(f"factory/{line}/sensors/imu", f"{tag}-{i}", window)
    pub.flush()
    assert collector.wait(lambda c: len(c.docs(f"factory/{line}/inference"))
                          >= before + len(windows))


def drift_docs(collector: Collector, line: str) -> list[dict]:
    return [d for d in collector.docs(f"{DRIFT}/{line}")]


def test_drift_state_on_the_broker_and_across_a_restart(mosquitto, runtime_config, started,
                                                        profiled_bundle):
    config = runtime_config()  # device.bundle: the fixture bundle; started() overrides it
    test = basicmotions_split("test").X
    rng = np.random.default_rng(0)
    own = np.concatenate([test[rng.permutation(len(test))] for _ in range(2)])  # 80 windows
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#", "factory/+/inference"))
    pub = Publisher(mosquitto.port)
    try:
        svc = started(config, bundle=profiled_bundle)
        send(pub, collector, "line-b", own, "own")
        assert collector.wait(lambda c: any(d["windows"] >= 50 for d in drift_docs(c, "line-b")))
        first = drift_docs(collector, "line-b")[-1]
        assert first["state"] == "ok" and first["adapter"] == "base", first
        # the bundle outputs features and its profile has their statistics: all five
        assert set(first["indicators"]) == {"input_psi", "class_psi", "score_psi", "score_drop",
                                            "ood_share"}
        assert first["thresholds"]["input_psi"] == {"warn": 0.75, "drift": 1.25}

        send(pub, collector, "line-a", test[:4], "adapter")  # line-a's adapter: no profile
        assert collector.wait(lambda c: drift_docs(c, "line-a"))
        assert drift_docs(collector, "line-a")[-1]["state"] == "unknown"

        gained = test[rng.permutation(len(test))] * 2.0
        gained = np.concatenate([gained, gained, gained])[:DETECT_WINDOWS]
        send(pub, collector, "line-b", gained, "gain")
        assert collector.wait(lambda c: any(d["state"] == "drift"
                                            for d in drift_docs(c, "line-b"))), \
            drift_docs(collector, "line-b")[-1]
        drifted = next(d for d in drift_docs(collector, "line-b") if d["state"] == "drift")
        assert any(value >= drifted["thresholds"][name]["drift"]  # ood_share is often first
                   for name, value in drifted["indicators"].items()), drifted
        events = [d for d in collector.docs(f"factory/{DEVICE}/events")
                  if d["type"] == "drift" and d["line"] == "line-b"]
        assert events and events[-1]["state"] == "drift" and events[-1]["indicator"]
        assert not [d for d in collector.docs(f"factory/{DEVICE}/errors")]  # not an error
        assert collector.wait(lambda c: sum(d.get("drift_changes", 0) for d in
                                            c.docs(f"factory/{DEVICE}/stats")) >= 1)
        svc.stop()

        pub.client.publish(f"{DRIFT}/line-b", b"", qos=1, retain=True).wait_for_publish(10)
        after = Collector(mosquitto.port, (f"{DRIFT}/line-b",))
        try:
            started(config, bundle=profiled_bundle)
            assert after.wait(lambda c: [p for _, p, _ in c.messages if p])
            restored = json.loads(next(p for _, p, _ in after.messages if p))
            assert restored["state"] == "drift", restored
            assert restored["since"] == drifted["since"]
        finally:
            after.close()
    finally:
        pub.close()
        collector.close()
