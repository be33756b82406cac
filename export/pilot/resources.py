"""What a training run costs the machine: wall time, CPU seconds, peak memory; and the
machine itself, for the report.

Peak memory: ru_maxrss is process-wide and never goes down, so after the first candidate it
says nothing about the next. Instead a thread samples the resident set (/proc/self/statm)
every 5 ms while a run trains: `peak_rss_bytes` is the highest sample (what the machine must
hold: Python, torch, data and the run) and `rss_growth_bytes` its rise over the RSS the run
started at (what the run itself added). Candidates run in this process, not in subprocesses:
a fresh interpreter with torch costs ~2 s per run, more than a small candidate trains. Where
/proc is missing the sampler falls back to ru_maxrss (then the growth is that of the maximum).
CPU seconds are the process's (time.process_time: every torch thread); GPU seconds are null,
the pilot trains on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Usage", "machine_info", "measure", "rss_bytes"]

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_INTERVAL_S = 0.005


@dataclass
class Usage:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    rss_growth_bytes: int = 0


def rss_bytes() -> int:
    """The resident set now (Linux), else the process's maximum so far."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB


@contextlib.contextmanager
def measure() -> Iterator[Usage]:
    """Measure the block; the Usage is filled in when it ends."""
    usage = Usage()
    start_rss = rss_bytes()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(_INTERVAL_S):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - wall
        usage.cpu_s = time.process_time() - cpu
        done.set()
        sampler.join()
        usage.peak_rss_bytes = max(peak[0], rss_bytes())
        usage.rss_growth_bytes = usage.peak_rss_bytes - start_rss


def machine_info() -> dict:
    """{"cpu", "cores", "gpu", "torch", "onnxruntime", "threads"} of this machine."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_name(), "cores": cores, "gpu": gpu, "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
