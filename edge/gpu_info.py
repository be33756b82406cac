"""What this machine offers a GPU session: the GPU, its memory, and the versions of the CUDA,
cuDNN and TensorRT libraries the dynamic loader finds (for `edge-runtime doctor`).

Versions come from the libraries themselves (cudaRuntimeGetVersion, cudnnGetVersion,
getInferLibVersion), so they are what onnxruntime will load, not what a package claims.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

from . import __version__
from .providers import (
    GPU_PROVIDERS,
    installed_runtimes,
    library_problem,
    runtime_clash,
)

# (label, candidate sonames, version function, how to format its int)
_LIBRARIES = (
    ("cuda_driver", ("libcuda.so.1",), "cuDriverGetVersion", "cuda"),
    ("cuda_runtime", ("libcudart.so.13", "libcudart.so.12", "libcudart.so"),
     "cudaRuntimeGetVersion", "cuda"),
    ("cudnn", ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"), "cudnnGetVersion", "cudnn"),
    ("tensorrt", ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"),
     "getInferLibVersion", "tensorrt"),
)


def _format(kind: str, value: int) -> str:
    if kind == "cuda":  # 12060 -> 12.6
        return f"{value // 1000}.{value % 1000 // 10}"
    if kind == "cudnn":  # 90300 -> 9.3.0 (cuDNN 9); 8906 -> 8.9.6 (cuDNN 8)
        major = value // 10000 if value >= 90000 else value // 1000
        rest = value - major * (10000 if value >= 90000 else 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return f"{value // 10000}.{value % 10000 // 100}.{value % 100}"  # 100300 -> 10.3.0


def _pip_library_dirs() -> list[str]:
    """lib/ folders of the nvidia-* pip packages (what `pip install .[gpu]` brings)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return [d for root in roots for d in glob.glob(f"{root}/*/lib")]


def _load(names: tuple[str, ...], pip_dirs: list[str]) -> tuple[ctypes.CDLL | None, str | None]:
    for name in names:
        for candidate in [name, *(f"{d}/{name}" for d in pip_dirs)]:
            try:
                return ctypes.CDLL(candidate), candidate
            except OSError:
                continue
    return None, None


def library_versions() -> dict[str, dict]:
    """{label: {"version", "path"}} for each library found; {"error"} where none loads."""
    out, pip_dirs = {}, _pip_library_dirs()
    for label, names, function, kind in _LIBRARIES:
        lib, path = _load(names, pip_dirs)
        if lib is None:
            out[label] = {"error": f"not found ({', '.join(names)})"}
            continue
        value = ctypes.c_int(0)
        try:
            fn = getattr(lib, function)
            if kind == "cuda":
                status = fn(ctypes.byref(value))
                version = _format(kind, value.value) if status == 0 else None
            else:
                fn.restype = ctypes.c_size_t if kind == "cudnn" else ctypes.c_int
                version = _format(kind, int(fn()))
        except (AttributeError, OSError) as exc:
            out[label] = {"path": path, "error": str(exc)}
            continue
        out[label] = {"version": version, "path": path}
    return out


def gpus() -> list[dict]:
    """Name, memory and driver of each NVIDIA GPU (nvidia-smi), or the Jetson module."""
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,memory.total,memory.used,driver_version"
        try:
            out = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line]
        found = [{"name": r[0], "memory_mib": _int(r[1]), "used_mib": _int(r[2]),
                  "driver": r[3]} for r in rows if len(r) == 4]
        if found:
            return found
    model = Path("/proc/device-tree/model")
    if model.is_file():  # Jetson: an integrated GPU sharing the module's memory
        release = Path("/etc/nv_tegra_release")
        return [{"name": model.read_text(errors="replace").strip("\0 \n"),
                 "l4t": release.read_text(errors="replace").splitlines()[0][:80]
                 if release.is_file() else None}]
    return []


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def environment() -> dict:
    """Everything doctor says about this machine before it touches a bundle."""
    build = ort.get_build_info() if hasattr(ort, "get_build_info") else None
    return {
        "package_version": __version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "onnxruntime": {"version": ort.__version__, "build": build, "device": ort.get_device(),
                        "installed": installed_runtimes(), "clash": runtime_clash()},
        "available_providers": ort.get_available_providers(),
        "provider_libraries": {name: library_problem(name) or "loads"
                               for name in GPU_PROVIDERS
                               if name in ort.get_available_providers()},
        "gpus": gpus(),
        "libraries": library_versions(),
    }
