"""The GPU path against the CPU: CUDA and TensorRT sessions with adapters bound as device
OrtValues (IOBinding), for the merged model, every adapter kind, a bank, a fixed batch and an
fp16 bundle; and TensorRT's engine cache across swaps and restarts.

    pytest -m gpu tests/test_gpu.py                        # on a CUDA machine
    EDGE_GPU_TESTS_ON_CPU=1 pytest -m gpu tests/test_gpu.py  # rehearsal: the CPU provider
                                                            # stands in (bind on), no TensorRT

The provider under test is a parameter, so the same helpers run on the CPU device: one quick
test without the gpu mark (the last in this file) proves them in every default run. The gpu
tests sit in one class whose `pytestmark` is gpu (a module-level one would mark that smoke
test too) and are skipped, with the reason, unless a CUDA session really starts here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from adapter_factory import reference_adapters
from onnx import TensorProto, helper

from edge.bank import AdapterBank
from edge.bundle import BASE_FILE, INDEX_INPUT, Manifest, read_manifest
from edge.config import load_config
from edge.engine import DeviceSlots, Engine, read_adapter_arrays
from edge.engine_config import engine_cache_dir, open_engine, provider_requests
from edge.errors import EdgeError
from edge.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderRequest,
    library_problem,
    tensorrt_cache_options,
    tensorrt_profiles,
    why_missing,
)
from export.onnx.attach import export_attach
from export.onnx.merge import export_merged

KINDS = ("lora_head", "lora_qv", "bottleneck")  # LoRA on Linear + conv + a head; q,v; bottleneck
SHAPE = (2, 64)  # (C, L) of the reference model in tests/adapter_factory.py
MAX_BATCH = 16  # batching.max_batch of the TensorRT config: its profile covers 1..16 rows
ATOL = {"fp32": 1e-3, "fp16": 1e-2}  # GPU fp32 kernels may use TF32; fp16 rounds ~1e-3 relative
ON_CPU = os.environ.get("EDGE_GPU_TESTS_ON_CPU") == "1"


def probe_model(directory: Path) -> Path:
    """A one-node model (Relu on x (N, 2, 64)): enough to see which provider a session gets."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *SHAPE])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = directory / "probe.onnx"
    onnx.save(model, str(path))
    return path


def cuda_problem() -> str | None:
    """None when a CUDA session really starts here; else why not, in one line."""
    if CUDA not in ort.get_available_providers():
        return why_missing(CUDA)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            engine = Engine(probe_model(Path(tmp)), cpu_fallback=True,
                            providers=[ProviderRequest(CUDA), ProviderRequest(CPU, index=1)])
        except EdgeError as exc:
            return str(exc).splitlines()[0]
    if engine.provider != CUDA:
        return engine.warnings[0] if engine.warnings else why_missing(CUDA)
    return None


DEVICE_PROBLEM = None if ON_CPU else cuda_problem()
PROVIDERS = [CPU] if ON_CPU else [CUDA, TENSORRT]


# -- helpers, shared by the gpu tests and the CPU smoke test -------------------------------

def write_config(directory: Path, providers: list[str], required: str) -> Path:
    """A firmware config naming `providers` (most preferred first), state under
    `directory`/state (so TensorRT's cache is <state>/trt-cache)."""
    entries = ", ".join(f'{{ name = "{p}"{", required = true" if p == required else ""} }}'
                        for p in providers)
    path = directory / f"{required}.toml"
    path.write_text(f'[device]\nid = "gpu-test"\nproviders = [{entries}]\n'
                    f'state_dir = "{directory / "state"}"\n\n[batching]\nmax_batch = {MAX_BATCH}\n')
    return path


def requests_for(provider: str, directory: Path,
                 manifest: Manifest | None) -> list[ProviderRequest]:
    """The provider under test, required (a silent fallback fails the test), then the ones
    it falls back to for nodes it cannot take. TensorRT's come from the config path the
    service uses (cache and batch profile); the merged model, having no manifest, gets the
    same profile for its one input x by hand."""
    if provider == CPU:
        return [ProviderRequest(CPU, required=True)]
    if provider == CUDA:
        return [ProviderRequest(CUDA, required=True), ProviderRequest(CPU, index=1)]
    cfg = load_config(write_config(directory, [TENSORRT, CUDA, CPU], TENSORRT))
    if manifest is not None:
        return provider_requests(cfg, manifest)
    profiles = tensorrt_profiles({"x": list(SHAPE)}, cfg.batching.max_batch)
    options = tensorrt_cache_options({}, engine_cache_dir(cfg), profiles)
    return [ProviderRequest(TENSORRT, options, required=True), ProviderRequest(CUDA, index=1),
            ProviderRequest(CPU, index=2)]


def device_engine(model: Path, requests: list[ProviderRequest]) -> Engine:
    """The engine under test: bound (slots as device OrtValues), never quietly on the CPU."""
    engine = Engine(model, providers=requests, cpu_fallback=False, bind="on")
    assert engine.provider == requests[0].name, engine.warnings
    assert engine.bound and engine.device_type == expected_device(requests[0].name)
    return engine


def expected_device(provider: str) -> str:
    """What `OrtValue.device_name()` says for the provider's tensors ("cpu", "cuda")."""
    return "cpu" if provider == CPU else "cuda"


def slot_devices(slots: DeviceSlots) -> set[str]:
    return {value.device_name() for value in slots.values.values()}


def cpu_reference(model: Path, x: np.ndarray, arrays: dict | None = None,
                  feeds: dict | None = None) -> np.ndarray:
    """The CPU host path: the slot arrays (or bank tensors) fed as plain inputs."""
    return Engine(model, bind="off").run(x, arrays, feeds=feeds)


def bound_run(engine: Engine, x: np.ndarray, arrays: dict | None = None,
              feeds: dict | None = None, bank: bool = False) -> np.ndarray:
    """Upload `arrays` once (a bank's through prepare_bank), check where they live, run."""
    slots = None
    if arrays is not None:
        slots = engine.prepare_bank(arrays) if bank else engine.upload(arrays)
        assert isinstance(slots, DeviceSlots) and slot_devices(slots) == {engine.device_type}
    return engine.run(x, slots, feeds=feeds)


def max_diff(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and np.isfinite(got).all()
    return float(np.max(np.abs(got - want)))


def cache_listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory`: relative path -> (size, mtime in ns)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def adapter_file(bundle: Path, name: str) -> Path:
    return bundle / read_manifest(bundle).adapter(name).file


def full_bank(bundle: Path) -> dict[str, np.ndarray]:
    """Bank tensors (K, ...) with every adapter of the bundle in its own entry; the rest
    hold the base (slot defaults)."""
    manifest = read_manifest(bundle)
    bank = AdapterBank.for_bundle(bundle, manifest)
    for k, entry in enumerate(manifest.adapters):
        bank.load(k, read_adapter_arrays(bundle / entry.file))
    return bank.tensors


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def _target(directory: Path, **export: str | int) -> Path:
    path = directory / ("target-" + "-".join(f"{k}{v}" for k, v in export.items()) + ".toml")
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in export.items()]
    path.write_text('[device]\nid = "t"\n\n[export]\n' + "\n".join(lines) + "\n")
    return path


# -- the gpu tests -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One tiny base and its adapters as: the merged model (lora_head folded in), and
    bundles: dynamic, fixed batch 4, a bank of 4, fp16."""
    root = tmp_path_factory.mktemp("gpu-models")
    ref = reference_adapters(root)
    adapters = [ref[k] for k in KINDS]
    out = {"merged": root / "merged.onnx", "root": root}
    export_merged(base="reference", weights=ref["weights"], adapter=ref["lora_head"],
                  out=out["merged"])
    for name, kwargs in (("dynamic", {}), ("static4", {"target": _target(root, batch=4)}),
                         ("bank", {"bank": 4}),
                         ("fp16", {"target": _target(root, precision="fp16")})):
        out[name] = root / name
        export_attach(base="reference", weights=ref["weights"], adapters=adapters,
                      out=out[name], names=list(KINDS), **kwargs)
    return out


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    name = request.param
    if name == TENSORRT:
        skip_without_tensorrt()
    return name


def skip_without_tensorrt() -> None:
    if ON_CPU:
        pytest.skip("TensorRT needs a GPU (EDGE_GPU_TESTS_ON_CPU=1)")
    if TENSORRT not in ort.get_available_providers():
        pytest.skip(f"TensorRT: {why_missing(TENSORRT)}")
    problem = library_problem(TENSORRT)
    if problem:
        pytest.skip(f"TensorRT libraries not present: {problem}")


class TestOnDevice:
    pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
        DEVICE_PROBLEM is not None, reason=f"no CUDA session here: {DEVICE_PROBLEM}")]

    def test_merged_model(self, provider, models):
        engine = device_engine(models["merged"], requests_for(provider, models["root"], None))
        x = _x(8)
        assert max_diff(bound_run(engine, x), cpu_reference(models["merged"], x)) <= ATOL["fp32"]

    @pytest.mark.parametrize("kind", [None, *KINDS])
    def test_attached_bundle(self, provider, models, kind):
        """Each adapter kind, loaded the service's way (load_adapter: uploaded once)."""
        bundle = models["dynamic"]
        engine = device_engine(bundle / BASE_FILE,
                               requests_for(provider, models["root"], read_manifest(bundle)))
        x = _x(8)
        slots = engine.load_adapter(adapter_file(bundle, kind)) if kind else None
        if slots is not None:
            assert isinstance(slots, DeviceSlots)
            assert slot_devices(slots) == {expected_device(provider)}
        arrays = read_adapter_arrays(adapter_file(bundle, kind)) if kind else None
        want = cpu_reference(bundle / BASE_FILE, x, arrays)
        assert max_diff(engine.run(x, slots), want) <= ATOL["fp32"]

    def test_swaps_rebind_on_one_engine(self, provider, models):
        """Alternating held adapters on one engine: each run answers with its own adapter."""
        bundle = models["dynamic"]
        engine = device_engine(bundle / BASE_FILE,
                               requests_for(provider, models["root"], read_manifest(bundle)))
        x = _x(5)
        held = {k: engine.load_adapter(adapter_file(bundle, k)) for k in KINDS}
        want = {k: cpu_reference(bundle / BASE_FILE, x, read_adapter_arrays(
            adapter_file(bundle, k))) for k in KINDS}
        for name in [*KINDS, *reversed(KINDS), KINDS[0]]:
            assert max_diff(engine.run(x, held[name]), want[name]) <= ATOL["fp32"]

    def test_bank_with_mixed_rows(self, provider, models):
        bundle = models["bank"]
        engine = device_engine(bundle / BASE_FILE,
                               requests_for(provider, models["root"], read_manifest(bundle)))
        tensors = full_bank(bundle)
        x, feeds = _x(10), {INDEX_INPUT: np.arange(10) % 4}  # rows of 3 adapters + the base
        got = bound_run(engine, x, tensors, feeds, bank=True)
        assert max_diff(got, cpu_reference(bundle / BASE_FILE, x, tensors, feeds)) \
            <= ATOL["fp32"]

    @pytest.mark.parametrize("rows", [1, 3, 9])
    def test_fixed_batch(self, provider, models, rows):
        """A batch-4 bundle: the engine pads and splits on the device as on the CPU."""
        bundle = models["static4"]
        engine = device_engine(bundle / BASE_FILE,
                               requests_for(provider, models["root"], read_manifest(bundle)))
        assert engine.static_batch == 4
        arrays = read_adapter_arrays(adapter_file(bundle, "lora_head"))
        x = _x(rows)
        got = bound_run(engine, x, arrays)
        assert got.shape == (rows, 7)
        assert max_diff(got, cpu_reference(bundle / BASE_FILE, x, arrays)) <= ATOL["fp32"]

    @pytest.mark.parametrize("kind", [None, *KINDS])
    def test_fp16_bundle(self, provider, models, kind):
        """fp16 weights on the device within 1e-2 of the fp32 bundle on the CPU."""
        half, full = models["fp16"], models["dynamic"]
        assert read_manifest(half).base.precision == "fp16"
        engine = device_engine(half / BASE_FILE,
                               requests_for(provider, models["root"], read_manifest(half)))
        x = _x(8)
        arrays = read_adapter_arrays(adapter_file(half, kind)) if kind else None
        want = cpu_reference(full / BASE_FILE, x, read_adapter_arrays(
            adapter_file(full, kind)) if kind else None)
        assert max_diff(bound_run(engine, x, arrays), want) <= ATOL["fp16"]

    def test_tensorrt_engine_cache(self, models, tmp_path):
        """Engines are built once, at warm-up, into <state_dir>/trt-cache; swaps between
        bound adapters and batches within the profile add or change no file; a restart
        on the same cache builds nothing."""
        skip_without_tensorrt()
        bundle = models["dynamic"]
        manifest = read_manifest(bundle)
        cfg = load_config(write_config(tmp_path, [TENSORRT, CUDA, CPU], TENSORRT))
        cache = engine_cache_dir(cfg)
        assert cache == tmp_path / "state" / "trt-cache"
        arrays = {k: read_adapter_arrays(adapter_file(bundle, k)) for k in KINDS[:2]}
        x = {n: _x(n, seed=n) for n in (1, 4, MAX_BATCH)}
        want = {(k, n): cpu_reference(bundle / BASE_FILE, x[n], arrays[k])
                for k in arrays for n in x}
        engine = open_engine(cfg, bundle / BASE_FILE, manifest)
        assert engine.provider == TENSORRT and engine.bound
        held = {k: engine.upload(v) for k, v in arrays.items()}
        assert max_diff(engine.run(x[4], held[KINDS[0]]), want[KINDS[0], 4]) <= ATOL["fp32"]
        built = cache_listing(cache)
        assert any(name.endswith(".engine") for name in built), built
        self._swaps(engine, held, x, want)
        assert cache_listing(cache) == built
        del engine, held
        again = open_engine(cfg, bundle / BASE_FILE, manifest)
        self._swaps(again, {k: again.upload(v) for k, v in arrays.items()}, x, want)
        assert cache_listing(cache) == built

    @staticmethod
    def _swaps(engine: Engine, held: dict, x: dict, want: dict) -> None:
        for name in [*held, *reversed(held.keys())]:
            for n in x:
                assert max_diff(engine.run(x[n], held[name]), want[name, n]) <= ATOL["fp32"]


# -- without a GPU: the helpers themselves -------------------------------------------------

def test_parity_helpers_on_the_cpu_device(tmp_path):
    """The helpers above, with the CPU provider and bind="on" (OrtValues on "cpu")."""
    ref = reference_adapters(tmp_path)
    bundle = tmp_path / "bundle"
    export_attach(base="reference", weights=ref["weights"], adapters=[ref["lora_qv"]],
                  out=bundle, names=["lora_qv"])
    engine = device_engine(bundle / BASE_FILE, requests_for(CPU, tmp_path, read_manifest(bundle)))
    arrays = read_adapter_arrays(adapter_file(bundle, "lora_qv"))
    x = _x(3)
    got = bound_run(engine, x, arrays)
    assert max_diff(got, cpu_reference(bundle / BASE_FILE, x, arrays)) <= 1e-5
    assert max_diff(got, cpu_reference(bundle / BASE_FILE, x)) > 1e-3  # the adapter counts
    assert cache_listing(bundle)[BASE_FILE][0] == (bundle / BASE_FILE).stat().st_size
    assert DEVICE_PROBLEM is None or DEVICE_PROBLEM.strip()
