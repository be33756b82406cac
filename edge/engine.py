"""One onnxruntime session: providers checked, adapter slots, fixed batches, device binding.

Two ways to give a run its adapter's slot tensors:
    host   `ort.LoraAdapter` (memory-mapped `.onnx_adapter`) through RunOptions: the fastest
           on the CPU; on a GPU onnxruntime copies the tensors to the device on every run.
    bound  `DeviceSlots`: the tensors uploaded once as OrtValues on the session's device and
           bound with IOBinding; a swap binds other OrtValues, so no weights move per run and
           no session or TensorRT engine is rebuilt (slot shapes never change).
`bind="auto"` picks bound when the session's first provider is CUDA or TensorRT.

A bundle exported with a fixed batch B (export.batch = B) takes exactly B rows per run:
`run` splits a larger batch into runs of B and pads the last one, returning the real rows.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import onnxruntime as ort

from .bundle import INDEX_INPUT
from .drift.features import FEATURES_OUTPUT
from .errors import AdapterError, ConfigError, IncompatibleBundle, ProviderError
from .placement import profiling_options, read_placement
from .providers import (
    CPU,
    GPU_PROVIDERS,
    TENSORRT,
    ProviderRequest,
    as_requests,
    capture_fallback,
    check_started,
    library_problem,
    option_named,
    ort_message,
    out_of_memory,
    preload_gpu_libraries,
)

log = logging.getLogger(__name__)

Bind = Literal["auto", "on", "off"]


def session_options(threads: int = 0) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # Slot inputs carry initializers; without this onnxruntime warns once per slot.
    opts.log_severity_level = 3
    # Spinning worker threads slow the next session and the MQTT thread on 2 cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


@dataclass(frozen=True)
class DeviceSlots:
    """Slot tensors resident where the session computes: name -> OrtValue. `keep` holds
    the host arrays a CPU OrtValue shares its memory with."""

    values: Mapping[str, ort.OrtValue]
    nbytes: int
    keep: tuple = ()


class Engine:
    """A session on `model_path` with its data input and output resolved.

    `run(x)` takes x (N, C, L) float32 and returns the first output (N, K).
    `providers`: ProviderRequests or (name, options) pairs, most preferred first; the
    session's real providers are checked against them (edge/providers.py).
    """

    def __init__(self, model_path: str | Path, *,
                 providers: Iterable[ProviderRequest | tuple[str, dict]] | None = None,
                 threads: int = 0, cpu_fallback: bool = True, bind: Bind = "auto",
                 placement: bool = False) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise IncompatibleBundle(f"model file {path} does not exist")
        requests = as_requests(providers)
        opts = session_options(threads)
        self._profile = profiling_options(opts) if placement else None
        try:
            self.session, failures = _open_session(path, requests, opts)
        except BaseException:
            if self._profile is not None:
                shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.path = path
        self.providers = self.session.get_providers()
        self.warnings = check_started(requests, self.providers, cpu_fallback, failures)
        for line in self.warnings:
            log.warning("%s", line)
        self._resolve_io(path)
        self.device_type, self.device_id = _device_of(self.providers[0], requests)
        self.bound = bind == "on" or (bind == "auto" and self.device_type == "cuda")
        self.fp16 = any(r.name == TENSORRT and r.name in self.providers
                        and r.options.get("trt_fp16_enable") == "True" for r in requests)

    def _resolve_io(self, path: Path) -> None:
        inputs = [i for i in self.session.get_inputs() if i.name != INDEX_INPUT]
        self.banked = len(inputs) < len(self.session.get_inputs())
        if len(inputs) != 1:
            raise ConfigError(f"{path}: expected one data input, found "
                              f"{[i.name for i in inputs]}")
        self.input = inputs[0]
        batch = self.input.shape[0]
        self.static_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        # the penultimate features (N, D) beside the logits, for the drift watch
        self.features_output = FEATURES_OUTPUT if FEATURES_OUTPUT in self.output_names[1:] \
            else None
        self.slot_names = {i.name for i in self.session.get_overridable_initializers()}

    def placement(self) -> dict[str, dict[str, int]]:
        """{provider: {op type: nodes}} over the runs so far, for an engine opened with
        `placement=True`; profiling stops here (call it once, after the warm-up)."""
        if self._profile is None:
            return {}
        folder, self._profile = self._profile, None
        return read_placement(self.session, folder)

    @property
    def provider(self) -> str:
        """The provider the model's nodes go to first (nodes it cannot take fall back)."""
        return self.providers[0]

    # -- adapters ---------------------------------------------------------------------------
    def upload(self, arrays: Mapping[str, np.ndarray]) -> DeviceSlots:
        """Slot tensors as OrtValues on the session's device (one copy, now)."""
        keep = tuple(np.ascontiguousarray(a) for a in arrays.values())
        try:
            values = {name: ort.OrtValue.ortvalue_from_numpy(a, self.device_type,
                                                             self.device_id)
                      for name, a in zip(arrays, keep, strict=True)}
        except Exception as exc:  # out of device memory, a device that went away
            raise AdapterError(f"adapter tensors cannot be placed on {self.device_type}:"
                               f"{self.device_id} ({self.failure(exc)})") from None
        return DeviceSlots(values, sum(a.nbytes for a in keep),
                           keep if self.device_type == "cpu" else ())

    def failure(self, exc: BaseException) -> str:
        """onnxruntime's error in one line, with what to do when the device is full."""
        message = ort_message(exc)
        if out_of_memory(message):
            message += (f"; {self.provider} is out of memory: free the GPU (nvidia-smi, "
                        "tegrastats) or lower adapters.memory_budget_mb, gpu_mem_limit, "
                        "trt_max_workspace_size")
        return message

    def load_adapter(self, path: str | Path,
                     arrays: Mapping[str, np.ndarray] | None = None
                     ) -> ort.LoraAdapter | DeviceSlots:
        """An `.onnx_adapter` in the form this engine runs: memory-mapped for the host path,
        uploaded for the bound path (`arrays`: its tensors when already read)."""
        if not self.bound:
            return load_adapter_file(path)
        return self.upload(arrays if arrays is not None else read_adapter_arrays(path))

    def prepare_bank(self, tensors: Mapping[str, np.ndarray]
                     ) -> Mapping[str, np.ndarray] | DeviceSlots:
        """A bank's (K, ...) slot tensors, uploaded once per routing table when bound."""
        return self.upload(tensors) if self.bound else MappingProxyType(dict(tensors))

    # -- runs -------------------------------------------------------------------------------
    def run(self, x: np.ndarray,
            adapter: ort.LoraAdapter | DeviceSlots | Mapping[str, np.ndarray] | None = None,
            feeds: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits (N, K) for x (N, C, L). `adapter`: a LoraAdapter, DeviceSlots, or slot
        arrays by name; `feeds` other inputs (adapter_index (N,) for a bank)."""
        return self._run(x, adapter, feeds, self.output_names[:1])[0]

    def run_with_features(self, x: np.ndarray,
                          adapter: ort.LoraAdapter | DeviceSlots | Mapping[str, np.ndarray]
                          | None = None, feeds: Mapping[str, np.ndarray] | None = None,
                          *, features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, K) and, from the same run, the penultimate features (N, D) when the
        graph outputs them and `features` asks for them (else None); arguments as `run`."""
        if not features or self.features_output is None:
            return self._run(x, adapter, feeds, self.output_names[:1])[0], None
        logits, found = self._run(x, adapter, feeds, [self.output_names[0], self.features_output])
        return logits, found

    def _run(self, x: np.ndarray, adapter, feeds: Mapping[str, np.ndarray] | None,
             names: list[str]) -> list[np.ndarray]:
        feeds = dict(feeds or {})
        if isinstance(adapter, Mapping):
            feeds.update(adapter)
            adapter = None
        size = self.static_batch
        if size is None or len(x) == size:
            return self._run_once(x, adapter, feeds, names)
        parts = []
        for start in range(0, len(x), size):  # the bank index is per row like x; slots are not
            part = {k: _padded(v[start:start + size], size) if k == INDEX_INPUT else v
                    for k, v in feeds.items()}
            outs = self._run_once(_padded(x[start:start + size], size), adapter, part, names)
            parts.append([o[: min(size, len(x) - start)] for o in outs])
        if not parts:
            return [self._empty(name) for name in names]
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def _empty(self, name: str) -> np.ndarray:
        width = self.session.get_outputs()[self.output_names.index(name)].shape[-1]
        return np.zeros((0, width if isinstance(width, int) else 0), np.float32)

    def _run_once(self, x: np.ndarray, adapter: ort.LoraAdapter | DeviceSlots | None,
                  feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        if self.bound or isinstance(adapter, DeviceSlots):
            return self._run_bound(x, adapter, feeds, names)
        options = None
        if adapter is not None:
            options = ort.RunOptions()
            options.add_active_adapter(adapter)
        inputs = {self.input.name: x, **feeds}
        return self.session.run(names, inputs, options)

    def _run_bound(self, x: np.ndarray, slots: DeviceSlots | ort.LoraAdapter | None,
                   feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """IOBinding: per run only x (and the bank index) travel to the device."""
        if isinstance(slots, ort.LoraAdapter):
            raise AdapterError("a memory-mapped adapter cannot run on a bound engine; load it "
                               "with Engine.load_adapter")
        binding = self.session.io_binding()  # one per run: the control thread runs too
        # Host arrays stay referenced until the run ends: a CPU OrtValue borrows their memory.
        host = {self.input.name: np.ascontiguousarray(x, dtype=np.float32)}
        host.update((k, np.ascontiguousarray(v)) for k, v in feeds.items())
        for name, value in host.items():  # as OrtValues: bind_cpu_input refuses slot inputs
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        for name, value in (slots.values.items() if slots is not None else ()):
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _padded(a: np.ndarray, size: int) -> np.ndarray:
    """`a` (n, ...) grown to (size, ...) by repeating its last row: padding rows are real
    inputs, so they can never produce NaN; their outputs are dropped."""
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _device_of(provider: str, requests: list[ProviderRequest]) -> tuple[str, int]:
    """("cuda", device_id) for a GPU provider, ("cpu", 0) otherwise."""
    if provider not in GPU_PROVIDERS:
        return "cpu", 0
    options = next((r.options for r in requests if r.name == provider), {})
    try:
        return "cuda", int(options.get("device_id", 0))
    except ValueError:
        return "cuda", 0


def _open_session(path: Path, requests: list[ProviderRequest],
                  opts: ort.SessionOptions) -> tuple[ort.InferenceSession, dict[str, str]]:
    """The session, and why onnxruntime dropped providers it fell back from. A failure is
    blamed on the bundle only when the CPU alone cannot open it either."""
    available = set(ort.get_available_providers())
    preload_gpu_libraries(requests)
    # A provider whose library cannot load is left out here: onnxruntime's own fallback
    # would retry with the remaining providers *without their options* (device_id...).
    unloadable = {r.name: problem for r in requests if r.name in available
                  for problem in [library_problem(r.name)] if problem}
    chosen = [r for r in requests if r.name in available and r.name not in unloadable]
    chosen = chosen or [ProviderRequest(CPU)]
    if not any(r.name == CPU for r in chosen):
        chosen.append(ProviderRequest(CPU))
    try:
        with capture_fallback() as failures:
            session = ort.InferenceSession(str(path), opts,
                                           providers=[r.name for r in chosen],
                                           provider_options=[r.options for r in chosen])
        # A failing run must raise, not move the session to the CPU for good behind our back.
        session.disable_fallback()
        return session, {**unloadable, **failures}
    except Exception as exc:  # onnxruntime raises its own untyped errors
        message = ort_message(exc)
        if all(r.name == CPU for r in chosen):
            raise IncompatibleBundle(f"{path}: onnxruntime cannot load it ({message})") from None
    try:
        ort.InferenceSession(str(path), session_options(), providers=[CPU])
    except Exception:
        raise IncompatibleBundle(f"{path}: onnxruntime cannot load it ({message})") from None
    raise _provider_failure(chosen, message) from None


def _provider_failure(chosen: list[ProviderRequest], message: str) -> ProviderError:
    gpu = next((r for r in chosen if r.name != CPU), chosen[0])
    key = option_named(message, chosen) or f"{gpu.key}.options"
    if out_of_memory(message):
        return ProviderError(f"{gpu.key}: {gpu.name}: the GPU ran out of memory while loading "
                             f"the model ({message}); free the GPU (nvidia-smi / tegrastats) or "
                             "lower gpu_mem_limit / trt_max_workspace_size")
    return ProviderError(f"{key}: {gpu.name} failed to start with these options ({message}); "
                         "the bundle itself loads on the CPU")


def load_adapter_file(path: str | Path) -> ort.LoraAdapter:
    """Memory-map an `.onnx_adapter`; checks the path first since onnxruntime only says
    'Invalid fd was supplied: -1' for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist")
    adapter = ort.LoraAdapter()
    try:
        adapter.Load(str(path))
    except Exception as exc:
        raise AdapterError(f"{path}: not a valid .onnx_adapter file "
                           f"({ort_message(exc)})") from None
    return adapter


def read_adapter_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of an `.onnx_adapter` as numpy arrays (for checks and inspection)."""
    try:
        fmt = ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:
        raise AdapterError(f"{path}: not a valid .onnx_adapter file "
                           f"({ort_message(exc)})") from None
    # OrtValue.numpy() views memory that `fmt` owns: copy before `fmt` is freed.
    try:
        return {name: np.array(value.numpy(), copy=True)
                for name, value in fmt.get_parameters().items()}
    except Exception as exc:  # a tensor type numpy lacks (bfloat16, ...)
        raise AdapterError(f"{path}: a tensor cannot be read ({ort_message(exc)})") from None
