"""edge-export merge / attach / add-adapter through the Python API, on tiny models."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_factory import make_adapter, reference_adapters
from torch import nn

from edge.bundle import BASE_FILE, read_manifest, sha256_file
from edge.engine import Engine, load_adapter_file
from edge.errors import AdapterError, AdapterRejected, ExportError
from export.adapters import AdaptedModel, BottleneckConfig, LoraConfig
from export.models import weights_fingerprint
from export.onnx.attach import add_adapter, export_attach
from export.onnx.merge import ExportSettings, export_merged
from export.peft_io import load_adapter


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_adapters(tmp_path_factory.mktemp("export"))


def run_bundle(bundle: Path, x: np.ndarray, adapter: str | None = None) -> np.ndarray:
    engine = Engine(bundle / BASE_FILE)
    if adapter is None:
        return engine.run(x)
    entry = read_manifest(bundle).adapter(adapter)
    return engine.run(x, load_adapter_file(bundle / entry.file))


def test_attach_equals_base_and_merge(ref, tmp_path):
    out = tmp_path / "bundle"
    report = export_attach(base="reference", weights=ref["weights"], out=out,
                           adapters=[ref["lora_head"], ref["lora_qv"], ref["bottleneck"]])
    assert all(r.ok for r in report.parity)  # base + each adapter: logits and features
    assert [r.output for r in report.parity] == ["logits", "features"] * 4
    x = np.random.default_rng(0).standard_normal((3, 2, 64)).astype(np.float32)
    with torch.no_grad():
        base_out = ref["base"](torch.from_numpy(x)).numpy()
    # No adapter active: exactly the base (the logits are padded to the widest head, 7).
    plain = run_bundle(out, x)
    assert plain.shape == (3, 7)
    np.testing.assert_allclose(plain[:, :5], base_out, atol=1e-5)
    for name in ("lora_head", "lora_qv"):
        merged = export_merged(base="reference", weights=ref["weights"], adapter=ref[name],
                               out=tmp_path / f"{name}.onnx")
        assert merged.parity[0].ok
        want = Engine(tmp_path / f"{name}.onnx").run(x)
        got = run_bundle(out, x, name)[:, : want.shape[1]]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.abs(want[:, :5] - base_out).max() > 1e-3  # the adapter changes the output


def test_manifest_contents(ref, tmp_path):
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=ref["weights"], out=out, max_rank=16,
                  adapters=[ref["lora_head"]], names=["press-3"])
    manifest = read_manifest(out)
    assert manifest.base.sha256 == sha256_file(out / BASE_FILE)
    assert manifest.base.weights_fingerprint == weights_fingerprint(ref["base"])
    assert manifest.max_rank == 16 and manifest.dynamic_batch
    assert manifest.inputs[0].shape == ["batch", 2, 64]
    entry = manifest.adapter("press-3")
    assert entry.kind == "lora" and entry.rank == 4 and entry.version == 1
    assert entry.class_names == [f"c{i}" for i in range(7)]
    assert sha256_file(out / entry.file) == entry.sha256
    lora_a = manifest.slot_table()["slot.stem.conv1.lora_A"]
    assert lora_a.shape == [16, 2 * 7] and lora_a.kind == "lora"  # conv A flattened
    assert manifest.slot_table()["slot.blocks.0.attn.q.lora_A"].shape == [32, 16]  # A^T
    assert manifest.slot_table()["slot.head.weight"].kind == "full"
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out / BASE_FILE)).metadata_props}
    assert props["edge.weights_fingerprint"] == manifest.base.weights_fingerprint
    # Batch axis is dynamic: any batch size runs.
    assert run_bundle(out, np.zeros((13, 2, 64), np.float32), "press-3").shape == (13, 7)


def test_add_adapter_keeps_base_bytes(ref, tmp_path):
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=ref["weights"], out=out,
                  adapters=[ref["lora_qv"], ref["bottleneck"]])
    before = (out / BASE_FILE).read_bytes()
    new = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]), tmp_path / "line7",
                       seed=5)
    report = add_adapter(bundle=out, adapter=new, name="line7", base="reference",
                         weights=ref["weights"])
    assert report.parity and report.parity[0].ok
    assert (out / BASE_FILE).read_bytes() == before
    manifest = read_manifest(out)
    assert manifest.base.sha256 == sha256_file(out / BASE_FILE)
    assert [a.version for a in manifest.adapters if a.name == "line7"] == [1]
    add_adapter(bundle=out, adapter=new, name="line7")
    assert [a.version for a in read_manifest(out).adapters if a.name == "line7"] == [1, 2]
    # The converted adapter computes what torch computes with it.
    x = np.load(out / "reference_inputs.npy")
    torch_model = AdaptedModel(copy.deepcopy(ref["base"])).eval()
    load_adapter(torch_model, new)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_bundle(out, x, "line7")[:, :5], want, atol=1e-5)


@pytest.mark.parametrize("case, config, match", [
    ("no slot", LoraConfig(r=2, target_modules=["k"]), "no slot for blocks.0.attn.k"),
    ("rank", LoraConfig(r=16, target_modules=["q"]), "exceeds the bundle's max rank 8"),
    ("kind", BottleneckConfig(target_modules=["q"], size=2), "bundle's slot there is lora"),
])
def test_add_adapter_refusals(ref, tmp_path, case, config, match):
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=ref["weights"], out=out, adapters=[ref["lora_qv"]])
    before = sorted(os.listdir(out / "adapters"))
    bad = make_adapter(ref["base"], config, tmp_path / "bad")
    with pytest.raises(AdapterRejected, match=match):
        add_adapter(bundle=out, adapter=bad, name="bad")
    assert sorted(os.listdir(out / "adapters")) == before
    assert [a.name for a in read_manifest(out).adapters] == ["lora_qv"]


def test_add_adapter_refuses_other_base(ref, tmp_path):
    out = tmp_path / "bundle"
    export_attach(base="reference", weights=ref["weights"], out=out, adapters=[ref["lora_qv"]])
    other = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["q"]), tmp_path / "o",
                         fingerprint="0" * 64)
    with pytest.raises(AdapterRejected, match="trained on a different base"):
        add_adapter(bundle=out, adapter=other, name="other")


def test_bottleneck_merge_stays_in_graph(ref, tmp_path):
    report = export_merged(base="reference", weights=ref["weights"], adapter=ref["bottleneck"],
                           out=tmp_path / "m.onnx")
    assert report.parity[0].ok and "static graph" in " ".join(report.notes)


def test_bottleneck_on_convolutions_exports(ref, tmp_path):
    """A bottleneck after a Conv1d (train's default targets include the stem's convs) moves
    features to the last axis and back; the exported Transpose must be one onnxruntime runs
    (a negative perm, as movedim(1, -1) traces, is refused)."""
    config = BottleneckConfig(target_modules=["stem.conv1", "stem.conv2"], size=4)
    adapter = make_adapter(ref["base"], config, tmp_path / "conv_bottleneck", seed=3)
    report = export_attach(base="reference", weights=ref["weights"], adapters=[adapter],
                           out=tmp_path / "b")
    assert all(r.ok for r in report.parity), report.lines()
    merged = export_merged(base="reference", weights=ref["weights"], adapter=adapter,
                           out=tmp_path / "m.onnx")
    assert merged.parity[0].ok


@pytest.mark.parametrize("builder, targets, shape", [
    ("export_models:build_encoder", ["linear1", "linear2", "embed"], (3, 16)),
    ("export_models:build_convnet", ["conv1", "conv2"], (1, 12, 12)),
])
def test_other_models(tmp_path, builder, targets, shape):
    from export.models import load_base

    base = load_base(builder).eval()
    adapter = make_adapter(base, LoraConfig(r=4, target_modules=targets,
                                            modules_to_save=["head"]), tmp_path / "a")
    report = export_attach(base=builder, weights=None, adapters=[adapter], out=tmp_path / "b",
                           input_shape_=shape)
    assert all(r.ok for r in report.parity), report.lines()
    merged = export_merged(base=builder, weights=None, adapter=adapter, input_shape_=shape,
                           out=tmp_path / "m.onnx")
    assert merged.parity[0].ok


def test_module_type_without_slot(tmp_path):
    from export.models import load_base

    base = load_base("export_models:build_convnet")
    adapter = make_adapter(base, LoraConfig(r=2, target_modules=["conv2"],
                                            modules_to_save=["conv1"]), tmp_path / "a")
    with pytest.raises(ExportError, match="slottable module types: Linear, LayerNorm"):
        export_attach(base="export_models:build_convnet", weights=None, adapters=[adapter],
                      out=tmp_path / "b", input_shape_=(1, 12, 12))
    assert not (tmp_path / "b").exists()


def test_bad_inputs(ref, tmp_path):
    common = dict(base="reference", weights=ref["weights"])
    with pytest.raises(AdapterError, match="does not exist"):
        export_attach(**common, adapters=[tmp_path / "missing"], out=tmp_path / "b")
    export_attach(**common, adapters=[ref["lora_qv"]], out=tmp_path / "b")
    with pytest.raises(ExportError, match="--force"):
        export_attach(**common, adapters=[ref["lora_qv"]], out=tmp_path / "b")
    export_attach(**common, adapters=[ref["lora_qv"]], out=tmp_path / "b", force=True)
    # A PEFT dir for another model: its module paths do not exist in this base.
    foreign = make_adapter(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]),
                           tmp_path / "foreign", fingerprint=weights_fingerprint(ref["base"]))
    with pytest.raises(AdapterRejected, match="does not have"):
        export_attach(**common, adapters=[foreign], out=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nan_adapter_refused(ref, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    import shutil

    shutil.copytree(ref["lora_qv"], bad)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=f"{key} holds NaN"):
        export_merged(base="reference", weights=ref["weights"], adapter=bad,
                      out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(ref, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ExportError, match="not writable"):
        export_merged(base="reference", weights=ref["weights"], adapter=ref["lora_qv"],
                      out=locked / "m.onnx")


def test_unwritable_output_as_file(ref, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create"):
        export_merged(base="reference", weights=ref["weights"], adapter=ref["lora_qv"],
                      out=blocker / "sub" / "m.onnx")


def test_parity_failure_names_atol(ref, tmp_path):
    with pytest.raises(ExportError, match="--atol"):
        export_merged(base="reference", weights=ref["weights"], adapter=ref["lora_qv"],
                      out=tmp_path / "m.onnx", atol=1e-12)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("target", ["cpu", "jetson-orin-nano", "x86-cuda"])
def test_device_targets(ref, tmp_path, target):
    """The shipped device files' [export] sections: opset, precision, batch, max rank."""
    from edge.config import load_config

    file = Path(__file__).parents[1] / "firmware_configs" / f"{target}.toml"
    want = load_config(file).export
    out = tmp_path / "b"
    report = export_attach(base="reference", weights=ref["weights"], out=out, target=file,
                           adapters=[ref["lora_head"]])
    assert all(r.ok for r in report.parity), report.lines()
    manifest = read_manifest(out)
    assert manifest.base.precision == want.precision and manifest.max_rank == want.max_rank
    assert manifest.base.opset == want.opset and manifest.target == target
    assert manifest.dynamic_batch == (want.batch == "dynamic")
    batch = 5 if want.batch == "dynamic" else want.batch
    assert manifest.inputs[0].shape[0] == ("batch" if want.batch == "dynamic" else want.batch)
    x = np.zeros((batch, 2, 64), np.float32)
    assert run_bundle(out, x, "lora_head").shape == (batch, 7)
    if want.precision == "fp16":
        assert report.parity[0].atol == 1e-2


def test_export_settings_default_to_the_config_section():
    """No --target: the [export] section's own defaults (edge/config.py), not a copy."""
    from edge.config import Export

    settings, section = ExportSettings(), Export()
    assert {key: getattr(settings, key) for key in Export.model_fields} == section.model_dump()
    assert settings.target == "cpu"


def test_bank_rows_equal_single_adapter_runs(ref, tmp_path):
    """--bank K: one run over rows of different adapters equals each adapter's own run."""
    from edge.bank import AdapterBank
    from edge.engine import read_adapter_arrays

    adapters = [ref["lora_head"], ref["lora_qv"], ref["bottleneck"]]
    single, banked = tmp_path / "single", tmp_path / "bank"
    export_attach(base="reference", weights=ref["weights"], out=single, adapters=adapters)
    report = export_attach(base="reference", weights=ref["weights"], out=banked,
                           adapters=adapters, bank=4)
    assert all(r.ok for r in report.parity) and len(report.parity) == 8
    manifest = read_manifest(banked)
    assert manifest.bank == 4 and manifest.inputs[0].name == "x"
    bank = AdapterBank.for_bundle(banked, manifest)
    for k, entry in enumerate(manifest.adapters):
        bank.load(k, read_adapter_arrays(banked / entry.file))
    x = np.random.default_rng(3).standard_normal((9, 2, 64)).astype(np.float32)
    index = np.array([0, 1, 2, 3, 2, 1, 0, 3, 1])  # entry 3 was never loaded: the base
    got = Engine(banked / BASE_FILE).run(x, feeds=bank.feeds(index))
    names = [e.name for e in manifest.adapters] + [None]
    for row, k in enumerate(index):
        want = run_bundle(single, x[row:row + 1], names[k])
        np.testing.assert_allclose(got[row:row + 1], want, atol=1e-5)
    with pytest.raises(ExportError, match="--bank 2"):
        export_attach(base="reference", weights=ref["weights"], out=tmp_path / "small",
                      adapters=adapters, bank=2)
    full = export_attach(base="reference", weights=ref["weights"], out=tmp_path / "full",
                         adapters=adapters, bank=3)  # K adapters fill the bank: no base rows
    assert all(r.ok for r in full.parity) and len(full.parity) == 6


def test_cli_merge_attach_add_inspect(ref, tmp_path):
    """The CLI mirrors the API: one line per error, a report per export, inspect of each."""
    from click.testing import CliRunner

    from export.cli import main

    runner = CliRunner()
    weights = str(ref["weights"])
    bundle = tmp_path / "bundle"
    res = runner.invoke(main, ["attach", "--weights", weights, "--adapter", str(ref["lora_qv"]),
                               "--name", "press-3", "--out", str(bundle)])
    assert res.exit_code == 0, res.output
    assert "parity attached + press-3" in res.output
    res = runner.invoke(main, ["add-adapter", "--bundle", str(bundle), "--adapter",
                               str(ref["lora_qv"]), "--name", "line7"])
    assert res.exit_code == 0 and "line7.v1.onnx_adapter" in res.output, res.output
    res = runner.invoke(main, ["merge", "--weights", weights, "--adapter",
                               str(ref["lora_qv"]), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and "parity merged" in res.output, res.output
    for path, kind in [(bundle, "bundle"), (tmp_path / "m.onnx", "onnx"),
                       (bundle / "adapters" / "line7.v1.onnx_adapter", "onnx_adapter")]:
        res = runner.invoke(main, ["inspect", str(path)])
        assert res.exit_code == 0 and f": {kind}" in res.output, res.output
    res = runner.invoke(main, ["merge", "--weights", weights, "--adapter",
                               str(ref["lora_qv"]), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 6 and res.output.count("\n") == 1
    assert res.output.startswith("error:") and "--force" in res.output


def test_adapter_head_narrower_than_base(ref, tmp_path):
    """An adapter for fewer classes than the base: the slot keeps the base's width."""
    narrow = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["q"],
                                                  modules_to_save=["head"]),
                          tmp_path / "narrow", classes=3)
    report = export_attach(base="reference", weights=ref["weights"], adapters=[narrow],
                           out=tmp_path / "b")
    assert all(r.ok for r in report.parity), report.lines()
    assert read_manifest(tmp_path / "b").num_classes == 5
