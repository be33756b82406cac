"""What benchmarks/gpu.py measures on: the devices under test (CUDA, TensorRT, or the CPU
standing in for them in a dry run) and whether CUDA really starts here, the demo-sized models
(merged, attached and a --bank 4 bundle in fp32 and fp16) with their parity cases, and the
memory readings (device memory through libcudart, or the process RSS in a dry run).

Imported as `benchmarks.gpu_models` by benchmarks/gpu.py, which puts the repo root and tests/
(for tests/adapter_factory.py) on sys.path first.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from adapter_factory import make_adapter

from edge.bank import AdapterBank
from edge.bundle import BASE_FILE, INDEX_INPUT, read_manifest
from edge.engine import Engine, read_adapter_arrays
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
from export.adapters import BottleneckConfig, LoraConfig
from export.demo.run import BASE_CONFIG
from export.models import SensorTransformer, save_base
from export.onnx.attach import export_attach
from export.onnx.merge import export_merged
from export.pilot.measure_runtime import rss

SHAPE = (1, 256)  # (C, L) of the demo's model
MAX_BATCH = 64  # batching.max_batch of firmware_configs/x86-cuda.toml; TensorRT's profile
RANK = 4  # the demo's LoRA rank (benchmarks/export.py)
KINDS = {  # the adapter kinds of tests/adapter_factory.py, on the demo's base
    "lora_head": (LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "conv1", "fc1"],
                             modules_to_save=["head"]), 7),
    "lora_qv": (LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"]), None),
    "bottleneck": (BottleneckConfig(target_modules=["fc2"], size=4), None),
}


# -- devices -------------------------------------------------------------------------------

@dataclass
class Device:
    """One provider under test; `cache`: TensorRT's engine cache, shared by all sessions of
    a model so that only the first one builds."""

    label: str
    provider: str
    cache: Path | None = None
    options: dict[str, str] = field(default_factory=dict)

    def requests(self, model: Path, cache: Path | None = None) -> list[ProviderRequest]:
        if self.provider == CPU:
            return [ProviderRequest(CPU, required=True)]
        if self.provider == CUDA:
            return [ProviderRequest(CUDA, dict(self.options), required=True),
                    ProviderRequest(CPU, index=1)]
        options = tensorrt_cache_options(self.options, cache or self.cache,
                                         tensorrt_profiles(dynamic_inputs(model), MAX_BATCH))
        return [ProviderRequest(TENSORRT, options, required=True),
                ProviderRequest(CUDA, index=1), ProviderRequest(CPU, index=2)]

    def engine(self, model: Path, cache: Path | None = None) -> Engine:
        """A bound session; required=True: a provider that does not start raises."""
        return Engine(model, providers=self.requests(model, cache), cpu_fallback=False,
                      bind="on")


def dynamic_inputs(model: Path) -> dict[str, list[int]]:
    """Inputs whose first axis is the batch -> the rest of their shape (as
    edge/engine_config.py gives TensorRT its profile from the manifest)."""
    cpu = Engine(model, bind="off")
    if cpu.static_batch:
        return {}
    out = {cpu.input.name: [int(d) for d in cpu.input.shape[1:]]}
    if cpu.banked:
        out[INDEX_INPUT] = []
    return out


def cuda_problem(root: Path) -> str | None:
    """None when a CUDA session really starts here; else why not."""
    if CUDA not in ort.get_available_providers():
        return why_missing(CUDA)
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *SHAPE])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
         str(root / "probe.onnx"))
    engine_log = logging.getLogger("edge.engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # its fallback warning is the line printed instead
    try:
        engine = Engine(root / "probe.onnx", cpu_fallback=True,
                        providers=[ProviderRequest(CUDA), ProviderRequest(CPU, index=1)])
    except EdgeError as exc:
        return str(exc).splitlines()[0]
    finally:
        engine_log.setLevel(level)
    if engine.provider != CUDA:
        return engine.warnings[0] if engine.warnings else why_missing(CUDA)
    return None


def devices_to_measure(dry: bool, root: Path) -> tuple[list[Device], list[str]]:
    """(devices, notes on what is not measured and why)."""
    if dry:
        return [Device("CPU standing in for the GPU (dry run)", CPU)], [
            "TensorRT: not measured: dry run"]
    devices, notes = [Device("CUDA", CUDA)], []
    problem = None if TENSORRT in ort.get_available_providers() else why_missing(TENSORRT)
    problem = problem or library_problem(TENSORRT)
    if problem:
        notes.append(f"TensorRT: not measured: TensorRT libraries not present ({problem})")
    else:
        devices.append(Device("TensorRT", TENSORRT, root / "trt-cache"))
    return devices, notes


# -- models --------------------------------------------------------------------------------

def build_models(root: Path) -> dict[str, Path]:
    """The demo's base with each adapter kind: merged (lora_head folded in), attached and a
    --bank 4 bundle, each in fp32 and fp16."""
    torch.manual_seed(0)
    base = SensorTransformer(in_channels=SHAPE[0], num_classes=10, length=SHAPE[1],
                             **BASE_CONFIG).eval()
    weights = save_base(base, root / "base.safetensors")
    adapters = [make_adapter(base, config, root / kind, seed=i, classes=classes)
                for i, (kind, (config, classes)) in enumerate(KINDS.items())]
    fp16 = root / "fp16.toml"
    fp16.write_text('[device]\nid = "bench"\n\n[export]\nprecision = "fp16"\n')
    out = {}
    for precision, target in (("fp32", None), ("fp16", fp16)):
        out[f"merged_{precision}"] = root / f"merged_{precision}.onnx"
        export_merged(base="reference", weights=weights, adapter=adapters[0], target=target,
                      out=out[f"merged_{precision}"])
        for name, bank in (("attached", 0), ("bank", 4)):
            out[f"{name}_{precision}"] = root / f"{name}_{precision}"
            export_attach(base="reference", weights=weights, adapters=adapters, bank=bank,
                          names=list(KINDS), target=target, out=out[f"{name}_{precision}"])
    return out


@dataclass
class Case:
    """One parity row: a model, its slot arrays (a bank's tensors) and extra feeds."""

    label: str
    model: Path
    arrays: dict | None = None
    feeds: dict | None = None
    bank: bool = False


def parity_cases(models: dict[str, Path], precision: str, rows: int) -> list[Case]:
    attached, bank = models[f"attached_{precision}"], models[f"bank_{precision}"]
    manifest = read_manifest(attached)
    cases = [Case("merged (lora_head folded in)", models[f"merged_{precision}"]),
             Case("attached: base (slot defaults)", attached / BASE_FILE)]
    cases += [Case(f"attached: {k}", attached / BASE_FILE,
                   read_adapter_arrays(attached / manifest.adapter(k).file)) for k in KINDS]
    tensors = AdapterBank.for_bundle(bank, read_manifest(bank))
    for k, entry in enumerate(read_manifest(bank).adapters):
        tensors.load(k, read_adapter_arrays(bank / entry.file))
    index = np.arange(rows) % tensors.size  # mixed rows: 3 adapters and the base
    cases.append(Case("bank of 4: mixed rows", bank / BASE_FILE, tensors.tensors,
                      {INDEX_INPUT: index}, bank=True))
    return cases


def run_case(engine: Engine, case: Case, x: np.ndarray) -> np.ndarray:
    """Bound: the arrays uploaded first; unbound (the CPU reference): fed as inputs."""
    slots = case.arrays
    if case.arrays is not None and engine.bound:
        slots = engine.prepare_bank(case.arrays) if case.bank else engine.upload(case.arrays)
    return engine.run(x, slots, feeds=case.feeds)


@dataclass
class Demo:
    """benchmarks/export.py's build: the demo's LoRA r4, merged and attached."""

    merged: Path
    bundle: Path
    adapter: Path

    def arrays(self) -> dict[str, np.ndarray]:
        return read_adapter_arrays(self.adapter)


# -- memory readings -----------------------------------------------------------------------

def _cudart() -> ctypes.CDLL:
    """libcudart as edge/gpu_info.py finds it: the loader's path, then the nvidia-* pip
    packages' lib/ folders."""
    spec = importlib.util.find_spec("nvidia")
    dirs = [""] + [d + "/" for root in (spec.submodule_search_locations or [] if spec else [])
                   for d in glob.glob(f"{root}/*/lib")]
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        for directory in dirs:
            try:
                return ctypes.CDLL(directory + name)
            except OSError:
                continue
    raise OSError("libcudart not found (loader path, nvidia-* packages)")


def cuda_used_bytes() -> int:
    """Device 0's used memory, total - free (cudaMemGetInfo): every process and context."""
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    status = _cudart().cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    if status != 0:
        raise RuntimeError(f"cudaMemGetInfo returned CUDA error {status}")
    return total.value - free.value


def rss_bytes() -> int:
    return rss()["VmRSS"]

