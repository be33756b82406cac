"""train(): every method on real bundled data (small subsets, a tiny reference model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file  # noqa: E402

from edge.contract import Preprocessing  # noqa: E402
from edge.errors import ConfigError, DataError  # noqa: E402
from export.adapters import AdaptedModel  # noqa: E402
from export.data import ChannelStats, load_dataset  # noqa: E402
from export.fitting import fit, seeded  # noqa: E402
from export.models import load_base, weights_fingerprint  # noqa: E402
from export.peft_io import load_adapter, read_adapter_dir  # noqa: E402
from export.train import (  # noqa: E402
    DEFAULT_RANK,
    build_model,
    evaluate,
    load_head,
    parse_targets,
    prepare,
    train,
)

LENGTH = 64
TINY = {"d_model": 16, "depth": 1, "heads": 2, "patch": 8}
FAST = {"epochs": 3, "batch_size": 16, "progress": False}
METRIC_KEYS = {
    "method", "accuracy", "train_seconds", "trainable_params", "trainable_pct", "adapter_bytes",
    "base_bytes", "adapter_base_pct", "epochs", "seed", "train_data", "test_data",
}  # fmt: skip


def subset(tmp: Path, spec: str, name: str, n: int | None = None) -> Path:
    """A real bundled dataset, resampled to LENGTH, first n windows, as an .npz file."""
    ds = load_dataset(spec, length=LENGTH)
    n = n or len(ds)
    path = tmp / f"{name}.npz"
    np.savez(path, X=ds.X[:n], y=np.asarray(ds.class_names)[ds.y[:n]],
             class_names=np.asarray(ds.class_names))
    return path




@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("data")
    return {
        "arrow_train": subset(tmp, "ucr:ArrowHead:train", "arrow_train"),  # 36 windows, 3 classes
        "arrow_test": subset(tmp, "ucr:ArrowHead:test", "arrow_test", 60),
        "gun_train": subset(tmp, "ucr:GunPoint:train", "gun_train"),  # 50 windows, 2 classes
        "gun_test": subset(tmp, "ucr:GunPoint:test", "gun_test", 60),
    }


@pytest.fixture(scope="module")
def base(files, tmp_path_factory) -> Path:
    """A tiny reference base pretrained (method full) on ArrowHead: 3 classes."""
    out = tmp_path_factory.mktemp("base") / "base"
    train(data=files["arrow_train"], method="full", model_config=TINY, out=out, **FAST)
    return out / "model.safetensors"


def _test_tensors_of(files, out):
    """GunPoint's test windows normalised with the statistics a head output recorded."""
    meta = json.loads((out / "edge_model.json").read_text())
    pre = Preprocessing.from_dict(meta["preprocessing"])
    stats = ChannelStats.from_preprocessing(pre, len(pre.mean))
    test = load_dataset(files["gun_test"], length=LENGTH, class_names=meta["class_names"])
    return torch.from_numpy(stats.apply(test.X)), torch.from_numpy(test.y)


def adapt(files, base, out, **kw):
    options = {"weights": base, "data": files["gun_train"], "test_data": files["gun_test"],
               "out": out, **FAST, **kw}
    return train(**options)


@pytest.mark.parametrize("method", ["lora", "bottleneck", "head", "full"])
def test_each_method_writes_its_outputs_and_metrics(files, base, tmp_path, method):
    result = adapt(files, base, tmp_path / method, method=method)
    out = tmp_path / method
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["method"] == method and metrics["test_accuracy"] == result.accuracy
    assert metrics["trainable_params"] > 0 and metrics["base_bytes"] > 0
    if method in ("lora", "bottleneck"):
        adapter = read_adapter_dir(out)
        assert adapter.kind == method
        assert adapter.meta["base_fingerprint"] == weights_fingerprint(load_base("reference",
                                                                                 weights=base))
        assert adapter.meta["class_names"] == ["1", "2"]
        assert adapter.meta["preprocessing"]["length"] == LENGTH
        assert set(adapter.meta["preprocessing"]) == {"length", "channel_names", "mean", "std"}
        assert metrics["trainable_pct"] < 100
    elif method == "head":  # the head only, applied on the base it names
        assert not (out / "model.safetensors").exists()
        assert (out / "head.safetensors").stat().st_size == metrics["adapter_bytes"]
        assert set(load_file(str(out / "head.safetensors"))) == {"head.weight", "head.bias"}
        model = load_head(out)
        assert model.config["num_classes"] == 2
        assert evaluate(model, *_test_tensors_of(files, out)) == result.accuracy
        assert metrics["trainable_pct"] < 5
    else:
        model = load_base("reference", weights=out / "model.safetensors")
        assert model.config["num_classes"] == 2  # the sidecar rebuilds the new head
        meta = json.loads((out / "edge_model.json").read_text())
        assert meta["class_names"] == ["1", "2"]
        assert meta["base"]["config"]["num_classes"] == 3  # what it started from
        # full: every weight, its new 2-class head being smaller than the base's 3-class one
        assert metrics["trainable_pct"] > 99


def test_pretraining_without_weights_builds_the_base_from_the_data(files, base):
    model = load_base("reference", weights=base)
    assert model.config == {**model.config, **TINY, "in_channels": 1, "num_classes": 3,
                            "length": LENGTH}
    metrics = json.loads((base.parent / "metrics.json").read_text())
    assert metrics["eval_split"] == "val" and "val_accuracy" in metrics  # held out of --data


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_same_seed_gives_identical_tensors(files, base, tmp_path, method):
    a = adapt(files, base, tmp_path / "a", method=method, seed=3)
    b = adapt(files, base, tmp_path / "b", method=method, seed=3)
    c = adapt(files, base, tmp_path / "c", method=method, seed=4)
    ta, tb, tc = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in "abc")
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)
    assert a.losses == b.losses and a.accuracy == b.accuracy
    assert c.losses != a.losses


def test_seeding_leaves_the_callers_rng_alone(files, base, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    adapt(files, base, tmp_path / "a", method="lora")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_adapter_loads_back_with_the_same_accuracy(files, base, tmp_path, method):
    result = adapt(files, base, tmp_path / "ad", method=method)
    model = AdaptedModel(load_base("reference", weights=base))
    adapter = load_adapter(model, tmp_path / "ad")
    pre = Preprocessing.from_dict(adapter.meta["preprocessing"])  # the record train wrote
    stats = ChannelStats.from_preprocessing(pre, len(pre.mean))
    test = load_dataset(files["gun_test"], length=LENGTH, class_names=adapter.meta["class_names"])
    x, y = torch.from_numpy(stats.apply(test.X)), torch.from_numpy(test.y)
    assert evaluate(model, x, y) == result.accuracy


def test_head_is_recreated_for_a_new_class_count(files, base, tmp_path):
    adapt(files, base, tmp_path / "new", method="lora")  # GunPoint: 2 classes, base has 3
    tensors = read_adapter_dir(tmp_path / "new").tensors
    assert tensors["base_model.model.head.weight"].shape == (2, TINY["d_model"])


def test_head_trains_with_the_adapter_by_default_when_classes_match(files, base, tmp_path):
    same = {"data": files["arrow_train"], "test_data": files["arrow_test"]}
    adapt(files, base, tmp_path / "on", method="lora", **same)
    adapt(files, base, tmp_path / "off", method="lora", train_head=False, train_norms=False,
          **same)
    on = read_adapter_dir(tmp_path / "on")
    off = read_adapter_dir(tmp_path / "off")
    assert on.tensors["base_model.model.head.weight"].shape == (3, TINY["d_model"])
    assert "head" in on.config.modules_to_save and "norm" in on.config.modules_to_save
    assert not any(".head." in k or "norm" in k for k in off.tensors)
    assert off.config.modules_to_save is None


def test_targets_as_list_and_regex(files, base, tmp_path):
    assert parse_targets("q, v") == ["q", "v"]
    assert parse_targets(r"blocks\.\d+\.mlp\.fc1") == r"blocks\.\d+\.mlp\.fc1"
    result = adapt(files, base, tmp_path / "re", method="lora", targets=r".*mlp\.fc\d")
    assert result.metrics["targets"] == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    result = adapt(files, base, tmp_path / "ls", method="lora", targets="conv1,k",
                   modules_to_save="stem.conv2", force=True)
    assert result.metrics["targets"] == ["stem.conv1", "blocks.0.attn.k"]
    tensors = read_adapter_dir(tmp_path / "ls").tensors
    assert tensors["base_model.model.stem.conv2.weight"].shape == (16, 16, 8)  # a full copy


def bad_npz(tmp: Path, name: str, **arrays) -> Path:
    path = tmp / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def bad_cases(tmp: Path, files: dict[str, Path]) -> dict[str, tuple[dict, str]]:
    """name -> (train() overrides, a phrase of the one-line message)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 1, LENGTH)).astype(np.float32)
    y = np.arange(20) % 2
    inf = X.copy()
    inf[3, 0, 5] = np.inf
    empty = tmp / "empty.npz"
    empty.write_bytes(b"")
    six = bad_npz(tmp, "six", X=np.repeat(X, 6, axis=1), y=y)
    return {
        "rank 2 X": ({"data": bad_npz(tmp, "rank2", X=X[:, 0], y=y)}, "rank 2"),
        "labels do not match X": ({"data": bad_npz(tmp, "short", X=X, y=y[:15])}, "to match X"),
        "Inf in X": ({"data": bad_npz(tmp, "inf", X=inf, y=y)}, "NaN/Inf"),
        "all-NaN channel": ({"data": bad_npz(tmp, "nan", X=np.where(y[:, None, None] == 0,
                                                                   np.nan, X), y=y)}, "NaN"),
        "empty file": ({"data": empty}, "empty file"),
        "missing file": ({"data": tmp / "nope.npz"}, "not found"),
        "test label unknown": ({"test_data": files["arrow_test"]}, "not in class_names"),
        "channels differ from the base": ({"data": six, "test_data": None}, "channel"),
    }


@pytest.mark.parametrize("case", [
    "rank 2 X", "labels do not match X", "Inf in X", "all-NaN channel", "empty file",
    "missing file", "test label unknown", "channels differ from the base",
])  # fmt: skip
def test_bad_data_is_a_one_line_data_error(files, base, tmp_path, case):
    overrides, phrase = bad_cases(tmp_path, files)[case]
    with pytest.raises(DataError) as info:
        adapt(files, base, tmp_path / "out", method="lora", **overrides)
    message = str(info.value)
    assert phrase in message and "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, phrase", [
    ({"method": "dora"}, "--method"),
    ({"rank": 0}, "--rank"),
    ({"epochs": 0}, "--epochs"),
    ({"lr": -1.0}, "--lr"),
    ({"method": "head", "targets": "q"}, "--targets"),
    ({"method": "full", "modules_to_save": "stem.conv1"}, "--modules-to-save"),
    ({"targets": "(unclosed"}, "regex"),
])  # fmt: skip
def test_bad_options_are_config_errors(files, base, tmp_path, overrides, phrase):
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(")):
        adapt(files, base, tmp_path / "out", **{"method": "lora", **overrides})


def test_existing_out_needs_force(files, base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        adapt(files, base, out, method="head")
    adapt(files, base, out, method="head", force=True)
    assert (out / "head.safetensors").is_file() and not (out / "keep.txt").exists()


def test_early_stopping_on_a_validation_split_of_the_training_data(files, base, tmp_path):
    result = adapt(files, base, tmp_path / "es", method="lora", epochs=12, val_fraction=0.25,
                   patience=2)
    m = result.metrics
    curves = m["curves"]
    assert len(curves["train_loss"]) == len(curves["val_accuracy"]) == m["epochs_run"] <= 12
    assert m["val_accuracy"] == max(curves["val_accuracy"])
    assert m["eval_split"] == "test" and m["n_eval"] == 60  # the test data, scored once
    assert m["n_train"] + m["n_val"] == 50  # the validation split comes out of --data
    if m["stopped"] == "patience":
        assert m["epochs_run"] - m["best_epoch"] == 2
    # the best epoch's weights were kept: the validation score is theirs
    model = AdaptedModel(load_base("reference", weights=base))
    load_adapter(model, tmp_path / "es")
    assert m["accuracy"] == evaluate(model, *_test_tensors(files, tmp_path / "es"))


def test_fit_can_keep_the_weights_the_schedule_ends_with(files, base):
    """keep="last" (the pilot's default): validation is only watched; the weights are those a
    run without a validation split ends with, bit for bit, and the curves hold both scores."""
    _, splits = prepare("reference", base, files["gun_train"], files["gun_test"],
                        val_fraction=0.25)
    finals = []
    for val, keep in ((None, "best"), (splits.val, "last")):
        with seeded(3):
            model = build_model("lora", load_base("reference", weights=base), 2, None, 4, 8.0,
                                train_head=True, train_norms=True, modules_to_save=None,
                                name="k")
            log = fit(model, splits.x_train, splits.y_train, epochs=6, lr=1e-2, batch_size=16,
                      weight_decay=0.01, seed=3, val=val, keep=keep)
        finals.append(model.state_dict())
    assert log.best_epoch is None and len(log.val_accuracy) == len(log.val_loss) == 6
    assert all(v > 0 for v in log.val_loss)
    assert all(finals[0][k].equal(finals[1][k]) for k in finals[0])
    with pytest.raises(ValueError, match="keep"):
        fit(model, splits.x_train, splits.y_train, epochs=1, lr=1e-2, batch_size=16,
            weight_decay=0.01, seed=3, keep="first")


def test_the_default_rank_is_the_methods(files, base, tmp_path):
    lora = adapt(files, base, tmp_path / "lora", method="lora", epochs=1)
    bottleneck = adapt(files, base, tmp_path / "bn", method="bottleneck", epochs=1)
    assert (lora.metrics["rank"], lora.metrics["alpha"]) == (DEFAULT_RANK["lora"], 8.0) == (4, 8.0)
    assert bottleneck.metrics["rank"] == DEFAULT_RANK["bottleneck"] == 8


def _test_tensors(files, adapter_dir):
    adapter = read_adapter_dir(adapter_dir)
    pre = Preprocessing.from_dict(adapter.meta["preprocessing"])
    stats = ChannelStats.from_preprocessing(pre, len(pre.mean))
    test = load_dataset(files["gun_test"], length=LENGTH, class_names=adapter.meta["class_names"])
    return torch.from_numpy(stats.apply(test.X)), torch.from_numpy(test.y)


def test_without_test_data_the_holdout_and_the_validation_split_are_apart(files, base, tmp_path):
    result = adapt(files, base, tmp_path / "ho", method="head", test_data=None, val_fraction=0.25)
    m = result.metrics
    assert m["eval_split"] == "holdout" and m["n_eval"] == 10  # 20% of GunPoint's 50
    assert m["n_train"] + m["n_val"] == 40 and "patience" in m and m["patience"] is None


def test_threads_apply_to_the_run_and_come_back(files, base, tmp_path):
    before = torch.get_num_threads()
    adapt(files, base, tmp_path / "t", method="head", threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="--threads"):
        adapt(files, base, tmp_path / "t0", method="head", threads=0)


@pytest.mark.parametrize("overrides, phrase", [
    ({"val_fraction": 1.5}, "--val-fraction"),
    ({"patience": 3}, "--patience needs --val-fraction"),
    ({"val_fraction": 0.2, "patience": 0}, "--patience"),
])  # fmt: skip
def test_bad_early_stopping_options(files, base, tmp_path, overrides, phrase):
    with pytest.raises(ConfigError, match=phrase):
        adapt(files, base, tmp_path / "out", method="lora", **overrides)
    assert not (tmp_path / "out").exists()


def test_head_output_is_inspected_and_refuses_another_base(files, base, tmp_path):
    from click.testing import CliRunner

    from export.cli import main

    adapt(files, base, tmp_path / "probe", method="head")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "probe")])
    assert result.exit_code == 0 and "head.weight" in result.output, result.output
    other = tmp_path / "other"
    train(data=files["gun_train"], method="full", model_config=TINY, out=other, **FAST)
    meta_file = tmp_path / "probe" / "edge_model.json"
    meta = json.loads(meta_file.read_text())
    meta["base"]["weights"] = str(other / "model.safetensors")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="fingerprint"):
        load_head(tmp_path / "probe")


def test_a_new_base_fits_basicmotions_windows_by_default(tmp_path):
    """BasicMotions' windows are 100 samples: the patch becomes 5 (not 8), the sidecar and
    edge_model.json record it, and the saved model rebuilds with the same shapes."""
    data = "ucr:BasicMotions:train"
    result = train(data=data, method="full", model_config={"d_model": 16, "depth": 1,
                                                           "heads": 2},
                   out=tmp_path / "bm", epochs=1, batch_size=16, progress=False)
    meta = json.loads((tmp_path / "bm" / "edge_model.json").read_text())
    assert meta["base"]["config"]["patch"] == 5 and meta["base"]["config"]["length"] == 100
    model = load_base("reference", weights=tmp_path / "bm" / "model.safetensors")
    assert model.config["patch"] == 5
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in result.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"length 100 is not divisible by patch 8; set "
                       r"--model-config patch=5"):
        train(data=data, method="full", model_config={"patch": 8}, out=tmp_path / "p8",
              epochs=1, progress=False)


def test_all_linear_and_exclude_modules_through_train(files, base, tmp_path):
    assert parse_targets("All-Linear") == "all-linear"
    assert parse_targets("fc2", "--exclude-modules") == ["fc2"]
    result = adapt(files, base, tmp_path / "al", method="lora", targets="all-linear",
                   exclude_modules="fc2")
    assert result.metrics["targets"] == [f"blocks.0.{p}" for p in ("attn.q", "attn.k", "attn.v",
                                                                   "attn.o", "mlp.fc1")]
    config = read_adapter_dir(tmp_path / "al").config
    assert config.exclude_modules == ["fc2"] and "head" not in config.target_modules
    with pytest.raises(ConfigError, match="--exclude-modules applies to"):
        adapt(files, base, tmp_path / "full", method="full", exclude_modules="fc2")
