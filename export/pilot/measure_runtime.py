"""What an exported model costs on onnxruntime, measured without torch: this process's RSS,
medians of interleaved timings, a merged model's reload against an adapter's swap; and, run
as a script, one arrangement in a fresh process (so RSS figures compare), as JSON on stdout:

    python export/pilot/measure_runtime.py '{"kind": "attached", "model": "b/base.onnx",
        "adapter": "b/adapters/line.v1.onnx_adapter", "count": 10, "inputs": "x.npy"}'

kind "attached": one session of `model` + `count` adapters; "merged": `count` sessions of
`model`; "timing": latency attached against merged and swap against reload (`model` is the
slotted base, `merged` the merged model, `reps` / `swaps` the repeats).

Shared by export/pilot/running_cost.py and the benchmarks (export.py, swap_latency.py,
swap_memory.py). Run by path, not with -m, so that the child imports no torch.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.engine import Engine, session_options

# Intra-op threads per session in every measurement: a gateway serves several lines on a few
# cores, and one thread keeps the figures steady on a shared workstation.
THREADS = 1
WARMUP = 10  # runs of each variant before timing


def rss() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of this process in bytes (Linux /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def settled_rss() -> dict[str, int]:
    """RSS after a collection and glibc's malloc_trim: freed heap does not count."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return rss()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def interleaved_medians(runs: Mapping[str, Callable[[np.ndarray], object]], x: np.ndarray,
                        reps: int, warmup: int = WARMUP) -> dict[str, float]:
    """Median ms per call of each variant on x; the variants alternate so that drift (other
    work on the machine, frequency changes) hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(warmup):
        for fn in runs.values():
            fn(x)
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def reload_ms(path: str | Path, x: np.ndarray, threads: int = THREADS) -> float:
    """A runtime without slots changes model: open the merged model's session and run its
    first window (x (1, C, L))."""
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: x})
    return (time.perf_counter() - t0) * 1000.0


def cold_adapter_ms(engine: Engine, path: str | Path, x: np.ndarray) -> float:
    """A slot runtime changes adapter that it has not loaded yet: load the `.onnx_adapter`
    as the runtime does (Engine.load_adapter) and run its first window on the open session."""
    t0 = time.perf_counter()
    engine.run(x, engine.load_adapter(path))
    return (time.perf_counter() - t0) * 1000.0


# -- one arrangement in a fresh process ---------------------------------------------------------


def _started(model: Path, x: np.ndarray) -> dict[str, int]:
    """onnxruntime's one-time start-up (environment, thread pools) paid by a session that is
    then dropped: the figures that follow are what the arrangement itself holds."""
    Engine(model, threads=THREADS).run(x)
    return settled_rss()


def attached_growth(model: Path, adapter: Path, count: int, x: np.ndarray) -> dict[str, int]:
    """RSS growth of one session of the slotted base (run once), then of `count` loads of
    the adapter each run once, held together as a gateway holds its lines' adapters. One
    file loaded `count` times stands for `count` files of its size: each load is its own
    memory map and RSS counts each map's touched pages (the same growth as distinct copies,
    checked at the demo's size)."""
    before = _started(model, x)
    engine = Engine(model, threads=THREADS)
    engine.run(x)
    session = settled_rss()
    held = [engine.load_adapter(adapter) for _ in range(count)]
    for value in held:
        engine.run(x, value)
    after = settled_rss()
    return {"session": delta(before, session)["VmRSS"],
            "adapters": delta(session, after)["VmRSS"], "count": count}


def merged_growth(model: Path, count: int, x: np.ndarray) -> dict[str, int]:
    """RSS growth of `count` sessions of the merged model, each run once, held together."""
    before = _started(model, x)
    held = [Engine(model, threads=THREADS) for _ in range(count)]
    for engine in held:
        engine.run(x)
    return {"sessions": delta(before, settled_rss())["VmRSS"], "count": count}


def timing(model: Path, adapter: Path, merged: Path, x: np.ndarray, reps: int,
           swaps: int) -> dict[str, float]:
    """Median latency (ms) attached against merged at x's batch, and median swap (a cold
    adapter on the open session) against reload (a new session of the merged model)."""
    attached, plain = Engine(model, threads=THREADS), Engine(merged, threads=THREADS)
    loaded = attached.load_adapter(adapter)
    ms = interleaved_medians({"attached": lambda v: attached.run(v, loaded),
                              "merged": plain.run}, x, reps)
    swap, reload = [], []
    for _ in range(swaps):  # alternated, like the latencies
        swap.append(cold_adapter_ms(attached, adapter, x))
        reload.append(reload_ms(merged, x))
    return {**ms, "adapter_swap": statistics.median(swap),
            "model_reload": statistics.median(reload)}


def run_spec(spec: dict) -> dict:
    """One arrangement from its JSON spec (see the module's docstring)."""
    x = np.load(spec["inputs"], allow_pickle=False)[:1].astype(np.float32)
    model, kind = Path(spec["model"]), spec["kind"]
    if kind == "attached":
        return attached_growth(model, Path(spec["adapter"]), spec["count"], x)
    if kind == "merged":
        return merged_growth(model, spec["count"], x)
    if kind == "timing":
        return timing(model, Path(spec["adapter"]), Path(spec["merged"]), x, spec["reps"],
                      spec["swaps"])
    raise ValueError(f"unknown kind {kind!r}")


if __name__ == "__main__":
    print(json.dumps(run_spec(json.loads(sys.argv[1]))))
