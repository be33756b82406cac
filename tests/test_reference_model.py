"""The reference SensorTransformer: names, ONNX parity, load_base/save_base, fingerprints."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from edge.errors import ConfigError  # noqa: E402
from export.models import (  # noqa: E402
    SensorTransformer,
    build_reference,
    fitting_patch,
    load_base,
    save_base,
    sidecar_path,
    weights_fingerprint,
)


def make(seed: int = 0, **overrides) -> SensorTransformer:
    torch.manual_seed(seed)
    config = {"in_channels": 6, "num_classes": 4, "length": 64, "d_model": 32, **overrides}
    return SensorTransformer(**config).eval()


def test_config_lists_every_argument_and_rebuilds():
    model = make(depth=3, dropout=0.0)
    assert model.config == {
        "in_channels": 6, "num_classes": 4, "length": 64, "d_model": 32, "depth": 3,
        "heads": 4, "mlp_ratio": 2, "patch": 8, "dropout": 0.0, "window_norm": False,
    }  # fmt: skip
    twin = build_reference(json.loads(json.dumps(model.config)))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in twin.state_dict().items()}


# LoRA-targetable leaves: stable names, plain nn.Linear / nn.Conv1d
LEAVES = [
    ("stem.conv1", nn.Conv1d, (6, 32)),
    ("stem.conv2", nn.Conv1d, (32, 32)),
    ("blocks.0.attn.q", nn.Linear, (32, 32)),
    ("blocks.0.attn.k", nn.Linear, (32, 32)),
    ("blocks.0.attn.v", nn.Linear, (32, 32)),
    ("blocks.1.attn.o", nn.Linear, (32, 32)),
    ("blocks.1.mlp.fc1", nn.Linear, (32, 64)),
    ("blocks.1.mlp.fc2", nn.Linear, (64, 32)),
    ("head", nn.Linear, (32, 4)),
]


@pytest.mark.parametrize("name, kind, dims", LEAVES)
def test_targetable_leaves(name: str, kind: type, dims: tuple[int, int]):
    module = make().get_submodule(name)
    assert type(module) is kind
    if kind is nn.Linear:
        assert (module.in_features, module.out_features) == dims
    else:
        assert (module.in_channels, module.out_channels) == dims


def test_layout_and_shapes():
    model = make()
    names = dict(model.named_modules())
    for name in ("stem.act", "blocks.0.norm1", "blocks.0.norm2", "blocks.0.mlp.act", "norm"):
        assert name in names
    assert model.pos.shape == (1, 8, 32)  # (1, L / patch, d_model)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert model.stem.conv1.kernel_size == (7,) and model.stem.conv1.padding == (3,)
    assert model.stem.conv2.kernel_size == model.stem.conv2.stride == (8,)
    assert model(torch.randn(3, 6, 64)).shape == (3, 4)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"length": 100, "patch": 8}, "length 100 is not divisible by patch 8; set "
         "--model-config patch=5"),
        ({"length": 30, "patch": 4}, "set --model-config patch=3 "),
        ({"d_model": 30}, "d_model 30 is not divisible by heads 4"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"in_channels": 2.0}, "in_channels must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_bad_config(overrides: dict, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        make(**overrides)


@pytest.mark.parametrize("length, patch", [(64, 8), (256, 8), (100, 5), (150, 6), (97, 1),
                                           (6, 6), (4, 4)])
def test_an_unset_patch_is_the_largest_divisor_up_to_8(length: int, patch: int):
    assert fitting_patch(length) == patch
    model = make(length=length)
    assert model.config["patch"] == patch  # recorded: the sidecar rebuilds these shapes
    assert model.pos.shape == (1, length // patch, 32)
    assert model(torch.randn(2, 6, length)).shape == (2, 4)


def test_a_chosen_patch_survives_save_and_load(tmp_path):
    model = make(length=100)  # BasicMotions' windows
    save_base(model, tmp_path / "w.safetensors")
    twin = load_base("reference", weights=tmp_path / "w.safetensors").eval()
    assert twin.config == model.config and twin.config["patch"] == 5
    x = torch.randn(2, 6, 100)
    assert torch.equal(twin(x), model(x))


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"in_channels": 1, "num_classes": 2, "widht": 3}, r"unknown config key\(s\) \['widht'\]"),
        ({"in_channels": 1}, "lacks num_classes"),
        ([1, 2], "must be a dict"),
    ],
)
def test_build_reference_rejects(config, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        build_reference(config)


# --------------------------------------------------------------------------------------------
# ONNX parity (TorchScript exporter, dynamic batch)
# --------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo=False is deprecated in torch 2.13
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize(
    "config",
    [
        {"in_channels": 1, "num_classes": 11},  # PLAID-like, all defaults (L=256)
        {"in_channels": 6, "num_classes": 4, "length": 96, "depth": 1, "heads": 2},
    ],
    ids=["defaults", "basicmotions-like"],
)
def test_onnx_parity_at_batch_1_and_7(config: dict):
    torch.manual_seed(0)
    model = SensorTransformer(**config).eval()
    length = model.config["length"]
    # Traced at batch 2, so batch 1 and 7 prove the batch axis is really dynamic.
    session = ort.InferenceSession(
        export_onnx(model, torch.randn(2, config["in_channels"], length)),
        providers=["CPUExecutionProvider"],
    )
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 7):
        x = torch.randn(batch, config["in_channels"], length)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == (batch, config["num_classes"])
        assert np.abs(got - expected).max() < 1e-4


# --------------------------------------------------------------------------------------------
# load_base / save_base
# --------------------------------------------------------------------------------------------


def test_load_reference_from_kwargs():
    model = load_base("reference", weights=None, in_channels=3, num_classes=5, length=32)
    assert isinstance(model, SensorTransformer) and model.config["length"] == 32


def test_load_importable_callable():
    assert isinstance(load_base("torch.nn:Identity", weights=None), nn.Identity)


BASE_ERRORS = [
    ("no_such_package_xyz.models:make", {}, "module 'no_such_package_xyz.models' not found"),
    ("json:no_such_factory", {}, "has no attribute 'no_such_factory'"),
    ("json:__name__", {}, "is a str, not callable"),
    ("builtins:dict", {}, "returned dict, expected a torch.nn.Module"),
    ("builtins:int.from_bytes", {}, "raised TypeError"),
    ("just_a_module", {}, "expected 'reference' or 'package.module:callable'"),
    ("torch.nn:Identity", {"num_classes": 3}, "apply only to --base reference"),
    ("reference", {}, "needs in_channels and num_classes"),
]


@pytest.mark.parametrize("spec, kwargs, fragment", BASE_ERRORS)
def test_load_base_errors(spec: str, kwargs: dict, fragment: str):
    with pytest.raises(ConfigError) as info:
        load_base(spec, weights=None, **kwargs)
    message = str(info.value)
    assert "--base" in message and fragment in message and "\n" not in message


def test_safetensors_round_trip_uses_the_sidecar(tmp_path: Path):
    model = make(seed=1, depth=1)
    path = save_base(model, tmp_path / "base" / "model.safetensors")
    sidecar = sidecar_path(path)
    assert path.is_file() and sidecar.name == "model.safetensors.json"
    assert json.loads(sidecar.read_text())["config"] == model.config
    loaded = load_base("reference", weights=path).eval()  # no kwargs: config from the sidecar
    assert loaded.config == model.config
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert weights_fingerprint(loaded) == weights_fingerprint(model)
    # Kwargs override the sidecar (here a training-only setting).
    assert load_base("reference", weights=path, dropout=0.0).config["dropout"] == 0.0


def test_torch_state_dict_loads_with_kwargs(tmp_path: Path):
    model = make(seed=2)
    path = tmp_path / "base.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = load_base("reference", weights=path, **model.config)
    assert weights_fingerprint(loaded) == weights_fingerprint(model)


class NotAStateDict:
    """Saving this pickles a class: weights_only=True must refuse it."""


def _write_weights(kind: str, path: Path) -> None:
    model = make()
    state = model.state_dict()
    if kind == "pickle":
        torch.save({"obj": NotAStateDict()}, path)
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 10)
    elif kind == "truncated":
        save_base(model, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "missing keys":
        torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, path)
    elif kind == "tensor list":
        torch.save([torch.zeros(2)], path)
    elif kind == "bad sidecar":
        save_base(model, path)
        sidecar_path(path).write_text("{not json")


# kind, file name, load_base kwargs, message fragments
WEIGHT_ERRORS = [
    ("missing file", "nope.safetensors", {}, ["file not found"]),
    ("pickle", "pickled.pt", {"in_channels": 6, "num_classes": 4, "length": 64, "d_model": 32},
     ["weights_only=True"]),
    ("garbage", "garbage.safetensors", {"in_channels": 6, "num_classes": 4},
     ["not a readable safetensors file"]),
    ("truncated", "cut.safetensors", {}, ["not a readable safetensors file"]),
    ("missing keys", "nohead.pt", {"in_channels": 6, "num_classes": 4, "length": 64,
                                   "d_model": 32}, ["missing head.weight, head.bias"]),
    ("tensor list", "list.pt", {"in_channels": 6, "num_classes": 4}, ["does not hold a state"]),
    ("bad sidecar", "side.safetensors", {}, ["sidecar", "unreadable JSON"]),
]  # fmt: skip


@pytest.mark.parametrize("kind, name, kwargs, fragments", WEIGHT_ERRORS)
def test_weight_errors(tmp_path: Path, kind: str, name: str, kwargs: dict, fragments: list):
    path = tmp_path / name
    _write_weights(kind, path)
    with pytest.raises(ConfigError) as info:
        load_base("reference", weights=path, **kwargs)
    message = str(info.value)
    assert "--weights" in message and name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        ({"d_model": 64}, ["shape", "(32,) != (64,)"]),
        ({"depth": 3}, ["missing blocks.2."]),
        ({"depth": 1}, ["unexpected blocks.1."]),
        ({"num_classes": 5}, ["shape head.weight (4, 32) != (5, 32)"]),
    ],
)
def test_weights_that_do_not_fit(tmp_path: Path, overrides: dict, fragments: list):
    path = save_base(make(), tmp_path / "base.safetensors")
    with pytest.raises(ConfigError) as info:
        load_base("reference", weights=path, **overrides)
    message = str(info.value)
    assert "--weights" in message and "base.safetensors" in message
    for fragment in fragments:
        assert fragment in message


def test_save_base_needs_safetensors_suffix(tmp_path: Path):
    with pytest.raises(ConfigError, match="use that suffix"):
        save_base(make(), tmp_path / "base.pt")


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_tracks_weights():
    model = make(seed=3)
    first = weights_fingerprint(model)
    assert len(first) == 64 and first == weights_fingerprint(model)
    assert first == weights_fingerprint(make(seed=3))  # same weights, fresh object
    assert first != weights_fingerprint(make(seed=4))
    with torch.no_grad():
        model.blocks[0].attn.q.weight[0, 0] += 1e-3
    edited = weights_fingerprint(model)
    assert edited != first
    with torch.no_grad():
        model.blocks[0].attn.q.weight[0, 0] -= 1e-3
    assert weights_fingerprint(model) in (first, edited)  # float round trip may not be exact
    assert weights_fingerprint(make(seed=3).double()) != first  # dtype is part of it


def test_fingerprint_covers_buffers():
    model = nn.BatchNorm1d(3)
    before = weights_fingerprint(model)
    model.running_mean += 1.0
    assert weights_fingerprint(model) != before


def test_window_norm_ignores_each_windows_scale():
    """window_norm: a window and the same window scaled/shifted give the same logits."""
    model = make(window_norm=True)
    x = torch.randn(3, 6, 64)
    with torch.no_grad():
        a, b = model(x), model(x * 250.0 + 7.0)
    assert torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(make()(x * 250.0 + 7.0), make()(x), atol=1e-3)
