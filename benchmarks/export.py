"""Merged vs attached on onnxruntime CPU, side by side in one process.

Latency at batch 1 and 32 of the reference model with LoRA r8 (adapter through RunOptions,
and the same tensors fed as inputs) against the merged model; file sizes; and the time to
create a merged model's session against loading and activating an `.onnx_adapter`.

    python benchmarks/export.py [--reps 200] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

# This file shares its name with the `export` package: import from the repo root instead.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
from benchmarks.report import machine_line, write_section  # noqa: E402
from edge.bundle import BASE_FILE, read_manifest  # noqa: E402
from edge.engine import Engine, load_adapter_file, read_adapter_arrays, session_options  # noqa: E402
from export.adapters import LoraConfig, inject  # noqa: E402
from export.demo.run import BASE_CONFIG  # noqa: E402
from export.models import SensorTransformer, save_base, weights_fingerprint  # noqa: E402
from export.onnx.attach import export_attach  # noqa: E402
from export.onnx.merge import export_merged  # noqa: E402
from export.peft_io import save_adapter  # noqa: E402
from export.pilot.measure_runtime import interleaved_medians  # noqa: E402

# The adapter the demo trains and ships (train()'s defaults for the reference model).
TARGETS = ["stem.conv1", "stem.conv2", "mlp.fc2"]
SAVED = ["head", "norm", "norm1", "norm2"]


def build(root: Path, rank: int) -> tuple[Path, Path, str]:
    """The demo's reference base (ACSF1 shape: 1 x 256, 10 classes) and a LoRA adapter."""
    torch.manual_seed(0)
    base = SensorTransformer(in_channels=1, num_classes=10, length=256, **BASE_CONFIG).eval()
    weights = save_base(base, root / "base.safetensors")
    fingerprint = weights_fingerprint(base)  # before injection wraps its modules
    adapted = inject(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                      modules_to_save=SAVED))
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    save_adapter(adapted, root / "line7", meta={"base_fingerprint": fingerprint})
    export_merged(base="reference", weights=weights, adapter=root / "line7",
                  out=root / "merged.onnx")
    export_attach(base="reference", weights=weights, adapters=[root / "line7"],
                  out=root / "bundle", max_rank=rank)
    entry = read_manifest(root / "bundle").adapter("line7")
    return root / "merged.onnx", root / "bundle", entry.file


def latency(runs: dict, batch: int, reps: int) -> dict[str, float]:
    """Median ms per run; the variants alternate so drift hits all of them alike."""
    x = np.random.default_rng(batch).standard_normal((batch, 1, 256)).astype(np.float32)
    return interleaved_medians(runs, x, reps)


def swap_costs(merged: Path, adapter_file: Path, reps: int) -> dict[str, float]:
    x = np.zeros((1, 1, 256), np.float32)
    create, activate, first_run = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ort.InferenceSession(str(merged), session_options(), providers=["CPUExecutionProvider"])
        create.append(time.perf_counter() - t0)
    engine = Engine(adapter_file.parents[1] / BASE_FILE)
    for _ in range(reps):
        t0 = time.perf_counter()
        adapter = load_adapter_file(adapter_file)
        options = ort.RunOptions()
        options.add_active_adapter(adapter)
        t1 = time.perf_counter()
        engine.session.run(None, {engine.input.name: x}, options)
        t2 = time.perf_counter()
        activate.append(t1 - t0)
        first_run.append(t2 - t1)
    ms = {k: statistics.median(v) * 1e3 for k, v in
          (("create", create), ("activate", activate), ("first_run", first_run))}
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    merged_path, bundle, adapter_rel = build(root, args.rank)
    merged, attached = Engine(merged_path), Engine(bundle / BASE_FILE)
    adapter = load_adapter_file(bundle / adapter_rel)
    feeds = read_adapter_arrays(bundle / adapter_rel)
    runs = {"merged": merged.run, "attached (RunOptions)": lambda x: attached.run(x, adapter),
            "attached (inputs)": lambda x: attached.run(x, feeds=feeds)}
    rows = []
    for batch in (1, 32):
        ms = latency(runs, batch, args.reps if batch == 1 else max(args.reps // 4, 20))
        for name in runs:
            rows.append(f"| {batch} | {name} | {ms[name]:.3f} | {ms[name] / ms['merged']:.3f} |")
    swap = swap_costs(merged_path, bundle / adapter_rel, 30)
    sizes = {"base.onnx (slots)": (bundle / BASE_FILE).stat().st_size,
             "merged .onnx": merged_path.stat().st_size,
             ".onnx_adapter": (bundle / adapter_rel).stat().st_size}
    body = "\n".join([
        f"Machine: {machine_line()}. Reference model as the demo builds it ({BASE_CONFIG}, "
        f"1x256 input, 10 classes) with LoRA r{args.rank} on {', '.join(TARGETS)}, "
        f"{', '.join(SAVED)} trained alongside (the demo's adapter); "
        "medians, variants interleaved.",
        "", "| batch | variant | ms / run | ratio to merged |", "|---|---|---|---|", *rows, "",
        "| swap cost | ms |", "|---|---|",
        f"| new session of the merged model | {swap['create']:.3f} |",
        f"| load + activate `.onnx_adapter` | {swap['activate']:.3f} |",
        f"| first run after activation (mmap paid here) | {swap['first_run']:.3f} |",
        f"| **session / activate** | **{swap['create'] / swap['activate']:.0f}x** |", "",
        "| file | KiB |", "|---|---|",
        *[f"| {k} | {v / 1024:.1f} |" for k, v in sizes.items()],
        "", "Targets: attached/merged <= 1.10 at batch 1 and <= 1.05 at batch 32; "
        "activation >= 100x faster than a new session.",
    ])
    print(body)
    if not args.no_write:
        print(f"\nwritten to {write_section('Export (benchmarks/export.py)', body)}")


if __name__ == "__main__":
    main()
