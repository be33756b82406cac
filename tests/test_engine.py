"""The engine on its own: fixed-batch bundles (pad and split), adapters bound as device
OrtValues through IOBinding (exercised here on the CPU device) against the host path for
every adapter kind, and the rules for providers that are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.bank import AdapterBank
from edge.bundle import BASE_FILE, INDEX_INPUT, read_manifest
from edge.engine import DeviceSlots, Engine, load_adapter_file, read_adapter_arrays
from edge.errors import IncompatibleBundle, ProviderError
from edge.providers import CPU, CUDA, TENSORRT, ProviderRequest, ort_message, tensorrt_profiles

KINDS = ("lora_head", "lora_qv", "bottleneck")  # LoRA on Linear + conv + a head; bottleneck


@pytest.fixture(scope="module")
def bundles(engine_bundles) -> dict[str, Path]:
    """The same base and KINDS adapters as a dynamic bundle, a batch-4 bundle, and a bank
    of 4 (tests/adapter_factory.py engine_bundles)."""
    return engine_bundles


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2, 64)).astype(np.float32)


def _adapter_file(bundle: Path, name: str) -> Path:
    return bundle / read_manifest(bundle).adapter(name).file


# -- fixed batch ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("adapter", [None, "lora_head", "bottleneck"])
def test_static_batch_pads_and_splits_row_for_row(bundles, rows, adapter):
    """A batch-4 bundle answers any number of rows, equal to the dynamic bundle's run."""
    static = Engine(bundles["static4"] / BASE_FILE)
    dynamic = Engine(bundles["dynamic"] / BASE_FILE)
    assert static.static_batch == 4 and dynamic.static_batch is None
    x = _x(rows)
    lora = {e: load_adapter_file(_adapter_file(bundles[b], adapter)) if adapter else None
            for e, b in (("s", "static4"), ("d", "dynamic"))}
    got, want = static.run(x, lora["s"]), dynamic.run(x, lora["d"])
    assert got.shape == want.shape == (rows, 7)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Each row is computed on its own: padding rows never leak into real ones.
    np.testing.assert_allclose(static.run(x[-1:], lora["s"]), got[-1:], atol=1e-5)


def test_unpadded_static_bundle_refuses_a_partial_batch(bundles):
    """What the engine's padding saves a fixed-batch bundle from: onnxruntime refuses."""
    static = Engine(bundles["static4"] / BASE_FILE)
    with pytest.raises(Exception, match="(?i)dimension|shape|invalid"):
        static.session.run(None, {static.input.name: _x(1)})


@pytest.mark.parametrize("bound", [False, True])
def test_static_bank_pads_the_index_too(bundles, bound):
    manifest = read_manifest(bundles["bank_static4"])
    engine = Engine(bundles["bank_static4"] / BASE_FILE, bind="on" if bound else "off")
    ref_engine = Engine(bundles["bank"] / BASE_FILE)
    bank = AdapterBank.for_bundle(bundles["bank_static4"], manifest)
    for k, entry in enumerate(manifest.adapters):
        bank.load(k, read_adapter_arrays(bundles["bank_static4"] / entry.file))
    x, index = _x(7), np.arange(7) % 4
    got = engine.run(x, engine.prepare_bank(bank.tensors), feeds={INDEX_INPUT: index})
    want = ref_engine.run(x, bank.tensors, feeds={INDEX_INPUT: index})
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- adapters bound through IOBinding ------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_bound_adapters_equal_the_host_path(bundles, kind):
    """The device path (OrtValues + IOBinding; on the CPU device here) computes what
    onnxruntime's LoraAdapter path computes, for every adapter kind."""
    path = _adapter_file(bundles["dynamic"], kind)
    host = Engine(bundles["dynamic"] / BASE_FILE, bind="off")
    bound = Engine(bundles["dynamic"] / BASE_FILE, bind="on")
    assert bound.bound and not host.bound
    slots = bound.load_adapter(path)
    assert isinstance(slots, DeviceSlots) and set(slots.values) <= bound.slot_names
    x = _x(6)
    want = host.run(x, host.load_adapter(path))
    np.testing.assert_allclose(bound.run(x, slots), want, atol=1e-6)
    np.testing.assert_allclose(bound.run(x), host.run(x), atol=1e-6)  # base: defaults
    assert np.abs(want - host.run(x)).max() > 1e-3  # the adapter really changes the output


def test_swapping_bound_adapters_switches_outputs(bundles):
    """A swap is a rebind: alternating adapters on one bound engine never mixes them."""
    engine = Engine(bundles["dynamic"] / BASE_FILE, bind="on")
    host = Engine(bundles["dynamic"] / BASE_FILE, bind="off")
    x = _x(3)
    loaded = {k: engine.load_adapter(_adapter_file(bundles["dynamic"], k)) for k in KINDS}
    want = {k: host.run(x, load_adapter_file(_adapter_file(bundles["dynamic"], k)))
            for k in KINDS}
    for name in [*KINDS, *reversed(KINDS), KINDS[0]]:
        np.testing.assert_allclose(engine.run(x, loaded[name]), want[name], atol=1e-6)


def test_bound_bank_equals_host_bank(bundles):
    manifest = read_manifest(bundles["bank"])
    bank = AdapterBank.for_bundle(bundles["bank"], manifest)
    for k, entry in enumerate(manifest.adapters):
        bank.load(k, read_adapter_arrays(bundles["bank"] / entry.file))
    host = Engine(bundles["bank"] / BASE_FILE, bind="off")
    bound = Engine(bundles["bank"] / BASE_FILE, bind="on")
    x, index = _x(8), np.arange(8) % 4
    device_bank = bound.prepare_bank(bank.tensors)
    assert isinstance(device_bank, DeviceSlots)
    np.testing.assert_allclose(bound.run(x, device_bank, feeds={INDEX_INPUT: index}),
                               host.run(x, bank.tensors, feeds={INDEX_INPUT: index}), atol=1e-6)


# -- providers -----------------------------------------------------------------------------

@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(),
                    reason="this onnxruntime build has CUDA")
@pytest.mark.parametrize("requests, fallback, error", [
    ([ProviderRequest(CUDA, index=0), ProviderRequest(CPU, index=1)], False,
     r"device.providers\[0\]: CUDAExecutionProvider: this onnxruntime build does not have it.*"
     r"refusing to run on the CPU instead \(set device.cpu_fallback = true"),
    ([ProviderRequest(TENSORRT, required=True, index=0), ProviderRequest(CUDA, index=1)], True,
     r"device.providers\[0\]: TensorrtExecutionProvider is required \(required = true\) but "
     r"this onnxruntime build does not have it"),
])
def test_missing_providers_stop_start_up(bundles, requests, fallback, error):
    with pytest.raises(ProviderError, match=error):
        Engine(bundles["dynamic"] / BASE_FILE, providers=requests, cpu_fallback=fallback)


def test_cpu_fallback_when_allowed_says_why(bundles):
    engine = Engine(bundles["dynamic"] / BASE_FILE, cpu_fallback=True,
                    providers=[ProviderRequest(CUDA, {"device_id": "0"}), ProviderRequest(CPU)])
    assert engine.provider == CPU and not engine.bound
    if CUDA not in __import__("onnxruntime").get_available_providers():
        assert len(engine.warnings) == 1 and "CUDAExecutionProvider is not used" in \
            engine.warnings[0] and "pip install 'edge-adapters[gpu]'" in engine.warnings[0]


def test_a_broken_model_file_blames_the_bundle_in_one_clean_line(tmp_path):
    bad = tmp_path / "base.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf model")
    with pytest.raises(IncompatibleBundle) as info:
        Engine(bad)
    message = str(info.value)
    assert "onnxruntime cannot load it" in message and "\n" not in message
    assert "onnxruntime_src" not in message and ".cc:" not in message


def test_ort_message_drops_source_paths_and_signatures():
    raw = ("[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed:/onnxruntime_src/"
           "onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, "
           "const onnxruntime::PathString&, const onnxruntime::logging::Logger&) Unsupported "
           "model IR version: 14, max supported IR version: 13\n")
    assert ort_message(raw) == ("Load model from /tmp/m.onnx failed: Unsupported model IR "
                                "version: 14, max supported IR version: 13")


def test_tensorrt_profiles_cover_batches_up_to_max_batch():
    profiles = tensorrt_profiles({"x": [6, 100], INDEX_INPUT: []}, 16)
    assert profiles == {"trt_profile_min_shapes": "x:1x6x100,adapter_index:1",
                        "trt_profile_opt_shapes": "x:16x6x100,adapter_index:16",
                        "trt_profile_max_shapes": "x:16x6x100,adapter_index:16"}
    assert tensorrt_profiles({}, 8) == {}


def test_placement_names_the_provider_of_every_node_run(bundles):
    """The profile of the warm-up tells which provider ran which node (on a GPU: what fell
    off TensorRT); profiling stops after it, and the profile file is gone."""
    engine = Engine(bundles["dynamic"] / BASE_FILE, placement=True)
    folder = engine._profile
    engine.run(_x(2))
    placement = engine.placement()
    assert list(placement) == [CPU] and placement[CPU]["MatMul"] >= 4
    assert not folder.exists() and engine.placement() == {}
    engine.run(_x(2))  # still runs without profiling
