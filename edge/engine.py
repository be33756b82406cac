"""One onnxruntime session: provider fallback, adapter activation, batched runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .bundle import INDEX_INPUT
from .errors import AdapterError, ConfigError, IncompatibleBundle

log = logging.getLogger(__name__)


def session_options(threads: int = 0) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # Slot inputs carry initializers; without this onnxruntime warns once per slot.
    opts.log_severity_level = 3
    # Spinning worker threads slow the next session and the MQTT thread on 2 cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def pick_providers(wanted: list[tuple[str, dict]] | None) -> list[tuple[str, dict]]:
    """Keep the wanted providers that this onnxruntime build has, in order; CPU last."""
    available = ort.get_available_providers()
    chosen = []
    for name, options in wanted or [("CPUExecutionProvider", {})]:
        if name in available:
            chosen.append((name, options))
        else:
            log.warning("execution provider %s is not available here (have: %s); falling back",
                        name, ", ".join(available))
    if not any(name == "CPUExecutionProvider" for name, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


class Engine:
    """A session on `model_path` with its data input and output resolved.

    `run(x)` takes x (N, C, L) float32 and returns the first output (N, K); an active adapter
    overrides the slot inputs through `RunOptions.add_active_adapter`.
    """

    def __init__(self, model_path: str | Path, *, providers: list[tuple[str, dict]] | None = None,
                 threads: int = 0) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise IncompatibleBundle(f"model file {path} does not exist")
        chosen = pick_providers(providers)
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads),
                providers=[n for n, _ in chosen], provider_options=[o for _, o in chosen])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise IncompatibleBundle(f"{path}: onnxruntime cannot load it ({exc})") from None
        self.path = path
        self.providers = self.session.get_providers()
        inputs = [i for i in self.session.get_inputs() if i.name != INDEX_INPUT]
        self.banked = len(inputs) < len(self.session.get_inputs())
        if len(inputs) != 1:
            raise ConfigError(f"{path}: expected one data input, found "
                              f"{[i.name for i in inputs]}")
        self.input = inputs[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.slot_names = {i.name for i in self.session.get_overridable_initializers()}

    def run(self, x: np.ndarray, adapter: ort.LoraAdapter | None = None,
            feeds: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits for a batch; `feeds` override slot inputs directly (benchmarks, checks)."""
        options = None
        if adapter is not None:
            options = ort.RunOptions()
            options.add_active_adapter(adapter)
        inputs = {self.input.name: x, **(feeds or {})}
        return self.session.run(self.output_names[:1], inputs, options)[0]


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
        raise AdapterError(f"{path}: not a valid .onnx_adapter file ({exc})") from None
    return adapter


def read_adapter_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of an `.onnx_adapter` as numpy arrays (for checks and inspection)."""
    try:
        fmt = ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:
        raise AdapterError(f"{path}: not a valid .onnx_adapter file ({exc})") from None
    # OrtValue.numpy() views memory that `fmt` owns: copy before `fmt` is freed.
    try:
        return {name: np.array(value.numpy(), copy=True)
                for name, value in fmt.get_parameters().items()}
    except Exception as exc:  # a tensor type numpy lacks (bfloat16, ...)
        raise AdapterError(f"{path}: a tensor cannot be read ({exc})") from None
