"""GPU: adapters bound on the device (IOBinding) on CUDA and TensorRT, side by side in one
process with the CPU and with the merged model.

    python benchmarks/gpu.py                # on a GPU machine: writes docs/BENCHMARKS.md
    python benchmarks/gpu.py --cpu-dry-run  # anywhere: the same code with the CPU provider
                                            # standing in for the GPU; prints, writes nothing

At the demo's model size (export/demo/run.py BASE_CONFIG, 1 x 256 input): parity against the CPU
(merged, each adapter kind, a bank; fp32 and fp16), attached (bound) vs merged latency, the
swap (a rebind) against a new session and a TensorRT engine build, rows/s at max_batch, and
device memory of one base + 100 adapters against 10 merged sessions. Without a CUDA session
it prints one line, "not yet measured on a GPU: <reason>", and exits 0. The devices, the
models and the memory readings it measures on are in benchmarks/gpu_models.py.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

# benchmarks/export.py would shadow the `export` package: import from the repo root instead.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent), str(HERE.parent / "tests")] + [
    p for p in sys.path if Path(p or ".").resolve() != HERE]
import torch  # noqa: E402

from benchmarks.export import SAVED, TARGETS, build, latency  # noqa: E402
from benchmarks.gpu_models import (  # noqa: E402
    MAX_BATCH,
    RANK,
    SHAPE,
    Case,
    Demo,
    Device,
    build_models,
    cuda_problem,
    cuda_used_bytes,
    devices_to_measure,
    parity_cases,
    rss_bytes,
    run_case,
)
from benchmarks.report import machine_line, write_section  # noqa: E402
from edge.bundle import BASE_FILE  # noqa: E402
from edge.engine import DeviceSlots, Engine, load_adapter_file  # noqa: E402
from edge.gpu_info import environment  # noqa: E402
from edge.providers import CUDA, TENSORRT, ort_message  # noqa: E402
from export.demo.run import BASE_CONFIG  # noqa: E402

TITLE = "GPU (benchmarks/gpu.py)"
ATOL = {"fp32": 1e-3, "fp16": 1e-2}
LATENCY_TARGET = {1: 1.10, 32: 1.05}  # attached (bound) / merged
SWAP_TARGET = 1000.0  # new session (or engine build) / rebind


@dataclass
class Checks:
    """Each target's verdict, printed and written."""

    lines: list[str] = field(default_factory=list)

    def add(self, what: str, ok: bool, detail: str) -> str:
        verdict = "pass" if ok else "MISS"
        self.lines.append(f"{what}: {verdict} ({detail})")
        return verdict


# -- sections ------------------------------------------------------------------------------

def parity_variants(devices: list[Device]) -> list[tuple[Device, str]]:
    """Each device in fp32 and fp16; CUDA once more without TF32 (onnxruntime's CUDA
    provider lets fp32 MatMul and Conv round to TF32 by default), to tell that rounding apart
    from a real difference."""
    out = [(d, p) for d in devices for p in ("fp32", "fp16")]
    out += [(Device(f"{d.label} (use_tf32 0)", CUDA, options={"use_tf32": "0"}), "fp32")
            for d in devices if d.provider == CUDA]
    return out


def parity_diffs(device: Device, cases: list[Case], want: list[np.ndarray],
                 x: np.ndarray) -> list[float]:
    """max |device - reference| per case, one bound session per model file."""
    engines: dict[Path, Engine] = {}
    diffs = []
    for case, ref in zip(cases, want, strict=True):
        if case.model not in engines:
            engines[case.model] = device.engine(case.model)
        diffs.append(float(np.max(np.abs(run_case(engines[case.model], case, x) - ref))))
    return diffs


def parity_section(devices: list[Device], models: dict[str, Path], checks: Checks) -> str:
    """max |device - CPU| per model; fp16 models against the fp32 model on the CPU."""
    x = np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32)
    cases = {p: parity_cases(models, p, len(x)) for p in ("fp32", "fp16")}
    want = [run_case(Engine(c.model, bind="off"), c, x) for c in cases["fp32"]]
    columns, cells = [], []
    for device, precision in parity_variants(devices):
        columns.append(f"{device.label} {precision}")
        cells.append(parity_diffs(device, cases[precision], want, x))
        worst = max(cells[-1])
        checks.add(f"parity {device.label} {precision} <= {ATOL[precision]:.0e}",
                   worst <= ATOL[precision], f"worst {worst:.1e}")
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {case.label} | " + " | ".join(f"{col[i]:.1e}" for col in cells) + " |"
              for i, case in enumerate(cases["fp32"])]
    return "\n".join(["**Parity** (max |logit diff| against the fp32 model on the CPU, 16 "
                      "random rows; fp16 models against the fp32 one; targets "
                      f"{ATOL['fp32']:.0e} fp32, {ATOL['fp16']:.0e} fp16).", "", *lines])

def host_variant(device: Device, demo: Demo) -> tuple[Callable | None, str]:
    """The attached bundle run the host way (LoraAdapter through RunOptions: on a GPU its
    tensors are copied to the device every run), or None and why it cannot run."""
    try:
        host = Engine(demo.bundle / BASE_FILE, providers=device.requests(demo.bundle / BASE_FILE),
                      cpu_fallback=False, bind="off")
        lora = load_adapter_file(demo.adapter)
        host.run(np.zeros((1, *SHAPE), np.float32), lora)
    except Exception as exc:  # onnxruntime's own errors are untyped
        return None, f"{type(exc).__name__}: {ort_message(exc)}"
    return (lambda x: host.run(x, lora)), ""


def latency_section(devices: list[Device], demo: Demo, reps: int, checks: Checks) -> str:
    """Median ms per run, variants interleaved; the host path for comparison."""
    rows, notes = [], []
    for device in devices:
        merged, attached = device.engine(demo.merged), device.engine(demo.bundle / BASE_FILE)
        slots = attached.load_adapter(demo.adapter)
        runs = {"merged": merged.run, "bound": lambda x, e=attached, s=slots: e.run(x, s)}
        host, why = host_variant(device, demo)
        if host is not None:
            runs["host"] = host
        else:
            notes.append(f" {device.label}: the host path did not run ({why}).")
        for batch, target in LATENCY_TARGET.items():
            ms = latency(runs, batch, reps if batch == 1 else max(reps // 4, 5))
            ratio = ms["bound"] / ms["merged"]
            verdict = checks.add(f"latency {device.label} batch {batch} attached/merged <= "
                                 f"{target:.2f}", ratio <= target, f"{ratio:.3f}")
            hosted = (f"{ms['host']:.3f} | {ms['host'] / ms['merged']:.3f}" if "host" in ms
                      else "- | -")
            rows.append(f"| {device.label} | {batch} | {ms['merged']:.3f} | {ms['bound']:.3f} | "
                        f"{ratio:.3f} | {hosted} | <= {target:.2f} {verdict} |")
    return "\n".join([
        "**Latency** (ms per run, medians, variants interleaved; the demo's LoRA r4 on "
        f"{', '.join(TARGETS)} with {', '.join(SAVED)}; input copied in and logits out "
        "each run; host: `ort.LoraAdapter` through RunOptions, unbound)." + "".join(notes), "",
        "| provider | batch | merged | attached, bound | bound / merged | attached, host "
        "LoraAdapter | host / merged | target |", "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows])


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def rebind_ms(device: Device, demo: Demo, reps: int) -> tuple[float, float]:
    """(a swap: a run with the other held DeviceSlots, a run with the same ones), medians."""
    engine = device.engine(demo.bundle / BASE_FILE)
    arrays = demo.arrays()
    held = [engine.upload(arrays), engine.upload({k: v * 0.5 for k, v in arrays.items()})]
    x = np.zeros((1, *SHAPE), np.float32)
    for slots in held:
        engine.run(x, slots)
    swap, same = [], []
    for i in range(reps):
        slots = held[i % 2]  # the new DeviceSlots chosen: the clock starts here
        start = time.perf_counter()
        engine.run(x, slots)
        swap.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine.run(x, slots)
        same.append(time.perf_counter() - start)
    return statistics.median(swap) * 1e3, statistics.median(same) * 1e3


def swap_section(devices: list[Device], demo: Demo, root: Path, reps: int,
                 checks: Checks) -> str:
    x = np.zeros((1, *SHAPE), np.float32)
    rows = []
    for device in devices:
        swap, same = rebind_ms(device, demo, reps)
        rows.append(f"| {device.label} | rebind a held adapter -> first result | {swap:.3f} | "
                    f"- | (a run without a swap: {same:.3f} ms) |")
        baselines = [("new session of the merged model -> first result",
                      _median_ms(lambda d=device: d.engine(demo.merged).run(x),
                                 max(reps // 20, 2)))]
        if device.provider == TENSORRT:  # the first session on an empty cache builds
            empty = root / "trt-empty-cache"
            baselines.append(("TensorRT engine build: first session, empty cache -> first "
                              "result", _median_ms(lambda d=device, c=empty: d.engine(
                                  demo.merged, c).run(x), 1)))
        for what, ms in baselines:
            verdict = checks.add(f"swap {device.label}: {what} / rebind >= {SWAP_TARGET:.0f}x",
                                 ms / swap >= SWAP_TARGET, f"{ms / swap:.0f}x")
            rows.append(f"| {device.label} | {what} | {ms:.3f} | {ms / swap:.0f}x | "
                        f">= {SWAP_TARGET:.0f}x {verdict} |")
    return "\n".join([
        "**Swap** (batch 1, medians; a rebind is timed from the new DeviceSlots chosen to the "
        "first result, both adapters uploaded beforehand).", "",
        "| provider | what | ms | baseline / rebind | target |", "|---|---|---:|---:|---|",
        *rows])


def throughput_section(devices: list[Device], demo: Demo, reps: int) -> str:
    """Rows per second at max_batch; the CPU's host path measured alongside."""
    cpu = Engine(demo.bundle / BASE_FILE, bind="off")
    lora = load_adapter_file(demo.adapter)
    rows = []
    for device in devices:
        merged, attached = device.engine(demo.merged), device.engine(demo.bundle / BASE_FILE)
        slots = attached.load_adapter(demo.adapter)
        ms = latency({"merged": merged.run, "bound": lambda x, e=attached, s=slots: e.run(x, s),
                      "cpu": lambda x: cpu.run(x, lora)}, MAX_BATCH, max(reps // 4, 5))
        rate = {k: MAX_BATCH / v * 1e3 for k, v in ms.items()}
        rows.append(f"| {device.label} | {rate['merged']:,.0f} | {rate['bound']:,.0f} | "
                    f"{rate['bound'] / rate['merged']:.3f} | {rate['cpu']:,.0f} | "
                    f"{rate['bound'] / rate['cpu']:.1f}x |")
    return "\n".join([
        f"**Rows per second** at max_batch {MAX_BATCH} (the demo's adapter; medians, variants "
        "interleaved; CPU: the host path, onnxruntime's default threads).", "",
        "| provider | merged | attached, bound | bound / merged | CPU attached | bound / CPU |",
        "|---|---:|---:|---:|---:|---:|", *rows])


# -- memory --------------------------------------------------------------------------------

def _settled(read: Callable[[], int]) -> int:
    gc.collect()
    return read()


def memory_section(device: Device, demo: Demo, adapters: int, merged: int, dry: bool) -> str:
    """One base session + `adapters` DeviceSlots against `merged` sessions of the merged
    model, each with one run; measured one after the other in this process."""
    read, how = ((rss_bytes, "process RSS (/proc/self/status): the dry run's stand-in, "
                  "not a measurement of device memory") if dry
                 else (cuda_used_bytes, "device memory used, cudaMemGetInfo (total - free) "
                       "through ctypes; includes onnxruntime's arena reservations"))
    x = np.zeros((1, *SHAPE), np.float32)
    for model in (demo.merged, demo.bundle / BASE_FILE):  # load the kernels both sides use
        device.engine(model).run(x)
    start = _settled(read)
    engine = device.engine(demo.bundle / BASE_FILE)
    engine.run(x)
    base = _settled(read)
    arrays = demo.arrays()
    held: list[DeviceSlots] = []
    for i in range(adapters):  # distinct tensors: version i scaled
        held.append(engine.upload({k: v * (1 + i / adapters) for k, v in arrays.items()}))
        engine.run(x, held[-1])
    loaded = _settled(read)
    tensors = sum(s.nbytes for s in held)
    del engine, held
    before = _settled(read)
    sessions = [device.engine(demo.merged) for _ in range(merged)]
    for session in sessions:
        session.run(x)
    after = _settled(read)
    mib = 1 / 2**20
    attached, sessions_grew = loaded - start, after - before
    ratio = (f"{sessions_grew / attached:.1f}x the base + {adapters} adapters" if attached > 0
             else "no ratio: the base + adapters did not grow the reading")
    return "\n".join([
        f"**Memory** ({device.label}; {how}; after one warm-up session of each model, so "
        "both sides find the kernels loaded).", "",
        "| held | MiB | note |", "|---|---:|---|",
        f"| one base session (attached bundle) | {(base - start) * mib:.1f} | |",
        f"| + {adapters} adapters as DeviceSlots | {(loaded - base) * mib:.1f} | "
        f"their tensors: {tensors * mib:.1f} MiB |",
        f"| **one base + {adapters} adapters** | **{attached * mib:.1f}** | |",
        f"| **{merged} merged-model sessions** | **{sessions_grew * mib:.1f}** | {ratio} |"])


# -- the report ----------------------------------------------------------------------------

def header(devices: list[Device], notes: list[str], dry: bool) -> str:
    env = environment()
    gpu = env["gpus"][0] if env["gpus"] else {}
    libs = {k: v.get("version") or v.get("error") for k, v in env["libraries"].items()}
    runtime = env["onnxruntime"]
    installed = ", ".join(f"{k} {v}" for k, v in runtime["installed"].items())
    gpu_line = (f"{gpu.get('name')}, {gpu.get('memory_mib')} MiB, driver {gpu.get('driver')}"
                if gpu else "none found")
    return "\n".join([
        f"Machine: {machine_line(('numpy',))}; GPU: {gpu_line}; CUDA driver API "
        f"{libs['cuda_driver']}, CUDA runtime {libs['cuda_runtime']}, cuDNN {libs['cudnn']}, "
        f"TensorRT {libs['tensorrt']}; onnxruntime {runtime['version']} imported from "
        f"{Path(ort.__file__).parent} (installed: {installed}; providers: "
        f"{', '.join(env['available_providers'])}); torch {torch.__version__}.",
        "", f"Measured: {', '.join(d.label for d in devices)}."
        + "".join(f" {n}." for n in notes)
        + (" Dry run: the CPU provider stands in for the GPU (bind on); not a measurement of "
           "a GPU." if dry else ""),
        "", f"Models: the demo's base ({BASE_CONFIG}, {SHAPE[0]} x {SHAPE[1]} input) with "
        "LoRA r4 on q, v, conv1, fc1 + a new 7-class head (lora_head), LoRA r8 on q, v "
        "(lora_qv), a bottleneck of 4 on fc2; random adapter weights. Every session is "
        "bound (bind on, slot tensors uploaded once as OrtValues)."])


def guarded(name: str, section: Callable[[], str], checks: Checks) -> str:
    """A section, or what stopped it: one failure never costs the other sections (the
    traceback goes to stderr)."""
    try:
        return section()
    except Exception as exc:
        traceback.print_exc()
        checks.add(f"{name} section", False, "it failed")
        return f"**{name}**: not measured: {type(exc).__name__}: {ort_message(exc)}"


def measure(args: argparse.Namespace, root: Path) -> tuple[str, Checks]:
    devices, notes = devices_to_measure(args.cpu_dry_run, root)
    checks = Checks()
    timings, parts = {}, []
    start = time.perf_counter()
    models = build_models(root / "models")
    merged, bundle, adapter = build(root / "demo", RANK)
    demo = Demo(merged, bundle, bundle / adapter)
    timings["build"] = time.perf_counter() - start
    # Memory first: before any other section has uploaded tensors, so the allocator that
    # holds uploaded OrtValues starts empty (it keeps what it reserved for the process).
    for name, section in (
            ("memory", lambda: memory_section(devices[0], demo, args.adapters, args.merged,
                                              args.cpu_dry_run)),
            ("parity", lambda: parity_section(devices, models, checks)),
            ("latency", lambda: latency_section(devices, demo, args.reps, checks)),
            ("swap", lambda: swap_section(devices, demo, root, args.reps, checks)),
            ("rows/s", lambda: throughput_section(devices, demo, args.reps))):
        t0 = time.perf_counter()
        parts.append(guarded(name, section, checks))
        timings[name] = time.perf_counter() - t0
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    body = "\n\n".join([header(devices, notes, args.cpu_dry_run), *parts[1:], parts[0],
                        "Targets: " + "; ".join(checks.lines) + ".",
                        f"Whole run {sum(timings.values()):.0f} s ({spent})."])
    return body, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="the CPU provider stands in for the GPU; print, write nothing")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--reps", type=int, default=None, help="runs per latency median")
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--merged", type=int, default=10)
    args = parser.parse_args()
    args.reps = args.reps or (10 if args.cpu_dry_run else 200)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    if not args.cpu_dry_run:
        problem = cuda_problem(root)
        if problem:
            print(f"not yet measured on a GPU: {problem}")
            return 0
    torch.set_num_threads(min(torch.get_num_threads(), 4))  # the exports: small models
    body, checks = measure(args, root)
    print(body)
    misses = sum("MISS" in line for line in checks.lines)
    print(f"\n{len(checks.lines) - misses} target(s) pass, {misses} MISS")
    if not (args.cpu_dry_run or args.no_write):
        print(f"written to {write_section(TITLE, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
