"""Execution providers: what the config asks for, what this onnxruntime can give, and why not.

onnxruntime's Python API falls back to the CPU on its own when a GPU provider fails to start
(its libraries are missing, an option is wrong): it prints a line and returns a CPU session.
A gateway bought for its GPU must not quietly run on its CPU, so the engine compares the
providers a session really got with the ones asked for, and this module says why one is
missing and whether the config allows running without it:

    required = true on a provider     its absence stops start-up, naming it and the reason
    device.cpu_fallback = false       no configured accelerator started: stop, don't use CPU
    otherwise                         one warning per missing provider, with the reason
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import io
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from .errors import ProviderError
from .provider_options import CPU, CUDA, TENSORRT

log = logging.getLogger(__name__)

GPU_PROVIDERS = (TENSORRT, CUDA)
# The shared library onnxruntime loads for a provider (in onnxruntime/capi/).
_PROVIDER_LIBRARY = {CUDA: "libonnxruntime_providers_cuda.so",
                     TENSORRT: "libonnxruntime_providers_tensorrt.so"}
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                    "onnxruntime-openvino", "onnxruntime-qnn")
INSTALL_HINT = ("install the GPU runtime: pip install 'edge-adapters[gpu]' on x86-64, "
                "NVIDIA's onnxruntime-gpu wheel on Jetson (docs/JETSON.md)")


@dataclass(frozen=True)
class ProviderRequest:
    """One configured provider: its onnxruntime options (strings) and whether it must run.
    `index` is its place in device.providers, for messages that name the key."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    required: bool = False
    index: int = 0

    @property
    def key(self) -> str:
        return f"device.providers[{self.index}]"


def as_requests(providers: Iterable[ProviderRequest | tuple[str, dict]] | None
                ) -> list[ProviderRequest]:
    """Requests from config objects or plain (name, options) pairs; CPU when none."""
    out = []
    for i, p in enumerate(providers or [(CPU, {})]):
        out.append(p if isinstance(p, ProviderRequest)
                   else ProviderRequest(p[0], dict(p[1]), index=i))
    return out


def installed_runtimes() -> dict[str, str]:
    """The onnxruntime distributions installed here, name -> version."""
    found = {}
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def runtime_clash() -> str | None:
    """Why the installed onnxruntime packages fight each other, or None: two of them own
    the very `onnxruntime` module this process imported (one overwrote the other's files).
    A second one elsewhere on the path (a venv over a system install) is only shadowed."""
    imported = Path(ort.__file__).resolve()
    found = [name for name in installed_runtimes() if _owns(name, imported)]
    if len(found) < 2:
        return None
    names = " and ".join(sorted(found))
    return (f"{names} are installed together; they share the onnxruntime module, so one hides "
            f"the other's providers: pip uninstall -y {' '.join(sorted(found))}, then install "
            "one (docs/JETSON.md)")


def _owns(distribution: str, module_file: Path) -> bool:
    try:
        dist = importlib.metadata.distribution(distribution)
        return Path(dist.locate_file("onnxruntime/__init__.py")).resolve() == module_file
    except (importlib.metadata.PackageNotFoundError, OSError):
        return False


def library_problem(name: str) -> str | None:
    """Why the provider's shared library cannot load here (a missing CUDA, cuDNN or
    TensorRT library, named by the dynamic loader), or None when it loads."""
    library = _PROVIDER_LIBRARY.get(name)
    if library is None:
        return None
    path = Path(ort.__file__).parent / "capi" / library
    if not path.is_file():
        return f"this onnxruntime build has no {library}"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return f"{library} cannot load: {str(exc).replace(str(path) + ': ', '')}"
    return None


def why_missing(name: str, failures: dict[str, str] | None = None) -> str:
    """One clause saying why provider `name` did not start."""
    if name not in ort.get_available_providers():
        clash = runtime_clash()
        if clash:
            return clash
        runtimes = ", ".join(f"{n} {v}" for n, v in installed_runtimes().items()) or "none"
        hint = f"; {INSTALL_HINT}" if name in GPU_PROVIDERS else ""
        return f"this onnxruntime build does not have it (installed: {runtimes}){hint}"
    problem = library_problem(name)
    if problem:
        return f"{problem} (install the CUDA, cuDNN and TensorRT versions this onnxruntime " \
               "was built for; `edge-runtime doctor` lists what it finds)"
    if failures and name in failures:
        return f"it failed to start: {failures[name]}"
    return "onnxruntime did not start it (its log lines above say why)"


def check_started(requests: list[ProviderRequest], started: list[str], cpu_fallback: bool,
                  failures: dict[str, str] | None = None) -> list[str]:
    """Enforce the config's rules on the providers a session really got; the warnings for
    missing optional ones. ProviderError when a required one, or every accelerator, is
    missing and the config does not allow the CPU instead."""
    missing = [r for r in requests if r.name not in started]
    for request in missing:
        if request.required:
            raise ProviderError(f"{request.key}: {request.name} is required (required = true) "
                                f"but {why_missing(request.name, failures)}")
    wanted = [r for r in requests if r.name != CPU]
    if wanted and not any(r.name in started for r in wanted) and not cpu_fallback:
        first = wanted[0]
        raise ProviderError(f"{first.key}: {first.name}: {why_missing(first.name, failures)}; "
                            "refusing to run on the CPU instead (set device.cpu_fallback = true "
                            "to allow it)")
    return [f"{r.key}: {r.name} is not used: {why_missing(r.name, failures)}" for r in missing
            if r.name != CPU]


def preload_gpu_libraries(requests: list[ProviderRequest]) -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (what `.[gpu]` installs) before a
    GPU session, as onnxruntime's docs advise; system installs (JetPack) need nothing."""
    if not any(r.name in GPU_PROVIDERS for r in requests):
        return
    if not hasattr(ort, "preload_dlls") or importlib.util.find_spec("nvidia") is None:
        return
    with contextlib.redirect_stdout(io.StringIO()):  # it prints what it could not find
        try:
            ort.preload_dlls()
        except Exception as exc:  # a broken nvidia package: the session says the rest
            log.debug("onnxruntime.preload_dlls failed: %s", exc)


@contextlib.contextmanager
def capture_fallback() -> Iterator[dict[str, str]]:
    """While a session is created: the reason onnxruntime's Python API printed for each
    provider it dropped when it fell back ("EP Error <reason> when using [...]")."""
    buffer = io.StringIO()
    failures: dict[str, str] = {}
    with contextlib.redirect_stdout(buffer):
        yield failures
    text = buffer.getvalue()
    for match in re.finditer(r"EP Error (.*?) when using \[(.*?)\]", text, re.S):
        reason = ort_message(match.group(1))
        for name in re.findall(r"'(\w+ExecutionProvider)'", match.group(2)):
            failures.setdefault(name, reason)


_SOURCE = re.compile(r"/\S*?onnxruntime_src/\S*?:\d+\s+"
                     r"(?:[\w:~<>*&, ]+\([^()]*\)(?:\s*const)?\s*)?")


def ort_message(text: str | BaseException, limit: int = 300) -> str:
    """onnxruntime's error text without its C++ source paths and signatures, on one line."""
    text = _SOURCE.sub(" ", str(text))
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tensorrt_cache_options(options: dict[str, str], cache_dir: Path,
                           profiles: dict[str, str] | None = None) -> dict[str, str]:
    """TensorRT options with engines and the timing cache kept in `cache_dir` (the gateway's
    state), and the batch profile, unless the config sets them itself."""
    out = dict(options)
    out.setdefault("trt_engine_cache_enable", "True")
    out.setdefault("trt_engine_cache_path", str(cache_dir))
    out.setdefault("trt_timing_cache_enable", "True")
    out.setdefault("trt_timing_cache_path", str(cache_dir))
    for key, value in (profiles or {}).items():
        out.setdefault(key, value)
    return out


def tensorrt_profiles(dynamic_inputs: dict[str, list[int]], max_batch: int) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes for inputs whose first axis is the batch: one
    engine for every batch of 1..max_batch, never a rebuild when a bigger batch arrives."""
    def shapes(batch: int) -> str:
        return ",".join(f"{name}:" + "x".join(str(d) for d in [batch, *rest])
                        for name, rest in dynamic_inputs.items())

    if not dynamic_inputs:
        return {}
    return {"trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(max_batch),
            "trt_profile_max_shapes": shapes(max_batch)}


def option_named(message: str, requests: list[ProviderRequest]) -> str | None:
    """The config key of a provider option that an onnxruntime error message names."""
    for request in requests:
        for option in request.options:
            if re.search(rf"\b{re.escape(option)}\b", message):
                return f"{request.key}.options.{option}"
    return None


def out_of_memory(message: str) -> bool:
    return bool(re.search(r"out of memory|Failed to allocate|CUDNN_STATUS_ALLOC_FAILED|"
                          r"cudaErrorMemoryAllocation", message, re.I))
