"""LoRA and bottleneck adapters on tiny models: identity at init, merge, scaling, targets,
freezing, several adapters, summaries. Every model here is built in this file."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from edge.errors import AdapterError
from export.adapters import (
    AdaptedModel,
    BottleneckConfig,
    BottleneckLayer,
    LoraConfig,
    LoraLayer,
    inject,
)
from export.adapters.model import ModulesToSave

# -- tiny models ----------------------------------------------------------------------------


class Mlp(nn.Module):
    """(B, 6) -> (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.norm(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


class Conv1dNet(nn.Module):
    """(B, 3, 20) -> (B, 3); conv1 pads by reflection, conv2 has stride, padding, dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 5, padding=2, padding_mode="reflect")
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2, padding=2, dilation=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (B, 8, 10)
        return self.head(h.mean(-1))


class Conv2dNet(nn.Module):
    """(B, 2, 9, 7) -> (B, 3); conv2 has a non-square kernel, stride, padding and dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.mean((-2, -1)))


class TinyTransformer(nn.Module):
    """(B, 5, 4) -> (B, 3) through one nn.TransformerEncoderLayer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.proj(x)).mean(1))


class ConvBlockNet(nn.Module):
    """(B, 8, 8) -> (B, 3); `block` is a Sequential ending in conv, norm, activation."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(x).mean(-1))


INPUTS = {
    Mlp: (4, 6), Conv1dNet: (2, 3, 20), Conv2dNet: (2, 2, 9, 7), TinyTransformer: (2, 5, 4),
    ConvBlockNet: (2, 8, 8),
}


def build(cls, dtype=torch.float32, seed=0):
    """(model in eval mode, an input for it), both deterministic."""
    torch.manual_seed(seed)
    model = cls().to(dtype).eval()
    return model, torch.randn(*INPUTS[cls], dtype=dtype)


def randomize(adapted: AdaptedModel, std: float = 0.1, seed: int = 1) -> None:
    """Give every trainable (active adapter) tensor small random non-zero values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def lora_paths(adapted: AdaptedModel) -> set[str]:
    return {p for p, m in adapted.base_model.named_modules() if isinstance(m, LoraLayer)}


def trainable(adapted: AdaptedModel) -> set[str]:
    return {n for n, p in adapted.named_parameters() if p.requires_grad}


LORA_CASES = [
    pytest.param(Mlp, ["fc1", "fc2"], id="linear"),
    pytest.param(Mlp, r"fc\d|head", id="linear-regex"),
    pytest.param(Conv1dNet, ["conv1", "conv2"], id="conv1d"),
    pytest.param(Conv2dNet, ["conv1", "conv2", "head"], id="conv2d"),
    pytest.param(TinyTransformer, ["linear1", "linear2", "proj"], id="transformer"),
]

BOTTLENECK_CASES = [
    pytest.param(Mlp, ["fc1", "fc2"], id="linear"),
    pytest.param(Conv1dNet, ["conv1"], id="conv1d"),
    pytest.param(Conv2dNet, ["conv2"], id="conv2d"),
    pytest.param(TinyTransformer, ["enc"], id="transformer-layer"),
    pytest.param(ConvBlockNet, ["block"], id="sequential-conv-block"),  # L == C: axis matters
]
CHANNELS_FIRST = {Mlp: False, Conv1dNet: True, Conv2dNet: True, TinyTransformer: False,
                  ConvBlockNet: True}

# -- a fresh adapter is the identity --------------------------------------------------------


@pytest.mark.parametrize("cls, targets", LORA_CASES)
def test_fresh_lora_is_identity(cls, targets):
    model, x = build(cls)
    with torch.no_grad():
        expected = model(x)
        adapted = inject(model, LoraConfig(r=4, target_modules=targets))
        assert lora_paths(adapted), "nothing was wrapped"
        got = adapted(x)
    # Eval mode: the transformer base may take torch's fused path, the adapted one cannot.
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls, targets", BOTTLENECK_CASES)
def test_fresh_bottleneck_is_identity(cls, targets):
    model, x = build(cls)
    with torch.no_grad():
        expected = model(x)
        adapted = inject(model, BottleneckConfig(target_modules=targets, size=4))
        assert any(isinstance(m, BottleneckLayer) for m in adapted.modules())
        got = adapted(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# -- merging --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, targets", LORA_CASES)
def test_merged_model_equals_adapted_forward(cls, targets):
    model, x = build(cls, torch.float64)
    base = copy.deepcopy(model)
    adapted = inject(model, LoraConfig(r=3, lora_alpha=6, target_modules=targets))
    randomize(adapted)
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    with torch.no_grad():
        want = adapted(x)
        assert (want - base(x)).abs().max() > 1e-3, "the adapter changes nothing"
        merged = adapted.merged_model("default")
        got = merged(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # A plain model, frozen, with no wrapper and no storage shared with the adapted one.
    assert not any(isinstance(m, (LoraLayer, ModulesToSave)) for m in merged.modules())
    assert not any(p.requires_grad for p in merged.parameters())
    assert set(merged.state_dict()) == set(base.state_dict())
    # Safe merge: the adapted model is untouched.
    after = adapted.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), want, atol=0, rtol=0)
        merged.state_dict()[next(iter(merged.state_dict()))].add_(1.0)
        torch.testing.assert_close(adapted(x), want, atol=0, rtol=0)


@pytest.mark.parametrize("base_layer, shape", [
    pytest.param(nn.Linear(6, 5), (4, 6), id="linear"),
    pytest.param(nn.Conv1d(3, 5, 3, stride=2, padding=1, dilation=2), (2, 3, 17), id="conv1d"),
    pytest.param(nn.Conv1d(3, 5, 3, padding=1, padding_mode="circular"), (2, 3, 11),
                 id="conv1d-circular"),
    pytest.param(nn.Conv2d(3, 5, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
                 (2, 3, 7, 6), id="conv2d"),
])
def test_lora_layer_merge_then_unmerge(base_layer, shape):
    torch.manual_seed(0)
    base_layer = base_layer.double()
    original = base_layer.weight.detach().clone()
    layer = LoraLayer(base_layer)
    layer.add_adapter("a", r=2, scale=1.5, dropout=0.0, init=False)
    layer.set_adapter("a")
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        adapted = layer(x)
        plain = base_layer(x)
        assert (adapted - plain).abs().max() > 1e-3
        layer.merge("a")
        assert not torch.equal(layer.base_layer.weight, original)
        torch.testing.assert_close(layer(x), adapted, atol=1e-10, rtol=0)
        torch.testing.assert_close(layer.base_layer(x), adapted, atol=1e-10, rtol=0)
        layer.unmerge()
        torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer(x), adapted, atol=1e-10, rtol=0)
    assert layer.merged == []


def test_nan_adapter_weight_makes_merge_raise():
    model, x = build(Mlp)
    adapted = inject(model, LoraConfig(r=2, target_modules=["fc1", "fc2"]))
    randomize(adapted)
    with torch.no_grad():
        adapted.base_model.fc2.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(AdapterError, match="non-finite"):
        adapted.merged_model("default")
    layer = adapted.base_model.fc2
    original = layer.base_layer.weight.detach().clone()
    with pytest.raises(AdapterError, match="'default'"):
        layer.merge("default")
    assert torch.equal(layer.base_layer.weight, original) and layer.merged == []


def test_merged_model_of_unknown_adapter_raises():
    adapted = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1"]))
    with pytest.raises(AdapterError, match="no adapter named 'other'"):
        adapted.merged_model("other")


def test_lora_inside_transformer_layer_runs_in_eval_mode():
    # TransformerEncoderLayer's fused eval fast path reads linear1.weight directly.
    model, x = build(TinyTransformer)
    adapted = inject(model, LoraConfig(r=2, target_modules=["linear1", "linear2"])).eval()
    randomize(adapted)
    with torch.no_grad():
        got = adapted(x)
        adapted.train()
        torch.testing.assert_close(got, adapted(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(got, adapted.merged_model("default").eval()(x),
                                   atol=1e-5, rtol=0)
    assert torch.backends.mha.get_fastpath_enabled()


# -- scaling --------------------------------------------------------------------------------


@pytest.mark.parametrize("r, alpha, rslora, scale", [
    (8, 16, False, 2.0),
    (4, 4, False, 1.0),
    (3, 1, False, 1 / 3),
    (16, 16, True, 4.0),
    (4, 6, True, 3.0),
])
def test_scale(r, alpha, rslora, scale):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    with torch.no_grad():
        base_out = model(x)
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["0"])
    assert config.scale_for("0") == pytest.approx(scale)
    adapted = inject(model, config)
    randomize(adapted)
    layer = adapted.base_model[0]
    assert layer.scaling["default"] == pytest.approx(scale)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, 5), (4, r)
    assert a.shape == (r, 5) and b.shape == (4, r)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), base_out + scale * x @ a.T @ b.T,
                                   atol=1e-12, rtol=0)


def test_rank_and_alpha_pattern_per_module():
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2", "head"],
                        rank_pattern={"fc2": 5, r"h\w+": 3}, alpha_pattern={"fc1": 10})
    adapted = inject(build(Mlp)[0], config)
    m = adapted.base_model
    ranks = {p: m.get_submodule(p).lora_A["default"].weight.shape[0] for p in lora_paths(adapted)}
    scales = {p: m.get_submodule(p).scaling["default"] for p in lora_paths(adapted)}
    assert ranks == {"fc1": 2, "fc2": 5, "head": 3}
    assert scales == pytest.approx({"fc1": 10 / 2, "fc2": 4 / 5, "head": 4 / 3})
    assert m.fc2.lora_B["default"].weight.shape == (16, 5)


@pytest.mark.parametrize("patterns, path, expected", [
    ({"q": 4}, "blocks.0.attn.q", 4),          # dotted suffix
    ({"q": 4}, "blocks.0.attn.kq", 2),         # not a whole name: default
    ({r"blocks\.1\..*": 6}, "blocks.1.mlp.fc1", 6),
    ({r"blocks\.1\..*": 6}, "blocks.0.mlp.fc1", 2),
    ({"fc1": 3, "mlp.fc1": 5}, "blocks.0.mlp.fc1", 3),  # first matching key wins, as PEFT
])
def test_rank_pattern_lookup(patterns, path, expected):
    assert LoraConfig(r=2, rank_pattern=patterns).rank_for(path) == expected


# -- target matching ------------------------------------------------------------------------


@pytest.mark.parametrize("targets, expected", [
    pytest.param(["proj"], {"proj"}, id="exact"),
    pytest.param(["linear1"], {"enc.linear1"}, id="dotted-suffix"),
    pytest.param(["enc.linear2", "head"], {"enc.linear2", "head"}, id="dotted-path"),
    pytest.param(("head", "proj"), {"head", "proj"}, id="tuple"),
    pytest.param(r"enc\.linear\d", {"enc.linear1", "enc.linear2"}, id="regex"),
    pytest.param(r"proj|head", {"proj", "head"}, id="regex-alternatives"),
])
def test_target_matching(targets, expected):
    adapted = inject(build(TinyTransformer)[0], LoraConfig(r=2, target_modules=targets))
    assert lora_paths(adapted) == expected


@pytest.mark.parametrize("targets, message", [
    pytest.param(["nope"], "'nope' matches no module", id="unknown-name"),
    pytest.param(["inear1"], "'inear1' matches no module", id="suffix-not-dotted"),
    pytest.param(r"linear1", "regex 'linear1' matches no module", id="regex-is-full-match"),
    pytest.param(None, "no target modules", id="none"),
])
def test_unknown_target_lists_existing_modules(targets, message):
    with pytest.raises(AdapterError, match=message) as info:
        inject(build(TinyTransformer)[0], LoraConfig(r=2, target_modules=targets))
    if targets is not None:
        for name in ("proj (Linear)", "enc.linear1 (Linear)", "enc.norm2 (LayerNorm)", "head"):
            assert name in str(info.value)


# -- PEFT's rules: all-linear, exclude_modules, modules_to_save never a target ------------


class Classifier(nn.Module):
    """(B, 6) -> (B, 3); the head is `classifier`, registered before the Linear it follows."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(16, 3)
        self.fc = nn.Linear(6, 16)

    def forward(self, x):
        return self.classifier(torch.relu(self.fc(x)))


@pytest.mark.parametrize("model, expected", [
    pytest.param(Mlp(), {"fc1", "fc2"}, id="head"),
    pytest.param(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)),
                 {"0", "2"}, id="sequential-last-linear"),
    pytest.param(Classifier(), {"fc"}, id="classifier-registered-first"),
    pytest.param(TinyTransformer(), {"proj", "enc.linear1", "enc.linear2"},
                 id="attention-out-proj-left-out"),
])
def test_all_linear_is_every_linear_but_the_head(model, expected):
    adapted = inject(model, LoraConfig(r=2, target_modules="all-linear"))
    assert lora_paths(adapted) == expected
    assert adapted.configs["default"].target_modules == sorted(expected)


@pytest.mark.parametrize("targets", [["fc1", "fc2", "head"], r"fc\d|head", "all-linear"])
def test_a_saved_module_is_never_a_target(targets):
    model, x = build(Mlp)
    adapted = inject(model, LoraConfig(r=2, target_modules=targets, modules_to_save=["head"]))
    assert lora_paths(adapted) == {"fc1", "fc2"}
    head = adapted.base_model.head
    assert isinstance(head, ModulesToSave) and isinstance(head.original_module, nn.Linear)
    assert isinstance(head.modules_to_save["default"], nn.Linear)  # wrapped once, not twice
    assert set(adapted.adapter_state_dict("default")) == {
        f"base_model.model.{p}.lora_{ab}.weight" for p in ("fc1", "fc2") for ab in "AB"
    } | {"base_model.model.head.weight", "base_model.model.head.bias"}


@pytest.mark.parametrize("exclude, expected", [
    pytest.param(["fc2"], {"fc1", "head"}, id="list"),
    pytest.param(["2"], {"0"}, id="list-exact-not-substring"),
    pytest.param(r"fc\d", {"head"}, id="regex"),
    pytest.param(r"c1", {"fc1", "fc2", "head"}, id="regex-is-full-match"),
])
def test_exclude_modules(exclude, expected):
    if expected == {"0"}:
        model, targets = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), ["0", "2"]
    else:
        model, targets = build(Mlp)[0], ["fc1", "fc2", "head"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = inject(model, LoraConfig(r=2, target_modules=targets, exclude_modules=exclude))
    assert lora_paths(adapted) == expected
    assert bool(caught) == (exclude == r"c1"), "a warning only when nothing is excluded"


def test_everything_excluded_names_each_module_and_why():
    with pytest.raises(AdapterError, match=r"selects no module to adapt: every match is "
                       r"excluded: fc1 \(exclude_modules\), head \(modules_to_save"):
        inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1", "head"],
                                         exclude_modules=["fc1"], modules_to_save=["head"]))


@pytest.mark.parametrize("first, second, message", [
    pytest.param({"target_modules": ["0"], "modules_to_save": ["2"]}, {"target_modules": ["2"]},
                 r"module 2 is saved whole by adapter\(s\) \['a'\]", id="lora-on-a-saved-module"),
    pytest.param({"target_modules": ["2"]}, {"target_modules": ["0"], "modules_to_save": ["2"]},
                 r"modules_to_save 2 carries adapter\(s\) \['a'\]", id="saving-a-lora-module"),
])
def test_no_module_is_wrapped_twice_across_adapters(first, second, message):
    adapted = AdaptedModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    adapted.add_adapter("a", LoraConfig(r=2, **first))
    before = set(adapted.adapter_state_dict("a"))
    with pytest.raises(AdapterError, match=message):
        adapted.add_adapter("b", LoraConfig(r=2, **second))
    assert set(adapted.configs) == {"a"} and set(adapted.adapter_state_dict("a")) == before


def _fitted(**options) -> AdaptedModel:
    config = LoraConfig(r=2, **{"target_modules": ["fc1"], "modules_to_save": ["head"]} | options)
    return inject(build(Mlp)[0], config)


@pytest.mark.parametrize("options, key, shape, message", [
    pytest.param({}, "nope.lora_A.weight", (2, 6),
                 "meant for module 'nope', which this model does not have", id="missing"),
    pytest.param({}, "fc.lora_A.weight", (2, 6), "does not have (similar: fc1, fc2)",
                 id="missing-similar"),
    pytest.param({}, "norm.lora_A.weight", (2, 16), "'norm', which is a LayerNorm; lora wraps "
                 "Linear, Conv1d, Conv2d", id="wrong-type"),
    pytest.param({}, "fc2.lora_A.weight", (2, 16),
                 "'fc2', which target_modules ['fc1'] does not select", id="not-selected"),
    pytest.param({}, "head.lora_A.weight", (2, 16), "'head', which is never a lora target: "
                 "modules_to_save", id="saved-whole"),
    pytest.param({"target_modules": ["fc1", "fc2"], "exclude_modules": ["fc2"]},
                 "fc2.lora_A.weight", (2, 16), "never a lora target: exclude_modules",
                 id="excluded"),
    pytest.param({}, "fc2.weight", (16, 16), "'fc2', which (Linear(in_features=16, "
                 "out_features=16, bias=True)) is not in modules_to_save ['head']",
                 id="not-saved"),
    pytest.param({}, "head.scale", (3,), "'head', which (Linear(in_features=16, "
                 "out_features=3, bias=True)) has no tensor 'scale'", id="no-such-tensor"),
    pytest.param({}, "fc1.adapter_down.weight", (2, 16), "'fc1', which gets bottleneck tensors "
                 "in this file, but adapter_config.json describes a lora adapter",
                 id="other-kind"),
])
def test_a_key_that_fits_no_module_names_it_and_why(options, key, shape, message):
    adapted = _fitted(**options)
    tensors = dict(adapted.adapter_state_dict("default"))
    tensors[f"base_model.model.{key}"] = torch.zeros(shape)
    with pytest.raises(AdapterError) as info:
        adapted.load_adapter_state_dict("default", tensors, source="f.safetensors")
    assert str(info.value).startswith(f"f.safetensors: tensor base_model.model.{key} is meant "
                                      "for module ")
    assert message in str(info.value)


def test_a_key_without_peft_prefix():
    adapted = _fitted()
    tensors = dict(adapted.adapter_state_dict("default")) | {"fc1.lora_A.weight": torch.zeros(1)}
    with pytest.raises(AdapterError, match="does not start with 'base_model.model.'"):
        adapted.load_adapter_state_dict("default", tensors)


@pytest.mark.parametrize("key, shape, message", [
    pytest.param("fc1.lora_B.weight", (15, 2), r"needs \(16, 2\) for module 'fc1' "
                 r"\(Linear\(in_features=6, out_features=16", id="adapter-tensor"),
    pytest.param("head.weight", (3, 15), r"needs \(3, 16\) for module 'head' "
                 r"\(Linear\(in_features=16, out_features=3", id="saved-module"),
])
def test_a_wrong_shape_names_the_module_and_its_sizes(key, shape, message):
    adapted = _fitted()
    tensors = dict(adapted.adapter_state_dict("default"))
    tensors[f"base_model.model.{key}"] = torch.zeros(shape)
    with pytest.raises(AdapterError, match=message):
        adapted.load_adapter_state_dict("default", tensors)


@pytest.mark.parametrize("config, bad, supported", [
    pytest.param(LoraConfig(r=2, target_modules=["norm"]), "norm (LayerNorm)",
                 "Linear, Conv1d, Conv2d", id="lora-layernorm"),
    pytest.param(LoraConfig(r=2, target_modules=["fc1", "norm"]), "norm (LayerNorm)",
                 "Linear, Conv1d, Conv2d", id="lora-one-bad-of-two"),
    pytest.param(BottleneckConfig(target_modules=["self_attn"]),
                 "enc.self_attn (MultiheadAttention)", "TransformerEncoderLayer",
                 id="bottleneck-attention"),
])
def test_unsupported_target_names_supported_types(config, bad, supported):
    cls = TinyTransformer if "self_attn" in str(config.target_modules) else Mlp
    model = build(cls)[0]
    with pytest.raises(AdapterError, match="cannot wrap") as info:
        inject(model, config)
    assert bad in str(info.value) and supported in str(info.value)
    assert not any(isinstance(m, LoraLayer) for m in model.modules()), "partly injected"


def test_attention_out_proj_is_refused():
    model = build(TinyTransformer)[0]
    with pytest.raises(AdapterError, match="enc.self_attn.out_proj.*MultiheadAttention"):
        inject(model, LoraConfig(r=2, target_modules=["out_proj", "linear1"]))
    assert not any(isinstance(m, LoraLayer) for m in model.modules()), "partly injected"


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "rank must be >= 1"),
    ({"bias": "all"}, "bias='all'"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
])
def test_lora_config_rejects(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        LoraConfig(target_modules=["fc1"], **kwargs)


def test_grouped_conv_is_refused():
    model = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2))
    with pytest.raises(AdapterError, match="groups"):
        inject(model, LoraConfig(r=2, target_modules=["0"]))


# -- freezing -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, targets", LORA_CASES)
def test_only_active_adapter_trains(cls, targets):
    model, x = build(cls)
    adapted = inject(model, LoraConfig(r=2, target_modules=targets)).train()
    expected = {f"base_model.{p}.lora_{part}.default.weight"
                for p in lora_paths(adapted) for part in "AB"}
    assert trainable(adapted) == expected
    adapted(x).square().sum().backward()
    for name, p in adapted.named_parameters():
        if name in expected:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"base tensor {name} got a gradient"
    # B starts at zero, so only B gets a non-zero gradient on the first step.
    assert any(p.grad.abs().sum() > 0 for n, p in adapted.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("name", ["fc1", "0", "head", "base_layer"])
def test_adapter_named_like_a_module_keeps_base_frozen(name):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model.fc1, model.head = nn.Linear(2, 2), nn.Linear(2, 2)  # unused names to collide with
    adapted = inject(model, LoraConfig(r=2, target_modules=["0"]), name=name)
    assert trainable(adapted) == {f"base_model.0.lora_A.{name}.weight",
                                  f"base_model.0.lora_B.{name}.weight"}


def test_modules_to_save_copy_trains_and_original_stays():
    model, x = build(Mlp)
    adapted = inject(model, LoraConfig(r=2, target_modules=["fc1"], modules_to_save=["head"]))
    assert trainable(adapted) == {
        "base_model.fc1.lora_A.default.weight", "base_model.fc1.lora_B.default.weight",
        "base_model.head.modules_to_save.default.weight",
        "base_model.head.modules_to_save.default.bias",
    }
    adapted(x).sum().backward()
    assert adapted.base_model.head.original_module.weight.grad is None
    assert adapted.base_model.head.modules_to_save["default"].weight.grad is not None


# -- several adapters -----------------------------------------------------------------------


def _two_adapters(kind_b: str = "lora"):
    model, x = build(Mlp, torch.float64)
    with torch.no_grad():
        base_out = model(x)
    adapted = inject(model, LoraConfig(r=2, target_modules=["fc1"], modules_to_save=["head"]),
                     name="a")
    randomize(adapted, seed=1)
    config_b = (LoraConfig(r=4, target_modules=["fc1", "fc2"]) if kind_b == "lora"
                else BottleneckConfig(target_modules=["fc2"], size=3))
    adapted.add_adapter("b", config_b)
    randomize(adapted, seed=2)
    return adapted, x, base_out


def test_set_adapter_switches_outputs():
    adapted, x, base_out = _two_adapters()
    assert adapted.active_adapter == "b"
    with torch.no_grad():
        out_b = adapted(x)
        adapted.set_adapter("a")
        assert adapted.active_adapter == "a"
        out_a = adapted(x)
        assert (out_a - out_b).abs().max() > 1e-3
        assert (out_a - base_out).abs().max() > 1e-3 and (out_b - base_out).abs().max() > 1e-3
        torch.testing.assert_close(out_a, adapted.merged_model("a")(x), atol=1e-10, rtol=0)
        torch.testing.assert_close(out_b, adapted.merged_model("b")(x), atol=1e-10, rtol=0)
    assert all(".a." in n for n in trainable(adapted)) and len(trainable(adapted)) == 4
    adapted.set_adapter("b")
    assert all(".b." in n for n in trainable(adapted)) and len(trainable(adapted)) == 4
    with pytest.raises(AdapterError, match="no adapter named 'c'"):
        adapted.set_adapter("c")
    with pytest.raises(AdapterError, match="exists already"):
        adapted.add_adapter("a", LoraConfig(r=2, target_modules=["fc2"]))


def test_disable_adapter_gives_the_base():
    adapted, x, base_out = _two_adapters()
    adapted.set_adapter("a")
    with torch.no_grad():
        out_a = adapted(x)
        with adapted.disable_adapter():
            assert adapted.active_adapter is None
            assert trainable(adapted) == set()
            torch.testing.assert_close(adapted(x), base_out, atol=0, rtol=0)
        assert adapted.active_adapter == "a"
        torch.testing.assert_close(adapted(x), out_a, atol=0, rtol=0)
    assert len(trainable(adapted)) == 4


@pytest.mark.parametrize("kind_b", ["lora", "bottleneck"])
def test_delete_adapter(kind_b):
    adapted, x, base_out = _two_adapters(kind_b)
    adapted.set_adapter("a")
    with torch.no_grad():
        out_a = adapted(x)
    adapted.delete_adapter("b")
    assert set(adapted.configs) == {"a"} and adapted.active_adapter == "a"
    assert not [k for k in adapted.state_dict() if ".b." in k]
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), out_a, atol=0, rtol=0)
    adapted.delete_adapter("a")
    assert adapted.active_adapter is None and adapted.configs == {}
    assert not [k for k in adapted.state_dict() if ".a." in k]
    assert trainable(adapted) == set()
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), base_out, atol=0, rtol=0)
    with pytest.raises(AdapterError, match="no adapter named 'a'"):
        adapted.delete_adapter("a")
    # The name is free again.
    adapted.add_adapter("a", LoraConfig(r=2, target_modules=["fc1"]))
    assert adapted.active_adapter == "a"


def test_one_adapter_kind_per_module():
    adapted = inject(build(Mlp)[0], LoraConfig(r=2, target_modules=["fc1"]))
    with pytest.raises(AdapterError, match="fc1 already carries a LoraLayer"):
        adapted.add_adapter("b", BottleneckConfig(target_modules=["fc1"], size=2))


# -- bottleneck -----------------------------------------------------------------------------


def test_bottleneck_cannot_be_merged():
    model, x = build(Mlp)
    adapted = inject(model, BottleneckConfig(target_modules=["fc1"], size=4), name="bn")
    with pytest.raises(AdapterError, match="'bn' is a bottleneck adapter.*cannot be folded"):
        adapted.merged_model("bn")


@pytest.mark.parametrize("cls, targets", BOTTLENECK_CASES)
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_bottleneck_adds_residual_on_feature_axis(cls, targets, activation):
    model, x = build(cls, torch.float64)
    adapted = inject(model, BottleneckConfig(target_modules=targets, size=3,
                                             activation=activation))
    randomize(adapted)
    act = {"gelu": nn.functional.gelu, "relu": torch.relu}[activation]
    seen = {}
    layers = [m for m in adapted.modules() if isinstance(m, BottleneckLayer)]
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.update({mod: out}))
             for layer in layers]
    with torch.no_grad():
        adapted(x)
        for layer in layers:
            h = layer.base_layer(*_captured_input(layer, adapted, x))
            down, up = layer.adapter_down["default"], layer.adapter_up["default"]
            # Features are the last axis, or axis 1 after a convolution.
            channels_first = CHANNELS_FIRST[cls]
            z = h.movedim(1, -1) if channels_first else h
            z = up(act(down(z)))
            want = h + (z.movedim(-1, 1) if channels_first else z)
            torch.testing.assert_close(seen[layer], want, atol=1e-12, rtol=0)
            assert (seen[layer] - h).abs().max() > 1e-3
    for hook in hooks:
        hook.remove()


def _captured_input(layer: nn.Module, adapted: nn.Module, x: torch.Tensor) -> tuple:
    seen = []
    hook = layer.register_forward_pre_hook(lambda mod, args: seen.append(args))
    adapted(x)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("cls, path, features, channels_first", [
    (Mlp, "fc1", 16, False),
    (Conv1dNet, "conv2", 8, True),
    (Conv2dNet, "conv1", 6, True),
    (TinyTransformer, "enc", 16, False),
    (ConvBlockNet, "block", 8, True),
])
def test_bottleneck_feature_axis(cls, path, features, channels_first):
    adapted = inject(build(cls)[0], BottleneckConfig(target_modules=[path], size=2))
    layer = adapted.base_model.get_submodule(path)
    assert (layer.features, layer.channels_first) == (features, channels_first)
    assert layer.adapter_down["default"].weight.shape == (2, features)


@pytest.mark.parametrize("features, size, reduction, expected", [
    (64, None, 16, 4),
    (64, None, 4, 16),
    (64, 5, 16, 5),
    (8, None, 16, 1),
    (16, None, 1, 16),
])
def test_bottleneck_size_vs_reduction_factor(features, size, reduction, expected):
    model = nn.Sequential(nn.Linear(3, features))
    config = BottleneckConfig(target_modules=["0"], size=size, reduction_factor=reduction)
    assert config.size_for(features) == expected
    layer = inject(model, config).base_model[0]
    assert layer.adapter_down["default"].weight.shape == (expected, features)
    assert layer.adapter_up["default"].weight.shape == (features, expected)


def test_bottleneck_on_parameterless_layernorm():
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8, elementwise_affine=False))
    x = torch.randn(2, 3)
    with torch.no_grad():
        expected = model(x)
        adapted = inject(model, BottleneckConfig(target_modules=["1"], size=2))
        torch.testing.assert_close(adapted(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"activation": "swish"}, "activation 'swish'"),
    ({"placement": "before"}, "placement 'before'"),
    ({"size": 0}, "size must be >= 1"),
    ({"reduction_factor": 0}, "reduction_factor must be >= 1"),
])
def test_bottleneck_config_rejects(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        BottleneckConfig(target_modules=["fc1"], **kwargs)


# -- summary --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, itemsize", [(torch.float32, 4), (torch.float64, 8)])
def test_summary_lora_with_saved_head(dtype, itemsize):
    adapted = inject(build(Mlp, dtype)[0], LoraConfig(r=2, target_modules=["fc1", "fc2"],
                                                      modules_to_save=["head"]))
    # LoRA r=2: fc1 2*(6+16), fc2 2*(16+16); head copy 16*3+3.
    trainable_params = 2 * (6 + 16) + 2 * (16 + 16) + (16 * 3 + 3)
    # fc1 6*16+16, fc2 16*16+16, norm 2*16, head 16*3+3.
    base_params = (6 * 16 + 16) + (16 * 16 + 16) + 2 * 16 + (16 * 3 + 3)
    s = adapted.summary()
    assert (s.name, s.kind) == ("default", "lora")
    assert s.trainable_params == trainable_params == 159
    assert s.base_params == base_params == 467
    assert s.trainable_params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert s.trainable_pct == pytest.approx(100 * 159 / 467)
    assert s.adapter_bytes == 159 * itemsize and s.base_bytes == 467 * itemsize
    assert f"{100 * 159 / 467:.2f}%" in str(s) and "159 trainable" in str(s)


def test_summary_bottleneck_and_named():
    adapted = inject(build(Mlp)[0], BottleneckConfig(target_modules=["fc2"], size=4), name="x")
    adapted.add_adapter("y", LoraConfig(r=1, target_modules=["fc1"]))
    s = adapted.summary("x")
    assert (s.name, s.kind) == ("x", "bottleneck")
    assert s.trainable_params == (16 * 4 + 4) + (4 * 16 + 16)
    assert s.adapter_bytes == 4 * s.trainable_params
    assert adapted.summary().trainable_params == 1 * (6 + 16)
    assert math.isclose(adapted.summary().trainable_pct, 100 * 22 / 467)
