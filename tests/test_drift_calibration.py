"""The drift thresholds measured on two more real lines (sktime's GunPoint and ACSF1, with a
nearest-centroid model, tests/drift_data.py): no state change on their own test windows
streamed in shuffled passes (the bound: no false alarm in the measured streams), and `drift`
within DETECT_WINDOWS windows of gain, offset, noise or another dataset's windows. The soak
(slow) streams 500 shuffles per line; benchmarks/drift.py reports the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from drift_data import SHIFTS, centroid_line, foreign_windows, stream

from edge.drift.monitor import DriftMonitor
from export.data import load_dataset

DETECT_WINDOWS = 100  # 2 x the default rolling window of 50
FOREIGN = {"GunPoint": "ArrowHead", "ACSF1": "GunPoint"}


@pytest.fixture(scope="module", params=sorted(FOREIGN))
def line(request):
    return centroid_line(request.param)


def passes(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    return np.concatenate([rng.permutation(n) for _ in range(count)])


def state_changes(line, shuffles: int, n_passes: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    obs = line.observations(line.test)
    changes = 0
    for _ in range(shuffles):
        evaluations = stream(DriftMonitor(line.profile), obs, passes(rng, len(line.test), n_passes))
        changes += sum(ev.changed for ev in evaluations)
    return changes


def test_own_test_windows_raise_no_alarm(line):
    assert state_changes(line, shuffles=10, n_passes=4, seed=0) == 0


@pytest.mark.slow
def test_own_test_windows_raise_no_alarm_soak(line):
    assert state_changes(line, shuffles=500, n_passes=10, seed=1) == 0


def test_every_shift_reaches_drift_within_the_bound(line):
    rng = np.random.default_rng(2)
    other = load_dataset(f"ucr:{FOREIGN[line.name]}:test").X
    shifts = {name: SHIFTS[name] for name in ("gain x2", "offset +1 std", "noise 0.5 std")}
    shifts["foreign"] = lambda x, ln, r: foreign_windows(ln, other[:len(x)])
    own = line.observations(line.test)
    for name, shift in shifts.items():
        monitor = DriftMonitor(line.profile)
        assert {ev.state for ev in stream(monitor, own, passes(rng, len(line.test), 1)[:100])} \
            == {"ok"}
        shifted = line.observations(shift(line.test, line, rng))
        order = passes(rng, len(line.test), 1)[:DETECT_WINDOWS]
        evaluations = stream(monitor, shifted, order)
        assert evaluations[-1].state == "drift", (name, evaluations[-1].indicators)
