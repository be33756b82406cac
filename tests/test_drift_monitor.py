"""The drift monitor on real BasicMotions windows and the fixture bundle's base model (run by
onnxruntime): its own test windows stay `ok`, each kind of shift reaches `drift` within
DETECT_WINDOWS windows, the state has hysteresis and survives as given; the [drift] config.
GunPoint and ACSF1 (sktime data) are in test_drift_calibration.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from drift_data import SHIFTS, bundle_line, feed, make_profile, stream
from reference_bundle import basicmotions_split

from edge.config import Config
from edge.drift.monitor import DriftMonitor, MonitorSettings, corrected_psi, window_stats
from edge.drift.profile import histogram, psi

DETECT_WINDOWS = 100  # the stated bound: 2 x the default rolling window of 50


@pytest.fixture(scope="module")
def line(basicmotions_bundle):
    return bundle_line(basicmotions_bundle, basicmotions_split("train").X,
                       basicmotions_split("test").X)


def passes(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    return np.concatenate([rng.permutation(n) for _ in range(count)])


def test_own_test_windows_stay_ok(line):
    """20 streams of 10 shuffled passes over the 40 test windows: no state change at all."""
    rng = np.random.default_rng(0)
    obs = line.observations(line.test)
    for _ in range(20):
        evaluations = stream(DriftMonitor(line.profile), obs, passes(rng, len(line.test), 10))
        assert evaluations
        assert {ev.state for ev in evaluations} == {"ok"}, evaluations[-1].indicators


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_each_shift_reaches_drift_within_the_bound(line, shift):
    rng = np.random.default_rng(1)
    own = line.observations(line.test)
    shifted = line.observations(SHIFTS[shift](line.test, line, rng))
    monitor = DriftMonitor(line.profile)
    assert {ev.state for ev in stream(monitor, own, passes(rng, 40, 2))} == {"ok"}
    evaluations = stream(monitor, shifted, passes(rng, 40, 3)[:DETECT_WINDOWS])
    assert evaluations[-1].state == "drift", [ev.indicators for ev in evaluations]


def test_a_mild_gain_does_not_alarm_at_once_but_a_strong_one_does(line):
    """The indicators grow with the shift: x1.05 stays ok, x2 is far past the drift level."""
    rng = np.random.default_rng(2)
    values = {}
    for gain in (1.05, 2.0):
        monitor = DriftMonitor(line.profile)
        obs = line.observations(line.test * gain)
        values[gain] = stream(monitor, obs, passes(rng, 40, 3))[-1]
    assert values[1.05].state == "ok"
    assert values[2.0].indicators["input_psi"] > 2 * values[1.05].indicators["input_psi"] + 1


def test_bias_correction_centres_psi_of_a_fair_sample_near_zero(line):
    """A fair sample of n from the reference values: raw PSI ~ (k-1)/n, corrected ~ 0."""
    rng = np.random.default_rng(3)
    mean, _ = window_stats(np.concatenate([line.train, line.test]))
    values = mean[:, 0]
    hist = histogram(values)
    raw, corrected = [], []
    for _ in range(200):
        sample = rng.choice(values, 50)
        counts = np.bincount(np.searchsorted(hist.edges, sample), minlength=len(hist.shares))
        raw.append(psi(hist.shares, counts + 0.5))
        corrected.append(corrected_psi(hist, len(values), sample))
    assert np.mean(raw) > 0.1  # the bias the correction removes
    assert np.mean(corrected) < 0.05


def test_hysteresis_needs_confirm_evaluations_up_and_down(line):
    monitor = DriftMonitor(line.profile, MonitorSettings(confirm=2))
    ok, warn, drift = 0, 1, 2
    steps = [(drift, "ok"), (ok, "ok"), (drift, "ok"), (drift, "drift"), (ok, "drift"),
             (warn, "warn"), (warn, "warn"), (drift, "warn"), (drift, "drift"),
             (ok, "drift"), (ok, "ok"), (warn, "ok"), (drift, "warn"), (drift, "drift")]
    for level, state in steps:
        assert monitor._hysteresis(level) == state, (level, state)
        monitor.state = state


def test_a_restored_state_holds_until_the_windows_say_otherwise(line):
    monitor = DriftMonitor(line.profile, state="drift", since=1000.0,
                           indicators={"input_psi": 3.0})
    assert (monitor.state, monitor.since) == ("drift", 1000.0)
    obs = line.observations(line.test)
    evaluations = stream(monitor, obs, passes(np.random.default_rng(4), 40, 3))
    states = [ev.state for ev in evaluations]
    assert states[0] == "drift" and states[-1] == "ok"
    assert evaluations[-1].since > 1000.0


def test_windows_in_one_call_are_kept_to_the_window_size(line):
    monitor = DriftMonitor(line.profile, MonitorSettings(window=16, min_windows=16, every=1))
    obs = line.observations(np.concatenate([line.test, line.test]))
    ev = feed(monitor, obs, slice(None))
    assert ev is not None and monitor.ring.count == 16 and ev.windows == 80


def test_profile_matches_its_model(line):
    assert line.profile.problem(6, line.class_names) is None
    assert "channel" in line.profile.problem(3, line.class_names)
    profile = make_profile(line.train, line.predict(line.train), line.class_names)
    assert profile.n_windows == 40 and 0 < profile.top_score_mean <= 1


# -- the [drift] config ------------------------------------------------------------------------
def test_drift_config_defaults_and_overrides():
    cfg = Config.model_validate({"device": {"id": "gw"}})
    assert cfg.drift.enabled and cfg.drift.watches("any-line")
    assert cfg.drift.monitor_settings() == MonitorSettings()
    cfg = Config.model_validate({"device": {"id": "gw"}, "drift": {
        "window": 200, "confirm": 4, "lines": ["press-3"],
        "thresholds": {"input_psi": {"warn": 1.0, "drift": 2.0}}}})
    settings = cfg.drift.monitor_settings()
    assert (settings.window, settings.confirm) == (200, 4)
    assert settings.thresholds["input_psi"].drift == 2.0
    assert settings.thresholds["class_psi"] == MonitorSettings().thresholds["class_psi"]
    assert cfg.drift.watches("press-3") and not cfg.drift.watches("press-4")


@pytest.mark.parametrize("drift, key", [
    ({"thresholds": {"score_drop": {"warn": 0.5, "drift": 0.1}}}, "drift.thresholds.score_drop"),
    ({"window": 2}, "drift.window"),
    ({"windw": 50}, "drift.windw"),
    ({"thresholds": {"input_psi": {"warn": 1.0}}}, "drift.thresholds.input_psi.drift"),
    ({"lines": ["bad/line"]}, "drift.lines"),
])
def test_bad_drift_config_names_the_key(tmp_path, drift, key):
    from edge.config import check_config

    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in drift.items()
                   if not isinstance(v, dict))
    tables = "".join(f"[drift.thresholds.{name}]\n" + "".join(
        f"{k} = {v}\n" for k, v in limits.items()) for name, limits in
        drift.get("thresholds", {}).items())
    path = tmp_path / "gw.toml"
    path.write_text(f'[device]\nid = "gw"\n\n[drift]\n{body}\n{tables}')
    problems = check_config(path)
    assert problems and any(f": {key}" in p for p in problems), problems


def test_the_vectorised_histograms_give_the_same_psi(line):
    from edge.drift.monitor import HistogramSet

    mean, std = window_stats(line.test * 1.3)
    hists = [*line.profile.inputs.window_mean, *line.profile.inputs.window_std]
    hset = HistogramSet(hists, line.profile.n_windows)
    together = hset.psi(hset.counts(np.concatenate([mean, std], axis=1)))
    one_by_one = [corrected_psi(h, line.profile.n_windows, v) for h, v in
                  zip(hists, np.concatenate([mean, std], axis=1).T, strict=True)]
    np.testing.assert_allclose(together, one_by_one, rtol=1e-9, atol=1e-12)


# -- the watch: one monitor per line and route, its topic, its saved state -----------------------
def _route(adapter: str | None, version: int | None, labels: list[str]):
    from edge.contract import Normalizer
    from edge.routing import Route

    return Route(adapter=adapter, version=version, session_adapter=None, labels=tuple(labels),
                 normalizer=Normalizer.from_preprocessing(None, 6))


def _watch(line, tmp_path, published, events, **drift):
    from edge.contract import TopicLayout
    from edge.drift.watch import DriftWatch

    cfg = Config.model_validate({"device": {"id": "gw"}, "drift": drift})
    return DriftWatch(cfg.drift, TopicLayout("factory", "gw").drift, tmp_path, channels=6,
                      profile_of=lambda r: None if r.adapter == "bare" else line.profile,
                      publish=lambda t, p: published.append((t, __import__("json").loads(p))),
                      event=events.append, changed=lambda: None)


def test_watch_keys_monitors_by_route_and_keeps_state_per_route(line, tmp_path):
    published, events = [], []
    watch = _watch(line, tmp_path, published, events)
    v1, v2 = _route("a", 1, line.class_names), _route("a", 2, line.class_names)
    gained = line.observations(line.test * 2.0)
    for _ in range(3):
        watch.observe("press-3", v1, *gained)
    drifted = published[-1][1]
    assert published[-1][0] == "factory/gw/drift/press-3"
    assert (drifted["state"], drifted["version"]) == ("drift", 1)
    assert events and (events[-1]["previous"], events[-1]["state"]) == ("ok", "drift")
    assert events[-1]["type"] == "drift" and events[-1]["line"] == "press-3"

    watch.observe("press-4", _route("bare", 1, line.class_names), *gained)  # no profile
    assert (published[-1][1]["line"], published[-1][1]["state"]) == ("press-4", "unknown")
    watch.observe("press-5", _route("a", 1, line.class_names[:2]), *gained)  # wrong classes
    assert published[-1][1]["state"] == "unknown"

    # a restart: the saved state is announced, and restored for the same route
    again = []
    restarted = _watch(line, tmp_path, again, [])
    restarted.announce()
    assert {d["line"]: d["state"] for _, d in again} == {"press-3": "drift"}
    restarted.observe("press-3", v1, *line.observations(line.test[:8]))
    assert (again[-1][1]["state"], again[-1][1]["since"]) == ("drift", drifted["since"])

    # a new adapter version starts a new monitor, and the saved file follows it
    restarted.observe("press-3", v2, *line.observations(line.test[:8]))
    assert (again[-1][1]["version"], again[-1][1]["state"]) == (2, "ok")
    assert restarted.lines["press-3"].monitor.seen == 8
    third = []
    _watch(line, tmp_path, third, []).announce()
    assert [(d["line"], d["version"], d["state"]) for _, d in third] == [("press-3", 2, "ok")]


def test_watch_leaves_unlisted_lines_alone(line, tmp_path):
    published = []
    watch = _watch(line, tmp_path, published, [], lines=["press-3"])
    watch.observe("press-9", _route("a", 1, line.class_names), *line.observations(line.test))
    assert published == [] and "press-9" not in watch.lines
