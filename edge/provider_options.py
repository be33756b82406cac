"""The provider options of onnxruntime's CPU, CUDA and TensorRT execution providers, checked.

    check_options("TensorrtExecutionProvider", {"trt_fp16_enabel": True})
    -> [("trt_fp16_enabel", "unknown option for TensorrtExecutionProvider; did you mean ...")]
    ort_option_value("TensorrtExecutionProvider", "trt_fp16_enable", True) -> "True"

`OPTIONS` maps a provider to its table: option name -> `Option` (kind, one-line description).
The tables follow onnxruntime 1.31/1.32 (checked against the onnxruntime-gpu 1.31.1 wheel):
- CUDA: the names `CUDAExecutionProviderInfo::FromProviderOptions` parses in
  onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc, their types from
  cuda_provider_options.h, and the CUDA-ExecutionProvider page on onnxruntime.ai.
- TensorRT: the names the Python binding itself parses (`CreateExecutionProviderFactoryInstance`
  in onnxruntime/python/onnxruntime_pybind_state.cc; any other name is "Invalid TensorRT EP
  option"), cross-checked with tensorrt_execution_provider_info.cc and the
  TensorRT-ExecutionProvider page on onnxruntime.ai.
- CPU: none. The Python binding builds the CPU provider from the session options alone and
  ignores whatever provider options it is given.
Providers without a table (OpenVINO, ...) are not checked. Options that only make sense from
code (stream and allocator pointers, in-memory models) or that the Python binding rejects are
named in `NOT_FROM_CONFIG` with the reason.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["bool", "int", "float", "str", "path", "list", "enum"]


@dataclass(frozen=True)
class Option:
    """One provider option: what kind of value it takes and what it does."""

    kind: Kind
    help: str
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] = ()


def _bool(help: str) -> Option:
    return Option("bool", help)


def _int(help: str, min: int | None = 0, max: int | None = None) -> Option:
    return Option("int", help, min=min, max=max)


def _str(help: str) -> Option:
    return Option("str", help)


def _path(help: str) -> Option:
    return Option("path", help)


def _list(help: str) -> Option:
    return Option("list", help)


def _enum(help: str, *choices: str) -> Option:
    return Option("enum", help, choices=choices)


CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

CUDA_OPTIONS = {
    "device_id": _int("GPU ordinal"),
    "gpu_mem_limit": _int("size limit of the device memory arena, bytes", min=1),
    "arena_extend_strategy": _enum("how the arena grows", "kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": _enum("how cuDNN picks convolution kernels",
                                    "EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "do_copy_in_default_stream": _bool("copy on the compute stream (false may race)"),
    "cudnn_conv_use_max_workspace": _bool("let cuDNN's algorithm search use its largest "
                                          "workspace"),
    "cudnn_conv1d_pad_to_nc1d": _bool("pad Conv1D input [N,C,D] to [N,C,1,D] instead of "
                                      "[N,C,D,1]"),
    "enable_cuda_graph": _bool("capture the model in a CUDA graph and replay it "
                               "(fixed shapes, IOBinding)"),
    "enable_cudnn": _bool("use cuDNN; false forces native CUDA kernels where there are some"),
    "tunable_op_enable": _bool("use TunableOp kernels"),
    "tunable_op_tuning_enable": _bool("let TunableOp tune at run time"),
    "tunable_op_max_tuning_duration_ms": _int("TunableOp tuning time limit per op, ms "
                                              "(0 = none)"),
    "enable_skip_layer_norm_strict_mode": _bool("SkipLayerNormalization in strict (more "
                                                "accurate, slower) mode"),
    "prefer_nhwc": _bool("prefer NHWC kernels"),
    "use_ep_level_unified_stream": _bool("one stream for the whole provider"),
    "use_tf32": _bool("allow TF32 math on Ampere and later"),
    "sdpa_kernel": _int("attention kernel bitmask (0 = onnxruntime's choice)"),
    "fuse_conv_bias": _bool("fuse Conv and bias with cuDNN frontend (JIT compiles)"),
}

TENSORRT_OPTIONS = {
    "device_id": _int("GPU ordinal"),
    "trt_max_partition_iterations": _int("most partitioning iterations before falling back "
                                         "to other providers", min=1),
    "trt_min_subgraph_size": _int("smallest subgraph given to TensorRT, nodes", min=1),
    "trt_max_workspace_size": _int("TensorRT builder workspace limit, bytes (0 = TensorRT's "
                                   "default)"),
    "trt_fp16_enable": _bool("allow fp16 kernels"),
    "trt_bf16_enable": _bool("allow bf16 kernels"),
    "trt_int8_enable": _bool("allow int8 kernels (needs a calibration table or a QDQ model)"),
    "trt_int8_calibration_table_name": _str("int8 calibration table file name"),
    "trt_int8_use_native_calibration_table": _bool("the calibration table is TensorRT's own "
                                                   "format"),
    "trt_dla_enable": _bool("run on the DLA (Jetson) where possible"),
    "trt_dla_core": _int("DLA core to use"),
    "trt_dump_subgraphs": _bool("write the subgraphs given to TensorRT as ONNX files"),
    "trt_engine_cache_enable": _bool("keep built engines on disk"),
    "trt_engine_cache_path": _path("directory of cached engines"),
    "trt_engine_cache_prefix": _str("file name prefix of cached engines"),
    "trt_weight_stripped_engine_enable": _bool("cache engines without weights (refit from "
                                               "the model)"),
    "trt_onnx_model_folder_path": _path("folder of the ONNX model that refits a "
                                        "weight-stripped engine"),
    "trt_engine_decryption_enable": _bool("cached engines are encrypted"),
    "trt_engine_decryption_lib_path": _path("shared library that decrypts cached engines"),
    "trt_force_sequential_engine_build": _bool("build one engine at a time"),
    "trt_context_memory_sharing_enable": _bool("share execution context memory between "
                                               "engines"),
    "trt_layer_norm_fp32_fallback": _bool("keep LayerNorm in fp32 under fp16"),
    "trt_timing_cache_enable": _bool("keep TensorRT's timing cache on disk"),
    "trt_timing_cache_path": _path("directory of the timing cache"),
    "trt_force_timing_cache": _bool("use a timing cache built on another GPU model"),
    "trt_detailed_build_log": _bool("log engine build details"),
    "trt_build_heuristics_enable": _bool("build engines with tactic heuristics (faster "
                                         "builds)"),
    "trt_sparsity_enable": _bool("allow sparse weight kernels"),
    "trt_builder_optimization_level": _int("builder optimization level (higher builds "
                                           "slower, may run faster)", max=5),
    "trt_auxiliary_streams": _int("auxiliary streams per engine (-1 = TensorRT's heuristic)",
                                  min=-1),
    "trt_tactic_sources": _str("tactic sources, e.g. \"-CUDNN,+CUBLAS\""),
    "trt_extra_plugin_lib_paths": _str("extra TensorRT plugin libraries, ';'-separated"),
    "trt_profile_min_shapes": _str("smallest input shapes, \"input:1x3x224x224,...\""),
    "trt_profile_max_shapes": _str("largest input shapes, \"input:8x3x224x224,...\""),
    "trt_profile_opt_shapes": _str("input shapes to optimize for, \"input:4x3x224x224,...\""),
    "trt_cuda_graph_enable": _bool("capture engines in CUDA graphs"),
    "trt_dump_ep_context_model": _bool("write an EP context model (the engine wrapped in "
                                       "ONNX)"),
    "trt_ep_context_file_path": _path("where the EP context model and engine go"),
    "trt_ep_context_embed_mode": _int("0: the context model names the engine file; 1: it "
                                      "embeds the engine", max=1),
    "trt_engine_hw_compatible": _bool("build engines that run on every Ampere-or-later GPU"),
    "trt_op_types_to_exclude": _list("ONNX op types never given to TensorRT, comma-separated "
                                     "(\"\" = none)"),
    "trt_preview_features": _list("TensorRT preview features to enable, comma-separated"),
}

OPTIONS: dict[str, dict[str, Option]] = {CPU: {}, CUDA: CUDA_OPTIONS, TENSORRT: TENSORRT_OPTIONS}

_POINTER = "a stream or allocator pointer, which only code can pass"
_C_API_ONLY = "onnxruntime's Python binding rejects it (C/C++ API only)"
NOT_FROM_CONFIG: dict[str, dict[str, str]] = {
    CUDA: {name: _POINTER for name in ("user_compute_stream", "has_user_compute_stream",
                                       "gpu_external_alloc", "gpu_external_free",
                                       "gpu_external_empty_cache")},
    TENSORRT: {"user_compute_stream": _POINTER, "has_user_compute_stream": _C_API_ONLY,
               "trt_load_user_initializer": _C_API_ONLY,
               **{name: _C_API_ONLY for name in (
                   "trt_onnx_bytestream", "trt_onnx_bytestream_size",
                   "trt_external_data_bytestream", "trt_external_data_bytestream_size")}},
}

_TRUE, _FALSE = ("True", "true", "1"), ("False", "false", "0")
_INT = re.compile(r"-?[0-9]+")


def check_options(provider: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(option name, message) for each problem; [] for a provider without a table."""
    table = OPTIONS.get(provider)
    if table is None:
        return []
    problems = []
    for name, value in options.items():
        message = _check_one(provider, table, name, value)
        if message:
            problems.append((name, message))
    return problems


def ort_option_value(provider: str, name: str, value: Any) -> str:
    """The string onnxruntime wants for a (checked) TOML value.

    Booleans become "True"/"False": the one spelling every parser takes. Verified against
    onnxruntime-gpu 1.31.1 (its CUDA and TensorRT libraries loaded over stub CUDA/TensorRT
    libraries, since this machine has none): the Python binding's TensorRT parser takes
    "True"/"true"/"False"/"false" and rejects "1" and "maybe" ("should be 'True' or
    'False'"); the CUDA provider's parser (parse_string.h) takes "0"/"1" and those four and
    rejects "maybe" ("Failed to parse value").
    """
    option = OPTIONS.get(provider, {}).get(name)
    if option is not None and option.kind == "bool":
        return "True" if _as_bool(value) else "False"
    if option is not None and option.kind == "int":
        return str(int(value))
    return str(value)


def _check_one(provider: str, table: dict[str, Option], name: str, value: Any) -> str | None:
    reason = NOT_FROM_CONFIG.get(provider, {}).get(name)
    if reason:
        return f"not for a config file: {reason}"
    option = table.get(name)
    if option is None:
        return _unknown(provider, table, name)
    return _check_value(option, value)


def _unknown(provider: str, table: dict[str, Option], name: str) -> str:
    head = f"unknown option for {provider}; "
    if not table:
        return head + "it takes no provider options (onnxruntime ignores them)"
    near = difflib.get_close_matches(name, table, n=1)
    if near:
        return head + f"did you mean {near[0]}?"
    known = sorted(table)
    return head + f"known: {', '.join(known[:6])}, ... ({len(known)} in all)"


def _check_value(option: Option, value: Any) -> str | None:
    if option.kind == "bool":
        return None if _as_bool(value) is not None else "should be true or false"
    if option.kind == "int":
        return _check_int(option, value)
    if option.kind == "float":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number else "should be a number"
    if option.kind == "enum":
        return None if value in option.choices else "should be one of " + ", ".join(
            option.choices)
    if option.kind == "list":
        return None if isinstance(value, str) else "should be a string: a comma-separated list"
    if isinstance(value, str) and value:
        return None
    return "should be a path (a non-empty string)" if option.kind == "path" \
        else "should be a non-empty string"


def _check_int(option: Option, value: Any) -> str | None:
    number = _as_int(value)
    low, high = option.min, option.max
    in_range = number is not None and (low is None or number >= low) \
        and (high is None or number <= high)
    if in_range:
        return None
    if low is not None and high is not None:
        return f"should be an integer from {low} to {high}"
    return "should be an integer" + (f" >= {low}" if low is not None else "")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if not isinstance(value, (int, str)):
        return None
    text = str(value)
    return True if text in _TRUE else False if text in _FALSE else None


def _as_int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    return None
