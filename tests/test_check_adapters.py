"""`edge-export check-adapters` on real data with tiny bases: the validation sample `train`
keeps with every adapter, and the verdicts on a new base: the same base (ok), a base
fine-tuned further on other data (the new accuracies, the drops flagged), a base of another
architecture or input length (incompatible), an adapter without a sample (unknown) or with a
damaged one (error, one line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from click.testing import CliRunner  # noqa: E402

from edge.contract import Normalizer, Preprocessing  # noqa: E402
from export.adapters import AdaptedModel  # noqa: E402
from export.check_adapters import NO_SAMPLE, check_adapters  # noqa: E402
from export.check_sample import SAMPLE_CAP, SAMPLE_FILE, read_sample, sample_indices  # noqa: E402
from export.cli import main  # noqa: E402
from export.data import load_dataset  # noqa: E402
from export.fitting import evaluate  # noqa: E402
from export.models import load_base  # noqa: E402
from export.onnx.attach import export_attach  # noqa: E402
from export.peft_io import META_FILE, load_adapter, read_adapter_dir  # noqa: E402
from export.train import train  # noqa: E402

LENGTH = 64
TINY = {"d_model": 16, "depth": 1, "heads": 2, "patch": 8, "length": LENGTH}
QUIET = {"progress": False}
GUN = {"data": "ucr:GunPoint:train", "test_data": "ucr:GunPoint:test"}  # 150 test windows
ITALY = {"data": "ucr:ItalyPowerDemand:train", "test_data": "ucr:ItalyPowerDemand:test"}  # 1029


def _base(root: Path, name: str, epochs: int, **kw) -> Path:
    train(method="full", out=root / name, epochs=epochs, **QUIET, **kw)
    return root / name / "model.safetensors"


def _bundle(root: Path, name: str, weights: Path, adapters: list[Path]) -> Path:
    export_attach(base="reference", weights=weights, adapters=adapters, out=root / name)
    return root / name


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, Path]:
    """Base A (pretrained on ArrowHead) and two LoRA lines trained on it (GunPoint,
    ItalyPowerDemand); base B: A fine-tuned further on OSULeaf (the same architecture), with
    a line of its own; bases C (wider) and D (longer windows); a bundle of each."""
    root = tmp_path_factory.mktemp("check")
    a = _base(root, "A", 30, data="ucr:ArrowHead:train", model_config=TINY)
    for name, data in (("gun", GUN), ("italy", ITALY)):
        train(weights=a, method="lora", epochs=30, out=root / name, **data, **QUIET)
    train(weights=a, method="bottleneck", epochs=5, out=root / "gun-bottleneck", **GUN, **QUIET)
    b = _base(root, "B", 10, weights=a, data="ucr:OSULeaf:train")
    train(weights=b, method="lora", epochs=30, out=root / "gun-b", **GUN, **QUIET)
    c = _base(root, "C", 2, data="ucr:ArrowHead:train", model_config={**TINY, "d_model": 24})
    d = _base(root, "D", 2, data="ucr:ArrowHead:train", model_config={**TINY, "length": 96})
    for name, base in (("gun-c", c), ("gun-d", d)):
        train(weights=base, method="lora", epochs=2, out=root / name, data=GUN["data"], **QUIET)
    return {"root": root, "A": a, "B": b, **{n: root / n for n in (
        "gun", "italy", "gun-bottleneck", "gun-b", "gun-c", "gun-d")},
        "bundle_a": _bundle(root, "bundle-a", a, [root / "gun", root / "italy"]),
        "bundle_b": _bundle(root, "bundle-b", b, [root / "gun-b"]),
        "bundle_c": _bundle(root, "bundle-c", c, [root / "gun-c"]),
        "bundle_d": _bundle(root, "bundle-d", d, [root / "gun-d"])}


def _torch_accuracy(weights: Path, adapter_dir: Path) -> float:
    """The adapter on the base `weights` in torch, on its own sample normalised as recorded:
    an independent path to the accuracy the check computes with onnxruntime."""
    model = AdaptedModel(load_base("reference", weights=weights)).eval()
    adapter = load_adapter(model, adapter_dir)
    sample = read_sample(adapter_dir, adapter.meta)
    pre = Preprocessing.from_dict(adapter.meta["preprocessing"])
    x = Normalizer.from_preprocessing(pre, sample.X.shape[1]).apply(sample.X)
    return evaluate(model, torch.from_numpy(x), torch.from_numpy(sample.y))


def _by_name(report) -> dict:
    return {a.name: a for a in report.adapters}


# --------------------------------------------------------------------------------------------
# The sample train() keeps
# --------------------------------------------------------------------------------------------


def test_train_keeps_the_held_out_windows_raw_with_the_accuracy_they_give(lab):
    adapter = read_adapter_dir(lab["gun"])
    record = adapter.meta["check_sample"]
    sample = read_sample(lab["gun"], adapter.meta)
    test = load_dataset(GUN["test_data"], length=LENGTH, class_names=adapter.meta["class_names"])
    # 150 test windows fit under the cap: all of them, raw, and the test accuracy is theirs
    assert record["windows"] == len(test) == 150 and record["values"] == "raw"
    np.testing.assert_array_equal(sample.X, test.X)
    np.testing.assert_array_equal(sample.y, test.y)
    assert record["accuracy"] == sample.accuracy == pytest.approx(
        adapter.meta["metrics"]["test_accuracy"])
    assert record["bytes"] == (lab["gun"] / SAMPLE_FILE).stat().st_size
    assert sample.accuracy == pytest.approx(_torch_accuracy(lab["A"], lab["gun"]))


def test_a_large_test_set_is_sampled_per_class_under_the_cap(lab):
    adapter = read_adapter_dir(lab["italy"])
    sample = read_sample(lab["italy"], adapter.meta)
    test = load_dataset(ITALY["test_data"], length=LENGTH, class_names=adapter.meta["class_names"])
    assert len(sample.y) == SAMPLE_CAP < len(test)
    shares = np.bincount(test.y) / len(test)
    assert np.abs(np.bincount(sample.y) - shares * SAMPLE_CAP).max() <= 1
    # every window is one of the test windows, with its own label
    rows = {w.tobytes(): label for w, label in zip(test.X, test.y, strict=True)}
    assert all(rows[w.tobytes()] == label for w, label in zip(sample.X, sample.y, strict=True))
    assert sample.accuracy == pytest.approx(_torch_accuracy(lab["A"], lab["italy"]))


@pytest.mark.parametrize("counts, cap", [([10, 990], 256), ([300, 300, 29], 100), ([3, 4], 256)])
def test_sample_indices_keep_each_class_share(counts, cap):
    y = np.repeat(np.arange(len(counts)), counts)
    keep = sample_indices(y, len(counts), cap)
    assert len(keep) == min(cap, len(y)) and len(set(keep)) == len(keep)
    want = np.asarray(counts) * min(cap, len(y)) / len(y)
    assert np.abs(np.bincount(y[keep], minlength=len(counts)) - want).max() < 1
    np.testing.assert_array_equal(keep, sample_indices(y, len(counts), cap))  # deterministic


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bank", [0, 2])
def test_on_the_same_base_every_adapter_is_ok(lab, tmp_path, bank):
    bundle = lab["bundle_a"]
    if bank:  # a mixed-adapter bundle: checked as its bank entry, as a gateway runs it
        bundle = tmp_path / "bank"
        export_attach(base="reference", weights=lab["A"], adapters=[lab["gun"], lab["italy"]],
                      out=bundle, bank=bank)
    report = check_adapters(bundle=bundle, adapters=[lab["gun"], lab["italy"]])
    for check in report.adapters:
        assert (check.status, check.same_base, check.changed) == ("ok", True, 0)
        assert check.accuracy == pytest.approx(check.recorded)
    assert not report.failed


def test_an_updated_base_reports_each_new_accuracy_and_flags_the_drops(lab):
    adapters = [lab["gun"], lab["italy"], lab["gun-b"]]
    report = check_adapters(bundle=lab["bundle_b"], adapters=adapters, tolerance=0.02)
    checks = _by_name(report)
    # the line trained on the new base itself keeps its accuracy
    assert (checks["gun-b"].status, checks["gun-b"].same_base) == ("ok", True)
    for name in ("gun", "italy"):
        check = checks[name]
        assert check.same_base is False and check.windows == len(read_sample(
            lab[name], read_adapter_dir(lab[name]).meta).y)
        # onnxruntime through the bundle agrees with torch on the new base (to one window)
        assert abs(check.accuracy - _torch_accuracy(lab["B"], lab[name])) <= 1 / check.windows
        assert check.status == ("ok" if check.accuracy >= check.recorded - 0.02 else "retrain")
    assert checks["gun"].status == "retrain" and checks["gun"].changed > 0
    assert report.failed and report.counts()["retrain"] >= 1


def test_the_command_prints_one_line_per_adapter_writes_json_and_fails(lab, tmp_path):
    out = tmp_path / "check.json"
    result = CliRunner().invoke(main, [
        "check-adapters", "--bundle", str(lab["bundle_b"]), "--adapters", str(lab["gun"]),
        str(lab["gun-b"]), "--json", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["adapter", "status", "recorded", "new", "changed", "base"]
    assert lines[1].split()[:2] == ["gun", "retrain"] and "below its recorded" in lines[1]
    assert lines[2].split()[:2] == ["gun-b", "ok"] and len(lines) == 4
    data = json.loads(out.read_text())
    assert data["failed"] is True and data["counts"]["retrain"] == 1
    assert [a["status"] for a in data["adapters"]] == ["retrain", "ok"]
    ok = CliRunner().invoke(main, ["check-adapters", "--bundle", str(lab["bundle_a"]),
                                   "--adapters", str(lab["gun"]), "--adapters", str(lab["italy"])])
    assert ok.exit_code == 0 and "2 ok" in ok.output.splitlines()[-1]


@pytest.mark.parametrize("bundle, phrase", [
    ("bundle_c", "the base is another architecture"),  # d_model 24: slot shapes differ
    ("bundle_d", "preprocessing is for 1 channels x 64 samples; the model takes 1 x 96"),
])
def test_a_base_of_another_architecture_or_input_is_incompatible(lab, bundle, phrase):
    report = check_adapters(bundle=lab[bundle], adapters=[lab["gun"], lab["italy"]])
    for check in report.adapters:
        assert check.status == "incompatible" and phrase in check.reason, check.reason
        assert check.accuracy is None
    assert report.failed


def test_an_adapter_of_a_kind_the_bundle_has_no_slots_for_is_incompatible(lab):
    check, = check_adapters(bundle=lab["bundle_a"], adapters=[lab["gun-bottleneck"]]).adapters
    assert check.status == "incompatible" and "bottleneck" in check.reason


def _copy(lab: dict, tmp_path: Path, edit=None) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(lab["gun"], path)
    if edit:
        meta = json.loads((path / META_FILE).read_text())
        edit(path, meta)
        (path / META_FILE).write_text(json.dumps(meta))
    return path


def _drop_sample(path: Path, meta: dict) -> None:  # as trained before samples existed
    del meta["check_sample"]
    (path / SAMPLE_FILE).unlink()


def test_an_adapter_without_a_sample_is_unknown(lab, tmp_path):
    path = _copy(lab, tmp_path, _drop_sample)
    report = check_adapters(bundle=lab["bundle_a"], adapters=[path, lab["italy"]])
    first = report.adapters[0]
    assert (first.status, first.reason) == ("unknown", NO_SAMPLE)
    assert not report.failed  # nothing known to fail; the table says which are unknown
    assert "unknown" in report.lines()[1] and "1 unknown" in report.lines()[-1]


def _flip_byte(path: Path, meta: dict) -> None:
    data = bytearray((path / SAMPLE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / SAMPLE_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize("edit, phrase", [
    (lambda path, meta: (path / SAMPLE_FILE).unlink(), "cannot be read"),
    (_flip_byte, "sha256 differs"),
    (lambda path, meta: meta["check_sample"].update(file="../gun/check_sample.npz"),
     "does not name a file of the adapter directory"),
])
def test_a_damaged_sample_is_an_error_in_one_line(lab, tmp_path, edit, phrase):
    path = _copy(lab, tmp_path, edit)
    check, = check_adapters(bundle=lab["bundle_a"], adapters=[path]).adapters
    assert check.status == "error" and phrase in check.reason
    assert "\n" not in check.reason


def test_a_directory_that_is_no_adapter_is_an_error_and_the_others_are_checked(lab):
    report = check_adapters(bundle=lab["bundle_a"], adapters=[lab["bundle_a"], lab["gun"]])
    assert [a.status for a in report.adapters] == ["error", "ok"] and report.failed
    assert "no adapter_config.json" in report.adapters[0].reason


@pytest.mark.parametrize("args, phrase", [
    (["--bundle", "{root}/nope", "--adapters", "{gun}"], "--bundle"),
    (["--bundle", "{gun}", "--adapters", "{gun}"], "--bundle"),  # a directory, not a bundle
    (["--bundle", "{bundle}", "--adapters", "{root}/nope"], "--adapters"),
    (["--bundle", "{bundle}"], "--adapters"),
    (["--bundle", "{bundle}", "--adapters", "{gun}", "--tolerance", "1.5"], "--tolerance"),
    (["--bundle", "{bundle}", "--adapters", "{gun}", "--json", "{root}/no/dir.json"], "--json"),
])
def test_bad_options_are_one_line_naming_the_flag(lab, args, phrase):
    names = {"root": lab["root"], "gun": lab["gun"], "bundle": lab["bundle_a"]}
    result = CliRunner().invoke(main, ["check-adapters", *[a.format(**names) for a in args]])
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {phrase}")
