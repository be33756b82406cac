"""edge-export pilot on real data (a tiny base pretrained on GunPoint, the line ArrowHead),
with a short budget: the report's sections, the recommendation rule, the adapter it writes,
one-line errors for bad input; and the statistics of export/pilot/metrics.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from adapter_versions import Offline  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from pilot_run import LENGTH, LINE, PRICES, SHORT  # noqa: E402

from edge.bundle import read_manifest  # noqa: E402
from edge.card import Card  # noqa: E402
from edge.contract import Preprocessing  # noqa: E402
from edge.errors import ConfigError, DataError  # noqa: E402
from export.adapters import AdaptedModel  # noqa: E402
from export.cards import CardOptions, data_fingerprint, os_user  # noqa: E402
from export.check_adapters import check_adapters  # noqa: E402
from export.check_sample import read_sample  # noqa: E402
from export.cli import main  # noqa: E402
from export.data import ChannelStats, load_dataset  # noqa: E402
from export.models import load_base  # noqa: E402
from export.onnx.attach import export_attach  # noqa: E402
from export.onnx.merge import ExportSettings  # noqa: E402
from export.onnx.slot_plan import dir_rank  # noqa: E402
from export.peft_io import load_adapter, read_adapter_dir  # noqa: E402
from export.pilot import run_pilot  # noqa: E402
from export.pilot.candidates import Candidate, plan_candidates  # noqa: E402
from export.pilot.metrics import (  # noqa: E402
    accuracy,
    bootstrap_ci,
    confusion,
    macro_f1,
    paired_difference,
    per_class_recall,
)
from export.pilot.pipeline import _load_line  # noqa: E402
from export.pilot.prices import load_prices  # noqa: E402
from export.pilot.recommend import MARGIN, RULE, choose, closeness  # noqa: E402
from export.pilot.search import (  # noqa: E402
    CandidateResult,
    SearchSettings,
    SeedRun,
    _Clock,
    _run_seeds,
)
from export.train import evaluate  # noqa: E402

SECTIONS = {"version", "created", "package_version", "machine", "line", "base", "budget",
            "prices", "candidates", "recommendation", "running_cost", "summary", "commands"}
CANDIDATE_KEYS = {"name", "method", "family", "options", "seeds", "trainable_params",
                  "trainable_fraction", "adapter_bytes", "val_accuracy", "val_vs_best", "test",
                  "training", "curves"}


@pytest.fixture
def base(pilot_base) -> Path:
    return pilot_base


@pytest.fixture
def pilot(pilot_run) -> tuple[Path, dict]:
    return pilot_run


def test_report_json_has_every_section(pilot):
    out, report = pilot
    assert json.loads((out / "report.json").read_text()) == report
    assert set(report) >= SECTIONS and report["version"] == 1
    assert report["line"]["classes"] == ["0", "1", "2"] and not report["line"]["test_is_split"]
    assert report["line"]["n_train"] == 36  # ArrowHead's train split, every seed's val within
    assert 0 < report["line"]["n_val"] < 36
    assert report["line"]["n_test"] == 175
    assert report["prices"]["currency"] == "EUR"
    names = [c["name"] for c in report["candidates"]]
    assert names[:2] == ["head", "full"]  # GunPoint's 2 classes are not ArrowHead's 3: a probe
    for entry in report["candidates"]:
        assert set(entry) >= CANDIDATE_KEYS, entry["name"]
        assert len(entry["val_accuracy"]["per_seed"]) == len(entry["seeds"]) >= 1
        low, high = entry["test"]["accuracy"]["ci95"]
        assert low <= entry["test"]["accuracy"]["value"] <= high
        assert set(entry["test"]["per_class_recall"]) == {"0", "1", "2"}
        assert len(entry["curves"]) == len(entry["seeds"])
        assert entry["training"]["epochs_run"] == [len(c["train_loss"]) for c in entry["curves"]]
        assert entry["training"]["optimizer_state_bytes"] > 0 and entry["training"]["cpu_s"] > 0
        assert entry["training"]["cost"]["currency"] == "EUR"
    assert report["summary"].startswith("Recommended: ") and report["commands"][0].startswith(
        "edge-export pilot --weights")


def test_adapters_keep_less_optimizer_state_than_the_full_fine_tune(pilot):
    _, report = pilot
    by_name = {c["name"]: c for c in report["candidates"]}
    full = by_name["full"]["training"]
    for entry in report["candidates"]:
        if entry["family"] == "adapter":
            assert entry["training"]["optimizer_state_bytes"] < full["optimizer_state_bytes"]
            assert entry["training"]["grad_bytes"] < full["grad_bytes"]
            # AdamW: two float32 moments per trainable weight (+ a step count per tensor)
            assert entry["training"]["optimizer_state_bytes"] >= 8 * entry["trainable_params"]


def test_recommendation_follows_the_stated_rule(pilot):
    _, report = pilot
    rec = report["recommendation"]
    best = max(report["candidates"], key=lambda c: c["val_accuracy"]["mean"])
    adapters = [c for c in report["candidates"] if c["family"] == "adapter"]
    for c in report["candidates"]:
        near = c["val_vs_best"]
        assert near["best"] == best["name"] and near["margin"] >= MARGIN
        assert near["close"] == (near["difference"] >= -near["margin"] - 1e-9)
        if c["seeds"] == best["seeds"]:  # the same windows: the difference of the means
            assert near["difference"] == pytest.approx(
                c["val_accuracy"]["mean"] - best["val_accuracy"]["mean"])
    close = [c for c in adapters if c["val_vs_best"]["close"]]
    if close:
        expected = min(close, key=lambda c: (not c["default"], c["adapter_bytes"],
                                             -c["val_accuracy"]["mean"]))
    else:
        expected = max(adapters, key=lambda c: c["val_accuracy"]["mean"])
    assert rec["name"] == expected["name"] and rec["within_margin"] == bool(close)
    assert rec["gain_vs_base"]["baseline"] == "head"
    matrix = np.asarray(rec["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == report["line"]["n_test"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(expected["test"]["accuracy"]["value"])


def test_every_candidate_ran_or_was_skipped_with_a_reason(pilot):
    _, report = pilot
    ran = {c["name"] for c in report["candidates"]}
    for skipped in report["budget"]["skipped"]:
        assert skipped["reason"].startswith("budget")
        ran.add(skipped["candidate"])
    assert {"head", "full", "lora-r4-default", "bottleneck-r8-default", "lora-r4-all"} <= ran
    assert [c["name"] for c in report["candidates"] if c["default"]] in ([], ["lora-r4-default"])


def test_the_recommended_adapter_loads_and_scores_as_reported(pilot, base):
    out, report = pilot
    rec = report["recommendation"]
    adapter_dir = out / rec["adapter_dir"]
    adapter = read_adapter_dir(adapter_dir)
    entry = next(c for c in report["candidates"] if c["name"] == rec["name"])
    assert adapter.kind == entry["method"]
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size == entry["adapter_bytes"]
    model = AdaptedModel(load_base("reference", weights=base))
    load_adapter(model, adapter_dir)
    pre = Preprocessing.from_dict(adapter.meta["preprocessing"])
    stats = ChannelStats.from_preprocessing(pre, len(pre.mean))
    test = load_dataset("ucr:ArrowHead:test", length=LENGTH,
                        class_names=adapter.meta["class_names"])
    x, y = torch.from_numpy(stats.apply(test.X)), torch.from_numpy(test.y)
    assert evaluate(model, x, y) == pytest.approx(entry["test"]["accuracy"]["value"])


def test_the_recommended_adapter_has_its_card(pilot):
    """Who, when, on which data (its fingerprint, not the data), with what test score."""
    out, report = pilot
    rec = report["recommendation"]
    card = Card.model_validate(read_adapter_dir(out / rec["adapter_dir"]).meta["card"])
    entry = next(c for c in report["candidates"] if c["name"] == rec["name"])
    train = load_dataset(LINE["data"], length=LENGTH)
    assert card.data.fingerprint == data_fingerprint(train.X, train.y, train.class_names)
    assert (card.data.n_train, card.data.n_test, card.data.eval_split) == (
        report["line"]["n_train"], len(load_dataset(LINE["test_data"], length=LENGTH)), "test")
    assert card.metrics["test_accuracy"] == pytest.approx(entry["test"]["accuracy"]["value"])
    assert card.author == os_user() and card.base.fingerprint == report["base"]["fingerprint"]


def test_the_recommended_adapter_exports_and_answers_as_reported(pilot, base, tmp_path):
    """Attached to a bundle and run by onnxruntime as the gateway runs it (its own
    preprocessing from the manifest), the adapter scores the test windows as the report says."""
    out, report = pilot
    rec = report["recommendation"]
    adapter_dir = out / rec["adapter_dir"]
    rank = max(ExportSettings().max_rank, dir_rank(adapter_dir))
    export_attach(base="reference", weights=base, adapters=[adapter_dir], names=["line"],
                  out=tmp_path / "bundle", max_rank=rank)
    entry = read_manifest(tmp_path / "bundle").adapter("line")
    test = load_dataset(LINE["test_data"], length=LENGTH, class_names=entry.class_names)
    scores = Offline(tmp_path / "bundle").scores(tmp_path / "bundle" / entry.file, entry, test.X)
    chosen = next(c for c in report["candidates"] if c["name"] == rec["name"])
    got = float(np.mean(scores.argmax(axis=1) == test.y))
    assert got == pytest.approx(chosen["test"]["accuracy"]["value"])


def test_the_recommended_adapter_keeps_its_test_windows_for_base_updates(pilot, base, tmp_path):
    """Its check sample is the line's test windows (175, under the cap) with the accuracy
    the report gives; checked against a bundle of the same base, it is ok."""
    out, report = pilot
    rec = report["recommendation"]
    adapter_dir = out / rec["adapter_dir"]
    meta = read_adapter_dir(adapter_dir).meta
    sample = read_sample(adapter_dir, meta)
    test = load_dataset(LINE["test_data"], length=LENGTH, class_names=meta["class_names"])
    np.testing.assert_array_equal(sample.X, test.X)
    chosen = next(c for c in report["candidates"] if c["name"] == rec["name"])
    assert meta["check_sample"]["accuracy"] == pytest.approx(chosen["test"]["accuracy"]["value"])
    rank = max(ExportSettings().max_rank, dir_rank(adapter_dir))
    export_attach(base="reference", weights=base, adapters=[adapter_dir], names=["line"],
                  out=tmp_path / "bundle", max_rank=rank)
    check, = check_adapters(bundle=tmp_path / "bundle", adapters=[adapter_dir]).adapters
    assert (check.status, check.changed, check.windows) == ("ok", 0, len(test))


class _NoTimeLeft(_Clock):
    """The search's own estimator, told that no further seed fits the budget."""

    def estimate(self, method: str, epochs: int | None = None) -> float:
        return float("inf")


def _result(name: str, method: str, acc: float, nbytes: int, n: int, default: bool = False):
    """Two seeds of n validation windows each; the first acc * n right (so two candidates
    differ exactly on the windows between their counts)."""
    candidate = Candidate(name, method, rank=4, default=default)
    correct = np.arange(n) < round(acc * n)
    return CandidateResult(candidate, {"adapter_bytes": nbytes},
                           runs=[SeedRun(0, correct), SeedRun(1, correct.copy())])


@pytest.mark.parametrize("n, accs, expected, within", [
    # 20 windows: 10 points behind is within the noise of the paired difference (2 SE ~ 14)
    (10, {"full": 0.8, "default": 0.7, "small": 0.8, "big": 0.8}, "default", True),
    # 2000 windows: the noise is ~1 point; 5 points is the margin; the default is behind it
    (1000, {"full": 0.8, "default": 0.7, "small": 0.78, "big": 0.8}, "small", True),
    (1000, {"full": 0.8, "default": 0.77, "small": 0.79, "big": 0.8}, "default", True),
    # no adapter close: the best adapter, said to be outside the margin
    (1000, {"full": 0.9, "default": 0.7, "small": 0.74, "big": 0.8}, "big", False),
])  # fmt: skip
def test_the_rule_keeps_the_default_until_validation_shows_it_behind(n, accs, expected, within):
    results = [_result("full", "full", accs["full"], 10_000, n),
               _result("default", "lora", accs["default"], 400, n, default=True),
               _result("small", "bottleneck", accs["small"], 300, n),
               _result("big", "lora", accs["big"], 900, n)]
    chosen, inside = choose(results)
    assert (chosen.candidate.name, inside) == (expected, within)
    near = closeness(results)[chosen.candidate.name]
    assert near["best"] == "full" and near["margin"] >= MARGIN == 0.05
    assert near["difference"] == pytest.approx(accs[expected] - accs["full"])
    assert f"{100 * MARGIN:.0f} points" in RULE


def test_each_seed_validates_on_its_own_stratified_split(base):
    line, _ = _load_line("reference", base, LINE["data"], LINE["test_data"], None)
    y = line.splits.y_train
    vals = []
    for seed in range(3):
        fold = line.fold(seed, 0.2)
        assert len(fold.y_train) + len(fold.y_val) == len(y)
        # stratified: every class in both parts, in proportion
        assert fold.y_val.bincount().tolist() == [round(0.2 * n) for n in y.bincount().tolist()]
        assert set(fold.y_train.tolist()) == set(y.tolist())
        vals.append({tuple(x.flatten()[:8].tolist()) for x in fold.x_val})
    assert vals[0] != vals[1] != vals[2]  # repeated hold-out, not one split scored three times
    again, _ = _load_line("reference", base, LINE["data"], LINE["test_data"], None)
    assert line.fold(1, 0.2).x_val.equal(again.fold(1, 0.2).x_val)  # deterministic per seed


def test_a_candidate_cut_short_by_the_budget_is_still_scored(base):
    """Seeds the budget leaves out must not leave the seeds that ran without test scores
    (the recommendation compares test predictions)."""
    line, _ = _load_line("reference", base, LINE["data"], LINE["test_data"], None)
    candidate = next(c for c in plan_candidates(line.base, classes_match=False)
                     if c.family == "adapter")
    settings = SearchSettings(budget_s=600, seeds=2, epochs=2)
    result, reason = _run_seeds(line, candidate, settings, _NoTimeLeft(1.0, 2),
                                time.perf_counter() + 600, must=True)
    assert [r.seed for r in result.runs] == [0] and "seeds 1 not run" in reason
    assert result.test_pred is not None and result.test_pred.shape == line.splits.y_eval.shape


def test_the_cli_prints_the_summary(base, tmp_path):
    args = ["pilot", "--weights", str(base), "--data", LINE["data"], "--test-data",
            LINE["test_data"], "--budget-minutes", "0.5", "--seeds", "1", "--epochs", "4",
            "--patience", "2", "--threads", "1", "--no-progress", "--out", str(tmp_path / "p"),
            "--author", "ana", "--licence", "MIT", "--intended-use", "arrow heads"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Recommended: ")
    assert f"adapter: {tmp_path / 'p'}/adapter" in result.output
    card = Card.model_validate(read_adapter_dir(tmp_path / "p" / "adapter").meta["card"])
    assert (card.author, card.licence, card.intended_use) == ("ana", "MIT", "arrow heads")
    assert card.command.startswith("edge-export pilot --weights ")


# -- bad input: one line each, nothing written ----------------------------------------------


def _npz(path: Path, spec: str, keep=None, channels: int = 1) -> Path:
    ds = load_dataset(spec, length=LENGTH)
    rows = np.ones(len(ds), bool) if keep is None else keep(np.asarray(ds.class_names)[ds.y])
    X = np.repeat(ds.X[rows], channels, axis=1)
    np.savez(path, X=X, y=np.asarray(ds.class_names)[ds.y][rows])
    return path


def bad_cases(tmp: Path) -> dict[str, tuple[dict, type, str]]:
    """name -> (run_pilot overrides, error type, a phrase of its one line)."""
    (tmp / "unknown.toml").write_text('currency = "EUR"\ncpu_hours = 0.5\n')
    (tmp / "negative.toml").write_text('currency = "EUR"\nkwh = -0.3\nwatts = 65\n')
    (tmp / "taken").mkdir()
    (tmp / "taken" / "keep.txt").write_text("x")
    return {
        "one class": ({"data": _npz(tmp / "one.npz", "ucr:ArrowHead:train",
                                    lambda y: y == "1"), "test_data": None},
                      DataError, "training needs at least 2"),
        "class absent from test": ({"test_data": _npz(tmp / "no2.npz", "ucr:ArrowHead:test",
                                                      lambda y: y != "2")},
                                   DataError, "class(es) '2'"),
        "budget too small": ({"budget_minutes": 0.00001}, ConfigError, "--budget-minutes"),
        "unknown price key": ({"prices": tmp / "unknown.toml"}, ConfigError, "'cpu_hours'"),
        "negative price": ({"prices": tmp / "negative.toml"}, ConfigError, "'kwh'"),
        "base does not fit": ({"data": _npz(tmp / "three.npz", "ucr:ArrowHead:train",
                                            channels=3), "test_data": None},
                              DataError, "channel"),
        "out exists": ({"out": tmp / "taken"}, ConfigError, "--force"),
        "unknown licence": ({"card": CardOptions(licence="Arrow-1.0")}, ConfigError,
                            "--licence (licence): Arrow-1.0 is not an SPDX licence id"),
    }


@pytest.mark.parametrize("case", ["one class", "class absent from test", "budget too small",
                                  "unknown price key", "negative price", "base does not fit",
                                  "out exists", "unknown licence"])
def test_bad_input_is_one_line_and_writes_nothing(base, tmp_path, case):
    overrides, error, phrase = bad_cases(tmp_path)[case]
    before = set(tmp_path.iterdir())
    options = {"weights": base, **LINE, "out": tmp_path / "pilot", **SHORT, **overrides}
    with pytest.raises(error) as info:
        run_pilot(**options)
    message = str(info.value)
    assert phrase in message and "\n" not in message
    assert set(tmp_path.iterdir()) == before  # no OUT, no staging directory left behind
    if case == "out exists":
        assert (tmp_path / "taken" / "keep.txt").read_text() == "x"


def test_price_file_reads_and_costs(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    prices = load_prices(path)
    assert prices.currency == "EUR" and prices.watts == 65
    from export.pilot.prices import run_cost

    cost = run_cost(prices, wall_s=3600.0, cpu_s=7200.0, gpu_s=None)
    assert cost["energy_kwh"] == pytest.approx(0.065)
    assert cost["amount"] == pytest.approx(2 * 0.5 + 0.065 * 0.3)
    assert run_cost(None, wall_s=1.0, cpu_s=1.0, gpu_s=None) is None


# -- the statistics ----------------------------------------------------------------------------


def test_confusion_and_recall_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    assert confusion(y, pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert per_class_recall(y, pred, 3).tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert accuracy(y, pred) == pytest.approx(4 / 6)


def test_macro_f1_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    # class 0: P 2/2, R 2/3 -> 0.8; class 1: P 1/2, R 1/2 -> 0.5; class 2: P 1/2, R 1 -> 2/3
    assert macro_f1(y, pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1(y, np.zeros(6, int), 3) == pytest.approx((2 * 3 / 9) / 3)


def test_bootstrap_interval_holds_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 80)
    pred = np.where(rng.random(80) < 0.7, y, (y + 1) % 3)
    for stat in (accuracy, macro_f1):
        low, high = bootstrap_ci(y, pred, 3, stat)
        assert low < stat(y, pred, 3) < high and high - low < 0.5
    assert bootstrap_ci(y, pred, 3) == bootstrap_ci(y, pred, 3)  # a fixed seed


def test_paired_difference():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    same = paired_difference(y, y, y, 2)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "distinguishable": False}
    wrong = 1 - y
    far = paired_difference(y, y, wrong, 2)
    assert far["difference"] == 1.0 and far["distinguishable"]
    near = y.copy()
    near[:2] = 1 - near[:2]  # two windows differ out of 60: not distinguishable
    close = paired_difference(y, y, near, 2)
    assert close["ci95"][0] <= 0 <= close["ci95"][1] and not close["distinguishable"]
