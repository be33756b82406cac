"""The running cost of a line's adapter on a gateway, measured on the exported files: bytes
to ship per line, disk and memory for N lines, swap against reload, latency attached against
merged: the `running_cost` object of the pilot's report.json.

    measure_running_cost(base=..., weights=..., adapter_dir=..., lines=10, workdir=...)

Writes WORKDIR/bundle (`export_attach`: base.onnx with slots + the adapter) and
WORKDIR/model.onnx (`export_merged`: the adapter folded into the base) and nothing else; the
onnxruntime figures come from fresh subprocesses (export/pilot/measure_runtime.py), one per
arrangement, so that their RSS compare and no torch is loaded beside onnxruntime.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import edge
from edge.bundle import BASE_FILE, REFERENCE_INPUTS, read_manifest
from edge.errors import ConfigError, ExportError
from export.onnx.attach import export_attach
from export.onnx.merge import ExportSettings, export_merged
from export.onnx.slot_plan import dir_rank

BUNDLE_DIR = "bundle"
MERGED_FILE = "model.onnx"
LINE_NAME = "line"  # the adapter's name inside the measured bundle
CHILD = Path(__file__).resolve().with_name("measure_runtime.py")
LATENCY_REPS = 200  # runs of each variant at batch 1, after the warm-up
SWAP_REPS = 20  # swaps and reloads, alternated
MEMORY_REPEATS = 3  # fresh processes per memory arrangement; the median is kept
# Above these, memory is measured with fewer lines and extrapolated linearly (memory_note):
MAX_ADAPTERS = 100  # adapters loaded in one process
MAX_SESSIONS = 10  # merged sessions in one process ...
SESSIONS_BUDGET = 2 << 30  # ... and no more than ~4x their file each within 2 GiB


@dataclass(frozen=True)
class Exported:
    """The files measured: the slotted base, the line's adapter, the merged model, inputs."""

    base: Path  # WORKDIR/bundle/base.onnx
    adapter: Path  # WORKDIR/bundle/adapters/line.v1.onnx_adapter
    merged: Path  # WORKDIR/model.onnx
    inputs: Path  # WORKDIR/bundle/reference_inputs.npy (N, C, L), the export's check windows


def measure_running_cost(*, base: str, weights: str | Path | None, adapter_dir: Path,
                         lines: int, workdir: Path, progress: bool = False) -> dict:
    """Export `adapter_dir` on `base` + `weights` both ways into `workdir` and measure both
    for `lines` lines: report.json's `running_cost` object, plus `memory_note` (how memory
    was measured, and whether it was extrapolated)."""
    if lines < 1:
        raise ConfigError(f"--lines {lines}: a gateway serves at least 1 line")
    rank = max(ExportSettings().max_rank, dir_rank(adapter_dir))  # checks the dir
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = _progress(progress)
    say("running cost: exporting the adapter attached (bundle) and merged (model.onnx)")
    files = export_pair(base, weights, Path(adapter_dir), workdir, rank)
    say(f"running cost: gateway memory for {lines} line(s), fresh processes")
    memory, note = measure_memory(files, lines)
    say("running cost: latency and swap against reload")
    timing = run_child({"kind": "timing", "model": str(files.base),
                        "adapter": str(files.adapter), "merged": str(files.merged),
                        "inputs": str(files.inputs), "reps": LATENCY_REPS, "swaps": SWAP_REPS})
    return assemble(files, lines, memory, note, timing)


def export_pair(base: str, weights: str | Path | None, adapter_dir: Path, workdir: Path,
                rank: int) -> Exported:
    """The adapter exported as `attach` and as `merge` export it. Slots take `rank`: the
    target's default (8), or the adapter's own when larger: what `edge-export attach`
    writes, with --max-rank raised only where it must be."""
    bundle = workdir / BUNDLE_DIR
    export_attach(base=base, weights=weights, adapters=[adapter_dir], out=bundle,
                  names=[LINE_NAME], max_rank=rank)
    merged = workdir / MERGED_FILE
    export_merged(base=base, weights=weights, adapter=adapter_dir, out=merged)
    entry = read_manifest(bundle).adapter(LINE_NAME)
    return Exported(bundle / BASE_FILE, bundle / entry.file, merged, bundle / REFERENCE_INPUTS)


def measured_counts(lines: int, merged_bytes: int) -> tuple[int, int]:
    """How many adapters and merged sessions to hold in one process for `lines` lines."""
    sessions = max(1, min(lines, MAX_SESSIONS, SESSIONS_BUDGET // max(4 * merged_bytes, 1)))
    return min(lines, MAX_ADAPTERS), sessions


def measure_memory(files: Exported, lines: int) -> tuple[dict[str, int], str]:
    """RSS growth (bytes) for `lines` lines, attached and merged, and how it was measured.
    Attached: one session + k adapters grows by session + adapters(k), so N lines cost
    session + adapters(k) * N / k; merged: k sessions grow by m(k), N lines m(k) * N / k
    (k = N unless N is above the caps, where each part is linear in the lines held)."""
    k_adapters, k_sessions = measured_counts(lines, files.merged.stat().st_size)
    common = {"inputs": str(files.inputs)}
    attached = [run_child({**common, "kind": "attached", "model": str(files.base),
                           "adapter": str(files.adapter), "count": k_adapters})
                for _ in range(MEMORY_REPEATS)]
    merged = [run_child({**common, "kind": "merged", "model": str(files.merged),
                         "count": k_sessions}) for _ in range(MEMORY_REPEATS)]
    session = statistics.median(r["session"] for r in attached)
    adapters = statistics.median(r["adapters"] for r in attached)
    sessions = statistics.median(r["sessions"] for r in merged)
    memory = {"attached": round(session + adapters * lines / k_adapters),
              "merged": round(sessions * lines / k_sessions)}
    return memory, memory_note(lines, k_adapters, k_sessions)


def memory_note(lines: int, k_adapters: int, k_sessions: int) -> str:
    held = (f"one base.onnx session + {k_adapters} adapter(s) (Engine.load_adapter, each run "
            f"once) against {k_sessions} model.onnx session(s) (each run once)")
    text = (f"VmRSS growth of a fresh process after onnxruntime's start-up, median of "
            f"{MEMORY_REPEATS} processes per arrangement, 1 intra-op thread per session: {held}")
    scaled = [f"{what} measured for {k} line(s) and scaled linearly to {lines}"
              for what, k in (("adapters", k_adapters), ("merged sessions", k_sessions))
              if k < lines]
    return text + ("; " + "; ".join(scaled) if scaled else "") + "."


def run_child(spec: dict) -> dict:
    """One arrangement in a fresh interpreter (measure_runtime.py); its JSON answer. The
    child imports the same `edge` package as this process."""
    root = str(Path(edge.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], capture_output=True,
                          text=True, timeout=600, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"running-cost measurement ({spec['kind']}) failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assemble(files: Exported, lines: int, memory: dict[str, int], note: str,
             timing: dict[str, float]) -> dict:
    """report.json's `running_cost` from the files' sizes and the measurements."""
    adapter, full = files.adapter.stat().st_size, files.merged.stat().st_size
    return {
        "lines": lines,
        # adapter: the `.onnx_adapter` file attach writes (slots at the bundle's rank), the
        # file a gateway receives and loads, not the PEFT safetensors it was made from;
        # full_model: the merged model.onnx a runtime without slots needs per line.
        "bytes_per_line": {"adapter": adapter, "full_model": full},
        "disk_bytes": {"attached": files.base.stat().st_size + lines * adapter,
                       "merged": lines * full},
        "memory_bytes": memory,
        "memory_note": note,
        # adapter_swap: load a line's .onnx_adapter on the open session + its first run;
        # model_reload: a new session of the merged model + its first run (medians).
        "swap_ms": {"adapter_swap": timing["adapter_swap"],
                    "model_reload": timing["model_reload"]},
        "latency_ms": {"attached": timing["attached"], "merged": timing["merged"], "batch": 1},
    }


def _progress(enabled: bool):
    def say(text: str) -> None:
        if enabled:
            print(text, file=sys.stderr, flush=True)
    return say
