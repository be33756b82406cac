"""tests/data against what the workstation makes now (the full suite only: torch, onnx,
sktime). basicmotions.npz is the sktime wheel's BasicMotions; each checked-in bundle has
the files, manifest, ONNX graph and tensor shapes the exporter writes today (the weights
differ: training stops on time); tests/adapter_versions.py writes adapters and their
expected outputs as the exporter does. When a bundle check fails after a change to the
bundle format, rebuild the data (below) and commit tests/data."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from adapter_versions import derive_version
from gateway_data import PARTS, unpack
from reference_bundle import DATASET, basicmotions_split, build_bank_bundle, build_static_bundle

from edge.bundle import read_manifest
from edge.engine import read_adapter_arrays
from edge.errors import AdapterError
from export.data import load_dataset
from export.onnx.adapter_files import reference_fields

REBUILD = ("tests/data is out of date: run `.venv/bin/python tests/gateway_data.py` and "
           "commit tests/data")
SHA256 = re.compile(r"[0-9a-f]{64}")
TMP = tempfile.gettempdir() + "/"
CARD_RUN = ("author", "created", "command")  # a card's who, when and how: each build's own


@pytest.mark.parametrize("split", ["train", "test"])
def test_windows_are_the_real_basicmotions_data(split):
    train = load_dataset(f"ucr:{DATASET}:train")
    want = load_dataset(f"ucr:{DATASET}:{split}", class_names=train.class_names)
    got = basicmotions_split(split)
    assert got.X.dtype == want.X.dtype and got.y.dtype == want.y.dtype
    np.testing.assert_array_equal(got.X, want.X)
    np.testing.assert_array_equal(got.y, want.y)
    assert (got.class_names, got.channel_names) == (list(want.class_names),
                                                    list(want.channel_names))


# -- the checked-in bundles ------------------------------------------------------------------

def _masked(doc: object) -> object:
    """A manifest with what training changes replaced by its kind: floats, sha256 digests,
    a card's author, time and command line, and the temporary paths of its data files."""
    if isinstance(doc, dict):
        return {k: ("<card>" if k in CARD_RUN and doc.get("format") == "edge-card/1"
                    else _masked(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_masked(v) for v in doc]
    if isinstance(doc, float):
        return "<float>"
    if isinstance(doc, str) and SHA256.fullmatch(doc):
        return "<sha256>"
    if isinstance(doc, str) and doc.startswith(TMP):  # a data file the builder wrote there
        return "<tmp path>"
    return doc


def _value_info(values) -> list:
    return [(v.name, v.type.tensor_type.elem_type,
             [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values]


def _graph(path: Path) -> dict:
    """An ONNX model without its weights: inputs, outputs, opsets, nodes, initializer shapes."""
    model = onnx.load(str(path))
    graph = model.graph
    return {"inputs": _value_info(graph.input), "outputs": _value_info(graph.output),
            "opsets": sorted((o.domain, o.version) for o in model.opset_import),
            "nodes": [(n.op_type, n.domain) for n in graph.node],
            "initializers": sorted((t.name, t.data_type, list(t.dims))
                                   for t in graph.initializer)}


def _shapes(arrays) -> dict:
    return {k: (list(v.shape), str(v.dtype)) for k, v in arrays.items()}


def signature(bundle: Path) -> dict:
    """Every file of a bundle, described by what does not depend on the trained weights."""
    out = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        name = path.relative_to(bundle).as_posix()
        if path.suffix == ".json":
            out[name] = _masked(json.loads(path.read_text()))
        elif path.suffix == ".onnx":
            out[name] = _graph(path)
        elif path.suffix == ".onnx_adapter":
            out[name] = _shapes(read_adapter_arrays(path))
        elif path.suffix == ".npy":
            out[name] = _shapes({"": np.load(path, allow_pickle=False)})
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                out[name] = _shapes({k: data[k] for k in data.files})
        else:
            out[name] = "file"
    return out


@pytest.fixture(scope="module")
def fresh(basicmotions_bundle, engine_bundles, signing_bundle, shape_bundles
          ) -> dict[str, Path]:
    """part -> its root, built in this session by the current export code."""
    root = basicmotions_bundle.parent
    for bank in (2, 4):
        build_bank_bundle(root, bank)
    build_static_bundle(root, 4)
    return {"basicmotions": root, "engine": engine_bundles["dynamic"].parent,
            "signing": signing_bundle.parent, "shapes": shape_bundles}


@pytest.fixture(scope="module")
def checked_in(tmp_path_factory) -> dict[str, Path]:
    return {part: unpack(part, tmp_path_factory.mktemp(part)) for part in PARTS}


@pytest.mark.parametrize("part, name", [(p, d) for p, dirs in PARTS.items() for d in dirs])
def test_checked_in_bundle_is_what_the_exporter_writes_now(fresh, checked_in, part, name):
    got, want = signature(checked_in[part] / name), signature(fresh[part] / name)
    assert sorted(got) == sorted(want), REBUILD
    for file in want:
        assert got[file] == want[file], f"{part}/{name}/{file}: {REBUILD}"


# -- adapter_versions: derived versions record what the exporter would record ------------

def _nan(arrays: dict) -> dict:
    return {k: np.full_like(v, np.nan) for k, v in arrays.items()}


def _wrong_shape(arrays: dict) -> dict:
    return {k: np.zeros((1, 1), v.dtype) for k, v in arrays.items()}


@pytest.mark.parametrize("edit", [None, _nan, _wrong_shape], ids=["scaled", "nan", "shape"])
@pytest.mark.parametrize("bank", [None, 2])
def test_derived_versions_record_their_own_outputs(basicmotions_bundle, tmp_path, bank, edit):
    """A runnable derived version records its own expected outputs (a fresh CPU engine gives
    the same); NaN or wrong-shape tensors record none, as no exporter would."""
    bundle = basicmotions_bundle if bank is None else build_bank_bundle(
        basicmotions_bundle.parent, bank)
    entry, path = derive_version(bundle, "line-a", 3, tmp_path / "ours", edit=edit)
    manifest, classes = read_manifest(bundle), len(entry.class_names)
    if edit is not None:
        with pytest.raises(AdapterError):
            reference_fields(bundle, manifest, path, classes)
        assert entry.reference_logits == read_manifest(bundle).adapter("line-a", 1).reference_logits
        return
    want = reference_fields(bundle, manifest, path, classes)
    assert want and entry.reference_logits == want["reference_logits"]
    assert entry.reference_sha256 == want["reference_sha256"]
