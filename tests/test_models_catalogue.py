"""The catalogue of docs/MODELS.md: bring-your-own models (tests/byo_models.py) with real PEFT
LoRA adapters (peft.get_peft_model, save_pretrained) through merge, attach and add-adapter,
each exported graph run in onnxruntime and compared with PEFT's own model in torch.

One short case per family runs by default; the rest, and the other exporter, are `slow`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import byo_models
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edge.bundle import BASE_FILE, read_manifest
from edge.engine import Engine, load_adapter_file
from edge.errors import ExportError
from export.cli import main
from export.onnx.attach import add_adapter, export_attach
from export.onnx.merge import export_merged

peft = pytest.importorskip("peft")

TOL = 1e-5  # as tests/test_peft_io.py: PEFT's model and ours are the same arithmetic
SHAPE = (byo_models.CHANNELS, byo_models.LENGTH)
SHAPES = {"conv_image": (1, 12, 12)}  # images (C, H, W); every other model takes windows
ROOT = Path(__file__).parents[1]

# PEFT LoraConfig options per model: what a user would target on it.
TARGETS = {
    "minilm": dict(target_modules=["query", "value"], modules_to_save=["head"]),
    "minilm_2": dict(target_modules=["query", "value"], modules_to_save=["head"]),
    # the case: all-linear and the head saved whole (never a LoRA target then)
    "patchtst": dict(target_modules="all-linear", modules_to_save=["linear"]),
    "patchtsmixer": dict(target_modules=["fc1", "fc2"]),
    "tst_encoder": dict(target_modules=["q_proj", "v_proj", "fc1"], modules_to_save=["head"]),
    "informer_encoder": dict(target_modules=["q_proj", "v_proj", "fc1"],
                             modules_to_save=["head"]),
    # stem and block1d.* are Conv1d, block2d.* Conv2d
    "conv_net": dict(target_modules=["stem", "conv1", "conv2"], modules_to_save=["head"]),
    "conv_image": dict(target_modules=["stem", "conv1", "conv2"], modules_to_save=["head"]),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-zero values in every trainable tensor (LoRA A, B and the saved head)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def peft_adapters(name: str, root: Path) -> tuple[np.ndarray, list[Path], list[np.ndarray]]:
    """Inputs x (6, C, L) (or images); two adapters line1/line2 saved by PEFT; PEFT's
    logits for each."""
    base = getattr(byo_models, name)()
    x = np.random.default_rng(0).standard_normal((6, *SHAPES.get(name, SHAPE)))
    x = x.astype(np.float32)
    dirs, wants = [], []
    for seed in (1, 2):
        config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **TARGETS[name])
        model = peft.get_peft_model(copy.deepcopy(base), config).eval()
        _randomise(model, seed)
        with torch.no_grad():
            wants.append(model(torch.from_numpy(x)).numpy())
            assert np.abs(wants[-1] - base(torch.from_numpy(x)).numpy()).max() > 1e-2
        model.save_pretrained(str(root / f"line{seed}"))
        dirs.append(root / f"line{seed}")
    return x, dirs, wants


def export_three_ways(name: str, root: Path, exporter: str) -> dict[str, object]:
    """merge line1, attach line1, add-adapter line2 into that bundle: onnxruntime's logits
    for each against PEFT's, the reports, and the bundle."""
    x, dirs, wants = peft_adapters(name, root)
    spec, shape = f"byo_models:{name}", x.shape[1:]
    merged = export_merged(base=spec, weights=None, adapter=dirs[0], out=root / "m.onnx",
                           input_shape_=shape, exporter=exporter)
    bundle = root / "bundle"
    attached = export_attach(base=spec, weights=None, adapters=[dirs[0]], names=["line1"],
                             out=bundle, input_shape_=shape, exporter=exporter)
    added = add_adapter(bundle=bundle, adapter=dirs[1], name="line2", base=spec)
    engine, manifest = Engine(bundle / BASE_FILE), read_manifest(bundle)
    diffs = {"merge": np.abs(Engine(root / "m.onnx").run(x) - wants[0]).max()}
    for line, want in zip(("line1", "line2"), wants, strict=True):
        got = engine.run(x, load_adapter_file(bundle / manifest.adapter(line).file))
        diffs[f"attach {line}"] = np.abs(got[:, :want.shape[1]] - want).max()
    return dict(diffs=diffs, reports=[merged, attached, added], bundle=bundle)


def check_family(name: str, root: Path, exporter: str, tol: float = TOL) -> dict:
    result = export_three_ways(name, root, exporter)
    for report in result["reports"]:
        assert all(r.ok for r in report.parity), report.lines()
    assert max(result["diffs"].values()) <= tol, result["diffs"]
    return result


def exported_with(result: dict) -> str:
    note = next(n for n in result["reports"][1].notes if n.startswith("exported with"))
    return note.split()[2]


# The default run: one short case per family.

def test_pretrained_minilm_through_inputs_embeds(tmp_path):
    """all-MiniLM-L6-v2's pretrained weights (first 2 of 6 layers) fed windows."""
    result = check_family("minilm_2", tmp_path, "torchscript")
    slots = {s.name for s in read_manifest(result["bundle"]).slots}
    assert "slot.encoder.encoder.layer.1.attention.self.query.lora_A" in slots


def test_patchtst_with_dynamo(tmp_path):
    """PatchTST (the issue's model) exports with auto, which picks dynamo for it; slots stay
    graph inputs with default initializers, the batch axis keeps its name."""
    result = check_family("patchtst", tmp_path, "auto")
    assert exported_with(result) == "dynamo"
    manifest = read_manifest(result["bundle"])
    graph = onnx.load(str(result["bundle"] / BASE_FILE)).graph
    inputs = {i.name for i in graph.input}
    initializers = {i.name for i in graph.initializer}
    slots = {s.name for s in manifest.slots}
    assert slots <= inputs and slots <= initializers  # each slot: an input with a default
    assert manifest.inputs[0].shape == ["batch", *SHAPE] and manifest.base.opset == 18
    assert [o.name for o in manifest.outputs] == ["logits", "features"]


def test_lora_on_conv1d_and_conv2d(tmp_path):
    """A ResNet-style net: LoRA on its Conv1d and Conv2d layers, exported by dynamo."""
    result = check_family("conv_net", tmp_path, "auto")
    shapes = {s.module: s.shape for s in read_manifest(result["bundle"]).slots
              if s.part == "lora_A"}  # (max rank, in * kernel): conv A flattened
    assert shapes["block1d.conv1"] == [8, 16 * 3] and shapes["block2d.conv1"] == [8, 16 * 9]


def test_lora_on_conv2d_over_images(tmp_path):
    """--input-shape C,H,W: a Conv2d net over images exports and matches PEFT (the graph
    and its onnxruntime run; serving images over MQTT is another matter)."""
    result = check_family("conv_image", tmp_path, "torchscript")
    assert read_manifest(result["bundle"]).inputs[0].shape == ["batch", 1, 12, 12]


def test_refused_graph_names_the_node_and_keeps_the_file(tmp_path):
    """TorchScript exports PatchTST's unfold(dimension=-2) in a wrong layout: onnxruntime
    refuses the graph. The error says so, names the node, keeps the file, says what to try."""
    _, dirs, _ = peft_adapters("patchtst", tmp_path)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as refused:
        export_merged(base="byo_models:patchtst", weights=None, adapter=dirs[0], out=out,
                      input_shape_=SHAPE, exporter="torchscript")
    message = str(refused.value)
    kept = tmp_path / "m.rejected.onnx"
    assert "onnxruntime refuses the graph the torchscript exporter produced" in message
    assert "positional_encoder/Add (op Add)" in message and str(kept) in message
    assert "try --exporter dynamo" in message and "opset 17" in message
    assert kept.is_file() and not out.exists()
    onnx.load(str(kept))  # the graph itself, for a look in Netron


def test_cli_exporter_overrides_the_target(tmp_path):
    """--exporter on the command line beats [export] exporter of --target; the reference
    model exported by dynamo in fp16 with a fixed batch still gives a working bundle."""
    from adapter_factory import reference_adapters

    ref = reference_adapters(tmp_path / "ref")
    target = tmp_path / "jetson.toml"
    text = (ROOT / "firmware_configs" / "jetson-orin-nano.toml").read_text()
    target.write_text(text.replace('exporter = "auto"', 'exporter = "torchscript"'))
    args = ["attach", "--weights", str(ref["weights"]), "--adapter", str(ref["lora_qv"]),
            "--target", str(target), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(main, [*args, "--exporter", "dynamo"])
    assert result.exit_code == 0, result.output
    assert "exported with dynamo (opset 18)" in result.output
    manifest = read_manifest(tmp_path / "b")
    assert manifest.base.opset == 18 and manifest.base.precision == "fp16"
    assert manifest.inputs[0].shape == [8, 2, 64]
    result = CliRunner().invoke(main, [*args, "--force"])  # the file's torchscript
    assert "exported with torchscript (opset 17)" in result.output, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["base"]["opset"] == 17


# The rest of the catalogue (docs/MODELS.md lists the figures).

@pytest.mark.slow
@pytest.mark.parametrize("name, exporter, tol", [
    ("minilm", "auto", 2e-5),  # 6 layers, 384 wide: sums of more terms than the others
    ("minilm", "torchscript", 2e-5),
    ("patchtsmixer", "auto", TOL),
    ("tst_encoder", "auto", TOL),
    ("tst_encoder", "torchscript", TOL),
    ("conv_net", "torchscript", TOL),
])
def test_catalogue(tmp_path, name, exporter, tol):
    result = check_family(name, tmp_path, exporter, tol)
    assert exported_with(result) == ("dynamo" if exporter == "auto" else exporter)


@pytest.mark.slow
def test_informer_falls_back_to_torchscript(tmp_path):
    """Informer's distilling encoder does not trace under torch.export (transformers builds
    its attention mask for the first layer's length): auto falls back to torchscript."""
    result = check_family("informer_encoder", tmp_path, "auto")
    note = next(n for n in result["reports"][1].notes if n.startswith("exported with"))
    assert "fell back" in note and "dynamo exporter) failed" in note
    with pytest.raises(ExportError, match="dynamo exporter.*try --exporter torchscript"):
        export_merged(base="byo_models:informer_encoder", weights=None,
                      adapter=tmp_path / "line1", out=tmp_path / "d.onnx", input_shape_=SHAPE,
                      exporter="dynamo")


@pytest.mark.slow
def test_patchtsmixer_refused_by_torchscript(tmp_path):
    _, dirs, _ = peft_adapters("patchtsmixer", tmp_path)
    with pytest.raises(ExportError, match=r"patch_mixer/mlp/fc1/MatMul\w* \(op MatMul\)"):
        export_attach(base="byo_models:patchtsmixer", weights=None, adapters=dirs,
                      out=tmp_path / "b", input_shape_=SHAPE, exporter="torchscript")
    assert (tmp_path / "b.rejected.onnx").is_file() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_autoformer_exports_with_neither(tmp_path):
    """Autoformer's auto-correlation: torchscript has no ONNX form for aten::fft_rfft, and
    torch.export fails inside it; both errors say what failed and name the other exporter."""
    from export.models import load_base

    base = load_base("byo_models:autoformer_encoder")
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(str(tmp_path / "a"))
    for exporter, reason in (("torchscript", "aten::fft_rfft"), ("dynamo", "is invalid for")):
        with pytest.raises(ExportError, match=f"{exporter} exporter\\) failed: .*{reason}"):
            export_merged(base="byo_models:autoformer_encoder", weights=None,
                          adapter=tmp_path / "a", out=tmp_path / f"{exporter}.onnx",
                          input_shape_=SHAPE, exporter=exporter)


def test_lora_on_circular_conv_follows_peft_merge(tmp_path):
    """PEFT builds LoRA's A with zero padding even when the base conv pads circularly, so
    its unmerged forward differs from its own merge_and_unload at the window's edges. A
    merged graph can only be the merged weights, and attach computes the same: both follow
    merge_and_unload (docs/MODELS.md)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv1d(3, 8, 3, padding=1, padding_mode="circular"),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 16, 2)).eval()
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=2, target_modules=["0"], init_lora_weights=False)).eval()
    model.save_pretrained(str(tmp_path / "a"))
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        unmerged, merged = model(x), copy.deepcopy(model).merge_and_unload()(x)
    from export.adapters import AdaptedModel
    from export.peft_io import load_adapter

    ours = AdaptedModel(copy.deepcopy(base)).eval()
    load_adapter(ours, tmp_path / "a")
    with torch.no_grad():
        got = ours(x)
    assert (got - merged).abs().max() <= TOL < (got - unmerged).abs().max()
