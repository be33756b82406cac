"""Adapter directories against the real `peft` library, and every way a directory can be bad."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import random
import stat
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edge.errors import AdapterError
from export import peft_io
from export.adapters import ADAPTER_KINDS, AdaptedModel, BottleneckConfig, LoraConfig, inject
from export.adapters.base import AdapterLayer
from export.adapters.registry import adapter_kind, kind_of_file
from export.peft_io import (
    CONFIG_FILE,
    META_FILE,
    META_FORMAT,
    WEIGHTS_FILE,
    load_adapter,
    read_adapter_dir,
    save_adapter,
)

peft = pytest.importorskip("peft")

TOL = 1e-5


# -- tiny models ----------------------------------------------------------------------------


class Mlp(nn.Module):
    """(B, 6) -> (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Conv1dNet(nn.Module):
    """(B, 3, 20) -> (B, 3). No dilation or padding_mode: PEFT's conv LoRA ignores both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (B, 8, 10)
        return self.head(h.mean(-1))


class LinearHead(nn.Module):
    """(B, 6) -> (B, 3); the head is called `linear` (issue 15's model), behind a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.out_fc = nn.Linear(16, 16)  # ends with "fc" but not ".fc": PEFT's suffix rules
        self.norm = nn.LayerNorm(16)
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        return self.linear(self.norm(torch.relu(self.out_fc(torch.relu(self.fc1(x))))))


class NestedHead(nn.Module):
    """(B, 6) -> (B, 3); the head `out.fc` ends with a top-level Linear's name (`fc`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.ModuleDict({"fc": nn.Linear(16, 3)})

    def forward(self, x):
        return self.out["fc"](torch.relu(self.mid(torch.relu(self.fc(x)))))


INPUTS = {Mlp: (4, 6), Conv1dNet: (2, 3, 20), LinearHead: (4, 6), NestedHead: (4, 6)}


def build(cls, seed: int = 0):
    torch.manual_seed(seed)
    return cls().eval(), torch.randn(*INPUTS[cls])


def randomize(module: nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Small random values in every trainable tensor (the adapter and its saved modules)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def ours_from(base: nn.Module) -> AdaptedModel:
    return AdaptedModel(copy.deepcopy(base)).eval()


ROUND_TRIP_CASES = [
    pytest.param(Mlp, {"target_modules": ["fc1", "fc2"]}, id="linear"),
    pytest.param(Mlp, {"target_modules": ["fc1", "fc2"], "modules_to_save": ["head"]},
                 id="linear-modules-to-save"),
    pytest.param(Mlp, {"target_modules": r"fc\d"}, id="linear-regex"),
    pytest.param(Conv1dNet, {"target_modules": ["conv1", "conv2", "head"]}, id="conv1d"),
    pytest.param(Conv1dNet, {"target_modules": ["conv1", "conv2"], "modules_to_save": ["head"]},
                 id="conv1d-modules-to-save"),
    pytest.param(Mlp, {"target_modules": ["fc1", "fc2", "head"], "rank_pattern": {"fc2": 5},
                       "alpha_pattern": {"head": 7, "fc1": 1}}, id="rank-alpha-pattern"),
    pytest.param(Conv1dNet, {"target_modules": ["conv1", "conv2"], "use_rslora": True,
                             "rank_pattern": {"conv2": 3}}, id="rslora-rank-pattern"),
]


def _peft_saved(cls, options: dict, out: pathlib.Path):
    """(base, input, peft's output) after peft saved a non-zero adapter to `out`."""
    base, x = build(cls)
    config = peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, **options)
    model = peft.get_peft_model(copy.deepcopy(base), config).eval()
    randomize(model)  # B non-zero already; this also changes the modules_to_save copy
    with torch.no_grad():
        want = model(x)
        assert max_diff(want, base(x)) > 1e-3, "the adapter changes nothing"
    model.save_pretrained(str(out))
    return base, x, want


@pytest.mark.parametrize("cls, options", ROUND_TRIP_CASES)
def test_peft_saved_adapter_loads_here(tmp_path, cls, options):
    base, x, want = _peft_saved(cls, options, tmp_path / "peft")
    ours = ours_from(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT's own keys at neutral values: no warning
        adapter = load_adapter(ours, tmp_path / "peft", name="line7")
    assert adapter.kind == "lora" and ours.active_adapter == "line7"
    assert ours.configs["line7"].rank_pattern == options.get("rank_pattern", {})
    assert ours.configs["line7"].use_rslora == options.get("use_rslora", False)
    with torch.no_grad():
        assert max_diff(ours(x), want) <= TOL
        assert max_diff(ours.merged_model("line7")(x), want) <= TOL


@pytest.mark.parametrize("cls, options", ROUND_TRIP_CASES)
def test_adapter_saved_here_loads_in_peft(tmp_path, cls, options):
    base, x = build(cls)
    ours = inject(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, **options)).eval()
    randomize(ours)
    with torch.no_grad():
        want = ours(x)
        assert max_diff(want, base(x)) > 1e-3
    save_adapter(ours, tmp_path / "ours")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    config = model.peft_config["default"]
    assert config.rank_pattern == options.get("rank_pattern", {})
    assert config.alpha_pattern == options.get("alpha_pattern", {})
    assert config.use_rslora == options.get("use_rslora", False)
    with torch.no_grad():
        assert max_diff(model(x), want) <= TOL


# -- PEFT's target rules: modules_to_save, exclude_modules, all-linear --------------------


def lora_paths(model: nn.Module) -> set[str]:
    """Paths of the modules carrying LoRA, ours or PEFT's (both keep `lora_A` dicts)."""
    inner = model.base_model if isinstance(model, AdaptedModel) else model.base_model.model
    return {p for p, m in inner.named_modules() if isinstance(getattr(m, "lora_A", None),
                                                              nn.ModuleDict)}


RULE_CASES = [
    pytest.param(LinearHead, {"target_modules": "all-linear", "modules_to_save": ["linear"]},
                 id="all-linear-head-called-linear"),
    pytest.param(LinearHead, {"target_modules": "all-linear"}, id="all-linear-no-saved-head"),
    pytest.param(Mlp, {"target_modules": ["fc1", "fc2", "head"], "modules_to_save": ["head"]},
                 id="target-list-names-saved-module"),
    pytest.param(Mlp, {"target_modules": r"fc\d|head", "modules_to_save": ["head"]},
                 id="regex-target-names-saved-module"),
    pytest.param(LinearHead, {"target_modules": "all-linear", "exclude_modules": ["out_fc"],
                              "modules_to_save": ["linear"]}, id="exclude-list"),
    pytest.param(LinearHead, {"target_modules": r".*", "exclude_modules": r"(out_fc|norm|linear)",
                              "modules_to_save": ["norm"]}, id="exclude-regex"),
    pytest.param(LinearHead, {"target_modules": ["fc1"], "modules_to_save": ["fc"]},
                 id="saved-by-plain-suffix"),  # PEFT's endswith: "fc" saves out_fc too
    pytest.param(NestedHead, {"target_modules": "all-linear", "modules_to_save": ["out.fc"]},
                 id="all-linear-nested-head"),
]


@pytest.mark.parametrize("cls, options", RULE_CASES)
def test_peft_target_rules_load_here(tmp_path, cls, options):
    """What PEFT saved under its rules loads here onto the same modules, with its outputs."""
    base, x, want = _peft_saved(cls, options, tmp_path / "peft")
    ours = ours_from(base)
    load_adapter(ours, tmp_path / "peft", name="a")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    assert lora_paths(ours) == lora_paths(theirs)
    with torch.no_grad():
        assert max_diff(ours(x), want) <= TOL


@pytest.mark.parametrize("cls, options", RULE_CASES)
def test_target_rules_saved_here_load_in_peft(tmp_path, cls, options):
    """Our injection under the same options: LoRA where PEFT puts it (all-linear: every Linear
    but the head), never on a saved module, and the directory loads in PEFT unchanged."""
    base, x = build(cls)
    ours = inject(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, **options)).eval()
    direct = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, **options))
    head = {LinearHead: "linear", NestedHead: "out.fc"}.get(cls, "head")
    assert lora_paths(ours) == lora_paths(direct) - {head}
    randomize(ours)
    with torch.no_grad():
        want = ours(x)
    save_adapter(ours, tmp_path / "ours")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    assert lora_paths(model) == lora_paths(ours)
    with torch.no_grad():
        assert max_diff(model(x), want) <= TOL


def test_all_linear_is_written_back_as_paths(tmp_path):
    ours = inject(build(LinearHead)[0], LoraConfig(r=2, target_modules="ALL-LINEAR",
                                                   modules_to_save=["linear"]))
    save_adapter(ours, tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert config["target_modules"] == ["fc1", "out_fc"]  # the head is not among them
    excluding = inject(build(LinearHead)[0], LoraConfig(r=2, target_modules="all-linear",
                                                        exclude_modules=r"out_\w+"))
    save_adapter(excluding, tmp_path / "b")
    assert json.loads((tmp_path / "b" / CONFIG_FILE).read_text())["exclude_modules"] == r"out_\w+"
    assert read_adapter_dir(tmp_path / "b").config.exclude_modules == r"out_\w+"
    nested = inject(build(NestedHead)[0], LoraConfig(r=2, target_modules="all-linear"))
    # As suffixes ["fc", "mid"] would also select the head out.fc: one exact regex instead.
    assert nested.configs["default"].target_modules == r"fc|mid"
    assert lora_paths(nested) == {"fc", "mid"}


def test_rank_and_alpha_patterns_reach_the_layers(tmp_path):
    options = {"target_modules": ["fc1", "fc2", "head"], "rank_pattern": {"fc2": 5},
               "alpha_pattern": {"head": 7}, "use_rslora": True}
    _peft_saved(Mlp, options, tmp_path / "peft")
    ours = ours_from(build(Mlp)[0])
    load_adapter(ours, tmp_path / "peft", name="a")
    m = ours.base_model
    assert [m.get_submodule(p).lora_A["a"].weight.shape[0] for p in ("fc1", "fc2", "head")] \
        == [2, 5, 2]
    assert [m.get_submodule(p).scaling["a"] for p in ("fc1", "fc2", "head")] \
        == pytest.approx([4 / 2**0.5, 4 / 5**0.5, 7 / 2**0.5])
    # ... and back: peft builds the same ranks and scales from our file.
    save_adapter(ours, tmp_path / "ours", name="a")
    model = peft.PeftModel.from_pretrained(build(Mlp)[0], str(tmp_path / "ours"))
    layers = model.base_model.model
    assert [layers.get_submodule(p).r["default"] for p in ("fc1", "fc2", "head")] == [2, 5, 2]
    assert [layers.get_submodule(p).scaling["default"] for p in ("fc1", "fc2", "head")] \
        == pytest.approx([4 / 2**0.5, 4 / 5**0.5, 7 / 2**0.5])


def test_peft_file_keys(tmp_path):
    ours = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1"],
                                            modules_to_save=["head"]), name="x")
    save_adapter(ours, tmp_path / "a")
    keys = set(load_file(str(tmp_path / "a" / WEIGHTS_FILE)))
    assert keys == {"base_model.model.fc1.lora_A.weight", "base_model.model.fc1.lora_B.weight",
                    "base_model.model.head.weight", "base_model.model.head.bias"}
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2
    assert config["target_modules"] == ["fc1"] and config["modules_to_save"] == ["head"]
    assert "exclude_modules" not in config  # unset: PEFT before 0.14 refuses the key



def test_head_for_another_label_set_is_rebuilt_on_load(tmp_path):
    base, x = build(Mlp)
    ours = inject(copy.deepcopy(base), LoraConfig(r=2, target_modules=["fc1"],
                                                  modules_to_save=["head"]), name="five")
    ours.replace_saved_module("five", "head", nn.Linear(16, 5))
    randomize(ours)
    with torch.no_grad():
        want = ours(x)
    assert want.shape == (4, 5)
    save_adapter(ours, tmp_path / "five")
    loaded = ours_from(base)
    load_adapter(loaded, tmp_path / "five")
    with torch.no_grad():
        assert max_diff(loaded(x), want) <= TOL
        with loaded.disable_adapter():
            assert loaded(x).shape == (4, 3)
    assert loaded.summary().trainable_params == 2 * (6 + 16) + 16 * 5 + 5

# -- config keys ----------------------------------------------------------------------------


def _edit_config(path: pathlib.Path, **changes) -> None:
    file = path / CONFIG_FILE
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize("key, value", [
    ("some_future_option", 3), ("some_future_mode", "fast"), ("lora_bias", True),
])
def test_unknown_config_key_is_ignored_with_a_warning(tmp_path, key, value):
    base, x, want = _peft_saved(Mlp, {"target_modules": ["fc1"]}, tmp_path / "a")
    _edit_config(tmp_path / "a", **{key: value})
    ours = ours_from(base)
    with pytest.warns(UserWarning, match=f"{CONFIG_FILE}.*ignoring unknown LoRA config keys.*"
                                         f"{key}"):
        load_adapter(ours, tmp_path / "a")
    with torch.no_grad():
        assert max_diff(ours(x), want) <= TOL


@pytest.mark.parametrize("key, value", [
    ("some_future_option", None), ("some_future_flag", False), ("some_future_list", []),
    ("some_future_dict", {}), ("megatron_core", "megatron.core"), ("peft_version", "9.9"),
])
def test_neutral_config_keys_cause_no_warning(tmp_path, key, value):
    _peft_saved(Mlp, {"target_modules": ["fc1"]}, tmp_path / "a")
    _edit_config(tmp_path / "a", **{key: value})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_adapter_dir(tmp_path / "a")


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "use_dora=True is not supported"),
    ({"layers_to_transform": [0]}, "layers_to_transform=\\[0\\] is not supported"),
    ({"bias": "all"}, "bias='all' is not supported"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
    ({"r": "8"}, "adapter_config.json"),
    ({"r": 0}, "rank must be >= 1"),
    ({"not_a_field": 1, "r": -1}, "rank must be >= 1"),
])
def test_unsupported_config_values(tmp_path, changes, message):
    _peft_saved(Mlp, {"target_modules": ["fc1"]}, tmp_path / "a")
    _edit_config(tmp_path / "a", **changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AdapterError, match=message):
            read_adapter_dir(tmp_path / "a")


# -- the adapter kind registry --------------------------------------------------------------


@pytest.mark.parametrize("name", list(ADAPTER_KINDS))
def test_each_registered_kind_reads_and_writes_itself(tmp_path, name):
    """A kind's registration agrees with its own classes: the config names it, its file tag
    finds it, and its key parts split exactly the file keys its layer writes."""
    kind = adapter_kind(name)
    assert kind.config_cls.kind == name
    assert issubclass(kind.layer_cls, AdapterLayer) and kind.layer_cls.supported
    code = kind.slot_code()
    assert all(hasattr(code, a) for a in ("SLOT", "BANK_SLOT", "to_slot", "slot_shape",
                                          "slot_activation"))
    config = kind.config_cls.from_train_options(rank=2, alpha=4.0, target_modules=["fc1"],
                                                modules_to_save=None)
    assert config.train_options()["rank"] == 2
    save_adapter(inject(build(Mlp)[0], config, name="a"), tmp_path / "a")
    adapter = read_adapter_dir(tmp_path / "a")
    assert kind_of_file(config.to_file_dict()) is kind and adapter.kind == name
    assert adapter.config == config
    split = [kind.split_key(k.removeprefix("base_model.model.")) for k in adapter.tensors]
    assert sorted(split) == sorted(("fc1", part) for part in kind.key_parts.values())
    assert kind.rank_part in kind.key_parts.values()


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(AdapterError, match="unknown adapter kind 'ia3'; known: lora, bottleneck"):
        adapter_kind("ia3")


# -- bottleneck and our metadata ------------------------------------------------------------


@pytest.mark.parametrize("cls, config", [
    pytest.param(Mlp, BottleneckConfig(target_modules=["fc1", "fc2"], size=4), id="linear"),
    pytest.param(Mlp, BottleneckConfig(target_modules=["fc2"], reduction_factor=4,
                                       activation="tanh", modules_to_save=["head"]),
                 id="linear-modules-to-save"),
    pytest.param(Conv1dNet, BottleneckConfig(target_modules=["conv1", "conv2"], size=3,
                                             activation="relu"), id="conv1d"),
])
def test_bottleneck_round_trip(tmp_path, cls, config):
    base, x = build(cls)
    ours = inject(copy.deepcopy(base), config, name="bn").eval()
    randomize(ours)
    with torch.no_grad():
        want = ours(x)
        assert max_diff(want, base(x)) > 1e-3
    save_adapter(ours, tmp_path / "bn")
    saved = json.loads((tmp_path / "bn" / CONFIG_FILE).read_text())
    assert saved["adapter_type"] == "bottleneck"
    assert {k: saved[k] for k in ("target_modules", "size", "reduction_factor", "activation",
                                  "placement", "modules_to_save")} == {
        "target_modules": config.target_modules, "size": config.size,
        "reduction_factor": config.reduction_factor, "activation": config.activation,
        "placement": "after", "modules_to_save": config.modules_to_save}
    adapter = read_adapter_dir(tmp_path / "bn")
    assert adapter.kind == "bottleneck" and adapter.config == config
    loaded = ours_from(base)
    load_adapter(loaded, tmp_path / "bn")
    assert loaded.active_adapter == "bn"  # the name comes from edge_adapter.json
    with torch.no_grad():
        assert max_diff(loaded(x), want) <= TOL


def test_bottleneck_unknown_key_warns(tmp_path):
    ours = inject(build(Mlp)[0], BottleneckConfig(target_modules=["fc1"], size=2))
    save_adapter(ours, tmp_path / "bn")
    _edit_config(tmp_path / "bn", some_future_option=3)
    with pytest.warns(UserWarning, match="unknown bottleneck config keys.*some_future_option"):
        adapter = read_adapter_dir(tmp_path / "bn")
    assert adapter.config.size == 2


def test_metadata_sidecar(tmp_path):
    ours = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1"]), name="line7")
    randomize(ours)
    meta = {"base_fingerprint": "sha256:abc", "class_names": ["ok", "worn", "broken"],
            "preprocessing": {"length": 20}, "metrics": {"accuracy": 0.9}}
    save_adapter(ours, tmp_path / "out", meta=meta)
    sidecar = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert sidecar == {"format": META_FORMAT, "name": "line7", "kind": "lora", **meta}
    adapter = read_adapter_dir(tmp_path / "out")
    assert adapter.meta == sidecar
    assert adapter.nbytes == 4 * (2 * 6 + 16 * 2)
    # Without a sidecar (a PEFT directory) the directory's name names the adapter.
    (tmp_path / "out" / META_FILE).unlink()
    loaded = ours_from(build(Mlp)[0])
    load_adapter(loaded, tmp_path / "out")
    assert set(loaded.configs) == {"out"}


# -- bad directories ------------------------------------------------------------------------


def _truncate(d: pathlib.Path) -> None:
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _random_bytes(d: pathlib.Path) -> None:
    (d / WEIGHTS_FILE).write_bytes(random.Random(0).randbytes(512))


def _empty(d: pathlib.Path) -> None:
    (d / WEIGHTS_FILE).write_bytes(b"")


def _retensor(d: pathlib.Path, edit) -> None:
    tensors = load_file(str(d / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(d / WEIGHTS_FILE))


def _extra_key(d: pathlib.Path) -> None:
    _retensor(d, lambda t: t.update({"base_model.model.nope.lora_A.weight": torch.zeros(2, 6)}))


def _missing_key(d: pathlib.Path) -> None:
    _retensor(d, lambda t: t.pop("base_model.model.fc2.lora_B.weight"))


def _wrong_shape(d: pathlib.Path) -> None:
    _retensor(d, lambda t: t.update({"base_model.model.fc1.lora_A.weight": torch.zeros(3, 6)}))


def _poison(value: float):
    def edit(d: pathlib.Path) -> None:
        def put(t):
            t["base_model.model.fc2.lora_B.weight"][3, 1] = value
        _retensor(d, put)
    return edit


def _no_config(d: pathlib.Path) -> None:
    (d / CONFIG_FILE).unlink()


def _bad_json(d: pathlib.Path) -> None:
    (d / CONFIG_FILE).write_text('{"r": 2, "target_modules": ["fc1"')


def _json_list(d: pathlib.Path) -> None:
    (d / CONFIG_FILE).write_text("[1, 2]")


def _bad_meta(d: pathlib.Path) -> None:
    (d / META_FILE).write_text("{not json")


def _unknown_target(d: pathlib.Path) -> None:
    _edit_config(d, target_modules=["fc1", "fc9"])


WEIGHTS, CONFIG, META = WEIGHTS_FILE, CONFIG_FILE, META_FILE
BAD_DIR_CASES = [
    pytest.param(_truncate, WEIGHTS, "corrupted or truncated", id="truncated"),
    pytest.param(_random_bytes, WEIGHTS, "corrupted or truncated", id="random-bytes"),
    pytest.param(_empty, WEIGHTS, "corrupted or truncated", id="empty-file"),
    pytest.param(_extra_key, WEIGHTS, "tensor base_model.model.nope.lora_A.weight is meant for "
                 "module 'nope', which this model does not have", id="key-matches-no-module"),
    pytest.param(_missing_key, WEIGHTS, r"tensor base_model.model.fc2.lora_B.weight is missing: "
                 r"module 'fc2' \(Linear\(in_features=16, out_features=16, bias=True\)\) "
                 "expects it", id="key-missing"),
    pytest.param(_wrong_shape, WEIGHTS, r"tensor base_model.model.fc1.lora_A.weight has shape "
                 r"\(3, 6\), the model needs \(2, 6\) for module 'fc1' \(Linear\(in_features=6",
                 id="wrong-shape"),
    pytest.param(_poison(float("nan")), WEIGHTS, "tensor base_model.model.fc2.lora_B.weight "
                 "holds NaN or Inf", id="nan"),
    pytest.param(_poison(float("inf")), WEIGHTS, "tensor base_model.model.fc2.lora_B.weight "
                 "holds NaN or Inf", id="inf"),
    pytest.param(_no_config, "", f"no {CONFIG}", id="no-config"),
    pytest.param(_bad_json, CONFIG, "not valid JSON", id="invalid-json"),
    pytest.param(_json_list, CONFIG, "expected a JSON object", id="json-not-an-object"),
    pytest.param(_bad_meta, META, "not valid JSON", id="invalid-sidecar"),
    pytest.param(_unknown_target, CONFIG, "target_modules 'fc9' matches no module; modules are: "
                 "fc1 \\(Linear\\)", id="config-target-matches-no-module"),
]


def _good_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    ours = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1", "fc2"]), name="good")
    randomize(ours)
    save_adapter(ours, tmp_path / "bad")
    return tmp_path / "bad"


@pytest.mark.parametrize("spoil, file, message", BAD_DIR_CASES)
def test_bad_adapter_dir(tmp_path, spoil, file, message):
    d = _good_dir(tmp_path)
    spoil(d)
    model, x = build(Mlp)
    ours = AdaptedModel(model)
    ours.add_adapter("keep", LoraConfig(r=1, target_modules=["fc2"]))
    randomize(ours)
    with torch.no_grad():
        before = ours(x)
    with pytest.raises(AdapterError, match=message) as info:
        load_adapter(ours, d, name="new")
    assert str(d / file) in str(info.value)
    # Nothing half-loaded stays behind; the adapter that was active still is.
    assert set(ours.configs) == {"keep"} and ours.active_adapter == "keep"
    assert not [k for k in ours.state_dict() if ".new." in k]
    with torch.no_grad():
        assert torch.equal(ours(x), before)


class _Payload:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("filename", ["adapter_model.bin", "adapter_model.pt"])
def test_pickle_weights_are_refused_never_loaded(tmp_path, filename):
    d = _good_dir(tmp_path)
    (d / WEIGHTS_FILE).unlink()
    marker = tmp_path / "executed"
    (d / filename).write_bytes(pickle.dumps(_Payload(marker)))
    ours = AdaptedModel(build(Mlp)[0])
    with pytest.raises(AdapterError, match=f"no {WEIGHTS_FILE}; found {filename}, but pickle "
                                           "files are never loaded"):
        load_adapter(ours, d)
    assert not marker.exists(), "the pickle was executed"
    assert ours.configs == {}
    # The payload is live: loading it would have left the marker.
    pickle.loads((d / filename).read_bytes())
    assert marker.exists()


def test_missing_directory(tmp_path):
    with pytest.raises(AdapterError, match=f"adapter directory {tmp_path / 'nope'} does not"):
        read_adapter_dir(tmp_path / "nope")


def test_load_under_an_existing_name_is_refused(tmp_path):
    d = _good_dir(tmp_path)
    ours = ours_from(build(Mlp)[0])
    load_adapter(ours, d, name="a")
    with pytest.raises(AdapterError, match="'a' exists already"):
        load_adapter(ours, d, name="a")
    load_adapter(ours, d, name="b")
    assert set(ours.configs) == {"a", "b"} and ours.active_adapter == "b"


# -- saving ---------------------------------------------------------------------------------


def _adapted() -> AdaptedModel:
    ours = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1"]), name="a")
    randomize(ours)
    return ours


def test_save_onto_existing_dir_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    ours = _adapted()
    with pytest.raises(AdapterError, match=f"{out} exists; pass --force"):
        save_adapter(ours, out)
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]
    save_adapter(ours, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, META_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_save_into_read_only_dir(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(AdapterError, match=f"{parent} is not writable"):
            save_adapter(_adapted(), parent / "out")
        with pytest.raises(AdapterError, match=f"cannot create {parent / 'sub'}"):
            save_adapter(_adapted(), parent / "sub" / "out")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(stat.S_IRWXU)



def test_save_into_dir_reported_unwritable(tmp_path, monkeypatch):
    # The check the test above makes for real, where running as root defeats chmod.
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access

    def access(path, mode, **kwargs):
        if pathlib.Path(path) == parent and mode == os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(AdapterError, match=f"{parent} is not writable"):
        save_adapter(_adapted(), parent / "out")
    assert list(parent.iterdir()) == []

def test_save_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match=f"cannot create {tmp_path / 'file'}"):
        save_adapter(_adapted(), tmp_path / "file" / "out")


def test_save_unknown_adapter(tmp_path):
    with pytest.raises(AdapterError, match="no adapter named 'zz'"):
        save_adapter(_adapted(), tmp_path / "out", name="zz")
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ours = _adapted()
    save_adapter(ours, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    first = (out / WEIGHTS_FILE).read_bytes()
    # The directory is as readable as any other file the user creates (not mkdtemp's 0700).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(peft_io, "save_file", disk_full)
    randomize(ours, seed=7)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(ours, out, force=True)
    # The failed save left no temp dir, and the previous adapter intact.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / WEIGHTS_FILE).read_bytes() == first
    with pytest.raises(OSError, match="No space left"):
        save_adapter(ours, tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_saved_weights_round_trip_exactly(tmp_path):
    ours = _adapted()
    save_adapter(ours, tmp_path / "out")
    adapter = read_adapter_dir(tmp_path / "out")
    state = ours.adapter_state_dict("a")
    assert set(adapter.tensors) == set(state)
    assert all(torch.equal(adapter.tensors[k], state[k]) for k in state)
