"""Drift profiles on the workstation (issue 14): `train` computes one on the training windows
for every method, attach / add-adapter / merge carry it into the bundle manifest and the
merged model's metadata, and `edge-export inspect` shows one line per profile. Real data
(ArrowHead and GunPoint from sktime), a tiny reference base as tests/test_train.py builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from edge.bundle import read_manifest  # noqa: E402
from edge.drift import DriftProfile  # noqa: E402
from edge.errors import AdapterRejected, ExportError  # noqa: E402
from export.cli import main  # noqa: E402
from export.data import ChannelStats, load_dataset  # noqa: E402
from export.drift_profile import compute_profile  # noqa: E402
from export.onnx.attach import add_adapter, export_attach  # noqa: E402
from export.onnx.merge import export_merged  # noqa: E402
from export.train import prepare, train  # noqa: E402

LENGTH = 64
TINY = {"d_model": 16, "depth": 1, "heads": 2, "patch": 8}
FAST = {"epochs": 3, "batch_size": 16, "progress": False}


def subset(tmp: Path, spec: str, name: str) -> Path:
    """A real bundled dataset resampled to LENGTH, as an .npz file with labels by name."""
    ds = load_dataset(spec, length=LENGTH)
    path = tmp / f"{name}.npz"
    np.savez(path, X=ds.X, y=np.asarray(ds.class_names)[ds.y],
             class_names=np.asarray(ds.class_names))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("data")
    return {"arrow": subset(tmp, "ucr:ArrowHead:train", "arrow"),  # 36 windows, 3 classes
            "gun": subset(tmp, "ucr:GunPoint:train", "gun")}  # 50 windows, 2 classes


@pytest.fixture(scope="module")
def base(files, tmp_path_factory) -> Path:
    """A tiny reference base pretrained (method full) on ArrowHead; its edge_model.json
    holds the base's drift profile."""
    out = tmp_path_factory.mktemp("base") / "base"
    train(data=files["arrow"], method="full", model_config=TINY, out=out, **FAST)
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def adapters(files, base, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters for GunPoint on that base (seeds 0 and 1)."""
    tmp = tmp_path_factory.mktemp("adapters")
    return {name: train(weights=base, data=files["gun"], method="lora", rank=4, seed=seed,
                        out=tmp / name, **FAST).out
            for name, seed in (("line7", 0), ("line8", 1))}


def adapter_meta(path: Path) -> dict:
    return json.loads((path / "edge_adapter.json").read_text())


def check_profile(doc: dict, result, n_train: int) -> DriftProfile:
    """A valid profile of `result.model` on its n_train training windows."""
    profile = DriftProfile.model_validate(doc)
    assert profile.n_windows == n_train
    assert profile.channels == 1  # ArrowHead and GunPoint are univariate
    assert profile.classes.names == list(result.class_names)
    assert abs(sum(profile.classes.shares) - 1.0) < 1e-9
    assert all(abs(sum(h.shares) - 1.0) < 1e-9 for h in [
        *profile.inputs.window_mean, *profile.inputs.window_std, profile.top_score])
    assert 1 / len(result.class_names) <= profile.top_score_mean <= 1.0
    return profile


@pytest.mark.parametrize("method", ["lora", "bottleneck", "head", "full"])
def test_train_writes_a_valid_profile_for_every_method(files, base, tmp_path, method):
    result = train(weights=base, data=files["gun"], method=method, out=tmp_path / "out",
                   **FAST)
    meta_file = "edge_adapter.json" if method in ("lora", "bottleneck") else "edge_model.json"
    doc = json.loads((result.out / meta_file).read_text())["drift_profile"]
    profile = check_profile(doc, result, result.metrics["n_train"])
    # the class shares are the trained model's predictions on the training split it saw
    _, splits = prepare("reference", base, files["gun"], None)
    with torch.no_grad():
        predicted = result.model.eval()(splits.x_train).argmax(dim=1).numpy()
    want = np.bincount(predicted, minlength=len(result.class_names)) / len(predicted)
    assert profile.classes.shares == pytest.approx(want.tolist(), abs=1e-9)


def test_profile_is_the_models_predictions_on_the_raw_and_normalised_windows(files, base):
    """compute_profile itself: shares from the argmax, top scores from the softmax, input
    histograms from the raw windows (before normalisation)."""
    from export.models import load_base

    model = load_base("reference", weights=base).eval()
    ds = load_dataset(files["arrow"], length=LENGTH)
    stats = ChannelStats.from_data(ds.X)
    x = torch.from_numpy(stats.apply(ds.X))
    doc = compute_profile(model, ds.X, x, ds.class_names)
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1).numpy()
    want = np.bincount(probs.argmax(1), minlength=3) / len(ds)
    assert doc["classes"]["shares"] == pytest.approx(want.tolist())
    assert doc["top_score_mean"] == pytest.approx(float(probs.max(1).mean()))
    means = ds.X[:, 0].astype(np.float64).mean(axis=1)
    assert doc["inputs"]["window_mean"][0]["edges"][0] == pytest.approx(
        float(np.quantile(means, 0.1)))
    assert model.training is False
    gain = compute_profile(model, ds.X * 3, x, ds.class_names)  # raw, not normalised, inputs
    assert gain["inputs"]["window_std"][0]["edges"][0] == pytest.approx(
        3 * doc["inputs"]["window_std"][0]["edges"][0])
    with pytest.raises(ExportError, match="windows"):
        compute_profile(model, ds.X[:3], x, ds.class_names)


def test_attach_and_add_adapter_put_the_profiles_in_the_manifest(base, adapters, tmp_path):
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=base, adapters=[adapters["line7"]], out=out)
    manifest = read_manifest(out)
    entry = manifest.adapter("line7")
    assert entry.drift_profile == DriftProfile.model_validate(
        adapter_meta(adapters["line7"])["drift_profile"])
    base_meta = json.loads(base.with_name("edge_model.json").read_text())
    assert manifest.base.drift_profile == DriftProfile.model_validate(
        base_meta["drift_profile"])
    assert manifest.base.drift_profile.classes.names == ["0", "1", "2"]

    add_adapter(bundle=out, adapter=adapters["line8"], name="line8")
    added = read_manifest(out).adapter("line8")
    assert added.drift_profile == DriftProfile.model_validate(
        adapter_meta(adapters["line8"])["drift_profile"])
    assert added.drift_profile != entry.drift_profile  # another seed, other predictions


def _copy_with_meta(src: Path, dest: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dest)
    meta = adapter_meta(dest)
    edit(meta)
    (dest / "edge_adapter.json").write_text(json.dumps(meta))
    return dest


def test_an_adapter_without_a_profile_still_attaches(base, adapters, tmp_path):
    old = _copy_with_meta(adapters["line7"], tmp_path / "old",
                          lambda meta: meta.pop("drift_profile"))
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=base, adapters=[old], out=out, names=["old"])
    add_adapter(bundle=out, adapter=old, name="old")
    assert [a.drift_profile for a in read_manifest(out).adapters] == [None, None]


def _other_channels(meta: dict) -> None:
    inputs = meta["drift_profile"]["inputs"]
    inputs["window_mean"] *= 2
    inputs["window_std"] *= 2


def _nan(meta: dict) -> None:
    meta["drift_profile"]["top_score"]["edges"][0] = float("nan")


@pytest.mark.parametrize("edit, error, words", [
    (_other_channels, AdapterRejected, "drift profile has 2 channel(s), the model 1"),
    (_nan, ExportError, "drift_profile: top_score.edges"),
], ids=["channels", "nan"])
def test_a_bad_profile_is_refused_at_export(base, adapters, tmp_path, edit, error, words):
    bad = _copy_with_meta(adapters["line7"], tmp_path / "bad", edit)
    with pytest.raises(error) as caught:
        export_attach(base="reference", weights=base, adapters=[bad], out=tmp_path / "b")
    assert words in str(caught.value) and str(bad) in str(caught.value)
    assert not (tmp_path / "b").exists()


def test_merge_writes_the_profile_into_the_models_metadata(base, adapters, tmp_path):
    out = tmp_path / "model.onnx"
    export_merged(base="reference", weights=base, adapter=adapters["line7"], out=out)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert DriftProfile.model_validate_json(props["edge.drift_profile"]) == \
        DriftProfile.model_validate(adapter_meta(adapters["line7"])["drift_profile"])


def test_inspect_shows_one_line_per_profile(base, adapters, tmp_path):
    bundle = tmp_path / "bundle"
    export_attach(base="reference", weights=base, adapters=[adapters["line7"]], out=bundle)
    profile = DriftProfile.model_validate(adapter_meta(adapters["line7"])["drift_profile"])
    shares = ", ".join(f"{n} {s:.0%}" for n, s in zip(profile.classes.names,
                                                       profile.classes.shares, strict=True))
    want = (f"{profile.n_windows} windows, 1 channel(s), classes {shares}, "
            f"top score mean {profile.top_score_mean:.3f}, {profile.features.dim} features "
            f"(OOD threshold {profile.features.threshold:.2f})")
    runner = CliRunner()
    for path in (adapters["line7"], bundle):
        result = runner.invoke(main, ["inspect", str(path)])
        assert result.exit_code == 0, result.output
        assert want in result.output
        assert '"inputs"' not in result.output  # a summary, not the histograms
    bundle_out = runner.invoke(main, ["inspect", str(bundle)]).output
    assert "drift_profiles:" in bundle_out and "  base: " in bundle_out
    weights = runner.invoke(main, ["inspect", str(base.parent)]).output
    n_train = json.loads(base.with_name("metrics.json").read_text())["n_train"]
    assert f"drift_profile: {n_train} windows, 1 channel(s), classes 0 " in weights


def test_the_pilots_adapter_carries_its_profile(pilot_run):
    """`edge-export pilot` saves its recommended adapter with the profile of that model on
    the line's training windows."""
    out, report = pilot_run
    meta = adapter_meta(out / "adapter")
    profile = DriftProfile.model_validate(meta["drift_profile"])
    assert profile.n_windows == report["line"]["n_train"] == meta["metrics"]["n_train"]
    assert profile.channels == 1 and profile.classes.names == meta["class_names"]
    assert abs(sum(profile.classes.shares) - 1.0) < 1e-9
