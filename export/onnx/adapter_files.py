"""A bundle's adapter files and the outputs recorded for them: onnxruntime's adapter format,
the adapter run as the gateway checks it, and the expected outputs (AdapterEntry's
reference_logits / reference_sha256). Torch-free: `attach` and `add-adapter` use it, and so do
the tests and benchmarks that derive adapter versions on a gateway-only install."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.bank import AdapterBank
from edge.bundle import ADAPTER_DIR, Manifest, atomic_write, read_reference_inputs, rows_sha256
from edge.contract import name_problem
from edge.engine import Engine, load_adapter_file, read_adapter_arrays
from edge.errors import AdapterRejected, EdgeError, ExportError
from edge.providers import ort_message
from export.outputs import shared_mode


def check_adapter_name(name: str) -> None:
    """The gateway's one name rule (edge/contract/names.py), checked before anything is written:
    a name it would refuse is an error naming the flag here."""
    problem = name_problem(name, "adapter")
    if problem:
        raise ExportError(f"--name: {problem} (it becomes an MQTT topic level and a file name "
                          "on the gateway)")


def adapter_file_name(name: str, version: int) -> str:
    return f"{ADAPTER_DIR}/{name}.v{version}.onnx_adapter"


def write_onnx_adapter(path: Path, tensors: dict[str, np.ndarray], version: int) -> None:
    """onnxruntime's native adapter format, written via a temp file then renamed; readable
    as the umask allows (atomic_write's temp file is 0600)."""
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(version)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fmt.export_adapter(str(tmp))
        atomic_write(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    path.chmod(shared_mode())


def run_adapter(engine: Engine, bundle: Path, manifest: Manifest, file: Path,
                x: np.ndarray) -> np.ndarray:
    """Logits (N, num_classes) of x (N, C, L) with the adapter in `file`, run as the gateway
    checks one: a LoraAdapter on a single-slot bundle, bank entry 0 (every row's
    adapter_index 0) on a bank bundle."""
    return run_adapter_features(engine, bundle, manifest, file, x)[0]


def run_adapter_features(engine: Engine, bundle: Path, manifest: Manifest, file: Path,
                         x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """`run_adapter`'s logits and, from the same run, the features (N, D) when the graph
    outputs them."""
    try:
        if not manifest.bank:
            return engine.run_with_features(x, load_adapter_file(file))
        bank = AdapterBank.for_bundle(bundle, manifest)
        bank.load(0, read_adapter_arrays(file))
        return engine.run_with_features(x, feeds=bank.feeds(np.zeros(len(x), np.int64)))
    except EdgeError:
        raise
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise AdapterRejected("onnxruntime cannot run it on the bundle's reference inputs "
                              f"({ort_message(exc)})") from None


def reference_fields(bundle: Path, manifest: Manifest, file: Path, classes: int,
                     engine: Engine | None = None) -> dict:
    """AdapterEntry's reference_logits and reference_sha256 for the adapter in `file`: its
    logits on the bundle's reference rows, run on the CPU as the gateway runs it; {} when
    the bundle has no usable reference inputs (the gateway would read no rows either)."""
    x = read_reference_inputs(bundle, manifest)
    if x is None:
        return {}
    engine = engine or Engine(bundle / manifest.base.file)  # providers: the CPU alone
    logits = run_adapter(engine, bundle, manifest, file, x)
    if not np.isfinite(logits).all():
        raise AdapterRejected("gives non-finite outputs on the bundle's reference inputs")
    return expected_outputs(x, logits, classes)


def expected_outputs(x: np.ndarray, logits: np.ndarray, classes: int) -> dict:
    """The reference fields from logits (N, num_classes) of rows x (N, C, L): the adapter's
    own `classes` columns (the rest pad to the widest head) as float32-exact floats."""
    return {"reference_logits": logits[:, :classes].astype(np.float32).tolist(),
            "reference_sha256": rows_sha256(x)}
