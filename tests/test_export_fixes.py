"""Field-trial fixes of the exporter (issue 11): expected outputs recorded for every adapter,
add-adapter on bank bundles and a --force that cannot lose a version, bundle files readable
as the umask says, inspect output in UTF-8."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_factory import make_adapter, reference_adapters
from adapter_versions import derive_version
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from edge.bundle import (
    MANIFEST,
    atomic_write,
    read_manifest,
    read_reference_inputs,
    rows_sha256,
    sha256_file,
)
from edge.errors import AdapterRejected, ExportError
from export.adapters import AdaptedModel, LoraConfig
from export.cli import main
from export.onnx.attach import add_adapter, export_attach
from export.onnx.merge import export_merged
from export.peft_io import META_FILE, WEIGHTS_FILE, load_adapter


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_adapters(tmp_path_factory.mktemp("fixes"))


def attach(ref: dict, out: Path, adapters: list[str], bank: int = 0) -> Path:
    export_attach(base="reference", weights=ref["weights"], out=out, bank=bank,
                  adapters=[ref[a] for a in adapters])
    return out


@pytest.fixture(scope="module")
def bundles(ref, tmp_path_factory) -> dict[int, Path]:
    """bank K -> a bundle of lora_qv; tests that change one work on a copy (`fresh`)."""
    root = tmp_path_factory.mktemp("bundles")
    return {bank: attach(ref, root / f"bank{bank}", ["lora_qv"], bank) for bank in (0, 2)}


def fresh(bundles: dict[int, Path], bank: int, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles[bank], tmp_path / "bundle"))


def torch_logits(ref: dict, adapter: Path, x: np.ndarray, b_scale: float = 1.0) -> np.ndarray:
    """Torch's logits (N, adapter's classes) with the PEFT adapter loaded, lora_B scaled."""
    model = AdaptedModel(copy.deepcopy(ref["base"])).eval()
    load_adapter(model, adapter)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.mul_(b_scale)
        return model(torch.from_numpy(x)).numpy()


def huge_adapter(source: Path, out: Path) -> Path:
    """A copy of `source` whose LoRA entries are ±1e19: finite tensors (even scaled by
    alpha / r), but B @ A overflows float32, so the outputs are NaN."""
    shutil.copytree(source, out)
    tensors = load_file(str(out / WEIGHTS_FILE))
    save_file({k: v.sign() * 1e19 if ".lora_" in k else v for k, v in tensors.items()},
              str(out / WEIGHTS_FILE))
    return out


# --------------------------------------------------------------------------------------------
# A: expected outputs travel with every adapter
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bank", [0, 4], ids=["single", "bank"])
def test_attach_records_each_adapters_expected_outputs(ref, tmp_path, bank):
    names = ["lora_head", "lora_qv", "bottleneck"]  # 7, 5 and 5 classes: logits padded to 7
    out = attach(ref, tmp_path / "b", names, bank)
    manifest = read_manifest(out)
    x = read_reference_inputs(out, manifest)
    assert x.shape == (8, 2, 64) and manifest.num_classes == 7
    for name, entry in zip(names, manifest.adapters, strict=True):
        logits = np.array(entry.reference_logits)
        assert logits.shape == (8, len(entry.class_names)), name
        assert all(float(np.float32(v)) == v for row in entry.reference_logits for v in row)
        assert entry.reference_sha256 == rows_sha256(x)
        np.testing.assert_allclose(logits, torch_logits(ref, ref[name], x), atol=1e-4)


def huge_b(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """lora_B x 1e30: finite tensors and finite outputs, far from the trained ones."""
    return {k: v * np.float32(1e30) if k.endswith("lora_B") else v for k, v in arrays.items()}


def one_row_more(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor a row longer than its slot: onnxruntime refuses to run it."""
    return {k: np.zeros((v.shape[0] + 1, *v.shape[1:]), v.dtype) for k, v in arrays.items()}


@pytest.mark.parametrize("case, bank, scale, edit, keep, expect", [
    ("scaled", 0, 2.0, None, False, "torch"),
    ("scaled, bank", 2, 2.0, None, False, "torch"),
    ("scaled, kept", 0, 2.0, None, True, "v1"),
    ("huge", 2, 1.0, huge_b, False, "other"),
    ("huge, kept", 2, 1.0, huge_b, True, "v1"),
    ("wrong shape", 0, 1.0, one_row_more, False, "v1"),
])  # fmt: skip
def test_derived_versions_record_their_own_outputs(ref, bundles, tmp_path, case, bank, scale,
                                                   edit, keep, expect):
    """derive_version: the entry carries what its tensors compute, unless told to keep v1's
    (a signed adapter that does not reproduce its recorded outputs) or its tensors cannot
    run at all."""
    bundle = bundles[bank]
    manifest = read_manifest(bundle)
    v1 = manifest.adapter("lora_qv", 1)
    entry, path = derive_version(bundle, "lora_qv", 2, tmp_path / "v", scale=scale, edit=edit,
                                 keep_original_reference=keep)
    assert entry.version == 2 and entry.sha256 == sha256_file(path)
    assert entry.reference_sha256 == v1.reference_sha256
    if expect == "v1":
        assert entry.reference_logits == v1.reference_logits, case
        return
    assert np.abs(np.subtract(entry.reference_logits, v1.reference_logits)).max() > 1e-2
    if expect == "torch":
        x = read_reference_inputs(bundle, manifest)
        want = torch_logits(ref, ref["lora_qv"], x, b_scale=scale)
        np.testing.assert_allclose(entry.reference_logits, want, atol=1e-4)


# --------------------------------------------------------------------------------------------
# B, C: add-adapter on both bundle kinds; a failed --force replacement changes nothing
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bank", [0, 2], ids=["single", "bank"])
def test_add_adapter_to_either_bundle_kind(ref, bundles, tmp_path, bank):
    out = fresh(bundles, bank, tmp_path)
    new = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]), tmp_path / "line7",
                       seed=5)
    plain = add_adapter(bundle=out, adapter=new, name="line7")  # finite outputs, no torch
    checked = add_adapter(bundle=out, adapter=new, name="line7", base="reference",
                          weights=ref["weights"])
    assert plain.parity == [] and [(r.output, r.ok) for r in checked.parity] == [
        ("logits", True), ("features", True)]
    manifest = read_manifest(out)
    x = read_reference_inputs(out, manifest)
    want = torch_logits(ref, new, x)
    for version in (1, 2):
        entry = manifest.adapter("line7", version)
        assert sha256_file(out / entry.file) == entry.sha256
        assert entry.reference_sha256 == rows_sha256(x)
        np.testing.assert_allclose(entry.reference_logits, want, atol=1e-4)


@pytest.mark.parametrize("name", ["..", ".x", "a/b", "base", "x" * 65])
def test_names_the_gateway_would_refuse_are_refused_here(ref, bundles, tmp_path, name):
    """One name rule on both sides (edge/contract/names.py): nothing is written for a bad one."""
    out = fresh(bundles, 0, tmp_path)
    before = sorted(p.name for p in (out / "adapters").iterdir())
    with pytest.raises(ExportError, match="--name: adapter name"):
        add_adapter(bundle=out, adapter=ref["lora_qv"], name=name)
    with pytest.raises(ExportError, match="--name: adapter name"):
        export_attach(base="reference", weights=ref["weights"], out=tmp_path / "attached",
                      adapters=[ref["lora_qv"]], names=[name])
    assert sorted(p.name for p in (out / "adapters").iterdir()) == before


@pytest.mark.parametrize("bank", [0, 2], ids=["single", "bank"])
@pytest.mark.parametrize("case, error, match", [
    ("parity", ExportError, "--atol"),
    ("non-finite", AdapterRejected, "non-finite outputs"),
], ids=["parity", "non-finite"])
def test_failed_force_replacement_keeps_the_old_version(ref, bundles, tmp_path, bank, case,
                                                        error, match):
    out = fresh(bundles, bank, tmp_path)
    first = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]), tmp_path / "a",
                         seed=5)
    add_adapter(bundle=out, adapter=first, name="line7")
    file = out / read_manifest(out).adapter("line7", 1).file
    before = {p: p.read_bytes() for p in (file, out / MANIFEST)}
    listing = sorted(os.listdir(out / "adapters"))
    if case == "parity":  # a good adapter that misses an impossible tolerance
        other = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]),
                             tmp_path / "b", seed=6)
        kwargs = dict(base="reference", weights=ref["weights"], atol=1e-12)
    else:
        other, kwargs = huge_adapter(first, tmp_path / "b"), {}
    with pytest.raises(error, match=match):
        add_adapter(bundle=out, adapter=other, name="line7", version=1, force=True, **kwargs)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(os.listdir(out / "adapters")) == listing  # no staging file left
    # A replacement that passes its checks does replace the file and the entry.
    good = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]), tmp_path / "c",
                        seed=7)
    add_adapter(bundle=out, adapter=good, name="line7", version=1, force=True)
    entry = read_manifest(out).adapter("line7", 1)
    assert [a.version for a in read_manifest(out).adapters if a.name == "line7"] == [1]
    assert file.read_bytes() != before[file] and sha256_file(file) == entry.sha256


# --------------------------------------------------------------------------------------------
# D: bundle and merge outputs are readable as the umask says
# --------------------------------------------------------------------------------------------

@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(paths: list[Path], root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["022", "027"])
@pytest.mark.parametrize("bank", [0, 3], ids=["single", "bank"])
def test_outputs_follow_the_umask(ref, tmp_path, mask, bank):
    with umask(mask):
        out = attach(ref, tmp_path / "bundle", ["lora_qv", "bottleneck"], bank)
        new = make_adapter(ref["base"], LoraConfig(r=2, target_modules=["v"]),
                           tmp_path / "line7", seed=5)
        add_adapter(bundle=out, adapter=new, name="line7")
        export_merged(base="reference", weights=ref["weights"], adapter=ref["lora_qv"],
                      out=tmp_path / "m.onnx")
        atomic_write(tmp_path / "state.json", b"{}")  # the gateway's private files stay 0600
    paths = [out, *out.rglob("*"), tmp_path / "m.onnx"]
    want = {str(p.relative_to(tmp_path)): oct((0o777 if p.is_dir() else 0o666) & ~mask)
            for p in paths}
    assert modes(paths, tmp_path) == want
    assert "bundle/adapters/line7.v1.onnx_adapter" in want
    assert modes([tmp_path / "state.json"], tmp_path) == {"state.json": "0o600"}


# --------------------------------------------------------------------------------------------
# E: inspect prints UTF-8, not \u escapes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what, text", [("bundle", "…"), ("adapter", "Ölpumpe")],
                         ids=["bundle", "adapter"])
@pytest.mark.parametrize("args", [[], ["--json"]], ids=["text", "json"])
def test_inspect_prints_utf8(ref, bundles, tmp_path, what, text, args):
    path = bundles[0]
    if what == "adapter":
        path = Path(shutil.copytree(ref["lora_qv"], tmp_path / "adapter"))
        meta = json.loads((path / META_FILE).read_text())
        meta["class_names"] = ["Ölpumpe", "Förderband", "c2", "c3", "c4"]
        (path / META_FILE).write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["inspect", *args, str(path)])
    assert result.exit_code == 0, result.output
    assert text in result.output and "\\u" not in result.output
