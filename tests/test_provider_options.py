"""edge/provider_options.py: onnxruntime provider options are checked by name and by value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.config import load_config
from edge.provider_options import (
    CPU,
    CUDA,
    NOT_FROM_CONFIG,
    OPTIONS,
    TENSORRT,
    check_options,
    ort_option_value,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 gateways
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "firmware_configs").glob("*.toml"))


def shipped_options() -> list[tuple[str, str, str, object]]:
    rows = []
    for path in SHIPPED:
        for provider in tomllib.loads(path.read_text())["device"]["providers"]:
            for name, value in provider.get("options", {}).items():
                rows.append((path.name, provider["name"], name, value))
    return rows


def write(tmp_path: Path, providers: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(f'[device]\nid = "gw-1"\nproviders = [\n{providers}\n]\n')
    return path


def test_the_shipped_configs_set_provider_options():
    assert {(f, p) for f, p, _, _ in shipped_options()} >= {
        ("jetson-orin-nano.toml", TENSORRT), ("x86-cuda.toml", CUDA)}


@pytest.mark.parametrize("file, provider, name, value", shipped_options())
def test_every_shipped_option_passes(file, provider, name, value):
    assert check_options(provider, {name: value}) == []


# provider, option as typed, the option it suggests
TYPOS = [
    (TENSORRT, "trt_fp16_enabel", "trt_fp16_enable"),
    (TENSORRT, "trt_engine_cache_pth", "trt_engine_cache_path"),
    (TENSORRT, "trt_max_workspace", "trt_max_workspace_size"),
    (CUDA, "device_idd", "device_id"),
    (CUDA, "cudnn_conv_algo_serach", "cudnn_conv_algo_search"),
    (CUDA, "arena_extend_strategie", "arena_extend_strategy"),
]


@pytest.mark.parametrize("provider, typo, meant", TYPOS)
def test_a_typo_gets_did_you_mean(provider, typo, meant):
    assert check_options(provider, {typo: True}) == [
        (typo, f"unknown option for {provider}; did you mean {meant}?")]


def test_an_unknown_option_without_a_near_name_lists_known_ones():
    ((name, message),) = check_options(CUDA, {"zzz": 1})
    assert name == "zzz" and message.startswith(f"unknown option for {CUDA}; known: ")
    assert "(18 in all)" in message


def test_the_cpu_provider_takes_no_options():
    assert OPTIONS[CPU] == {}
    ((_, message),) = check_options(CPU, {"use_arena": True})
    assert "takes no provider options" in message


# provider, option, bad value, message
WRONG = [
    (TENSORRT, "trt_fp16_enable", "yes please", "should be true or false"),
    (TENSORRT, "trt_fp16_enable", 2, "should be true or false"),
    (TENSORRT, "trt_max_workspace_size", 1.5, "should be an integer >= 0"),
    (TENSORRT, "trt_max_workspace_size", True, "should be an integer >= 0"),
    (TENSORRT, "trt_min_subgraph_size", 0, "should be an integer >= 1"),
    (TENSORRT, "trt_builder_optimization_level", 6, "should be an integer from 0 to 5"),
    (TENSORRT, "trt_ep_context_embed_mode", 2, "should be an integer from 0 to 1"),
    (TENSORRT, "trt_auxiliary_streams", -2, "should be an integer >= -1"),
    (TENSORRT, "trt_engine_cache_path", "", "should be a path (a non-empty string)"),
    (TENSORRT, "trt_engine_cache_path", 1, "should be a path (a non-empty string)"),
    (TENSORRT, "trt_tactic_sources", "", "should be a non-empty string"),
    (TENSORRT, "trt_op_types_to_exclude", 0, "should be a string: a comma-separated list"),
    (CUDA, "device_id", -1, "should be an integer >= 0"),
    (CUDA, "device_id", "gpu0", "should be an integer >= 0"),
    (CUDA, "gpu_mem_limit", 0, "should be an integer >= 1"),
    (CUDA, "cudnn_conv_algo_search", "FAST", "should be one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
    (CUDA, "cudnn_conv_algo_search", "heuristic", "should be one of EXHAUSTIVE, HEURISTIC, "
     "DEFAULT"),
    (CUDA, "arena_extend_strategy", 1, "should be one of kNextPowerOfTwo, kSameAsRequested"),
    (CUDA, "user_compute_stream", "0", "not for a config file: a stream or allocator pointer"),
    (TENSORRT, "trt_load_user_initializer", True, "not for a config file: onnxruntime's "
     "Python binding rejects it"),
]


@pytest.mark.parametrize("provider, name, value, message", WRONG)
def test_a_wrong_value_names_what_is_allowed(provider, name, value, message):
    ((bad, said),) = check_options(provider, {name: value})
    assert bad == name and said.startswith(message)


def test_every_problem_of_one_provider_is_reported():
    problems = check_options(TENSORRT, {"trt_fp16_enabel": True, "device_id": -1,
                                        "trt_fp16_enable": "yes please", "trt_dla_core": 0})
    assert [name for name, _ in problems] == ["trt_fp16_enabel", "device_id", "trt_fp16_enable"]


@pytest.mark.parametrize("provider", ["OpenVINOExecutionProvider", "DmlExecutionProvider",
                                      "NoSuchExecutionProvider"])
def test_a_provider_without_a_table_is_not_checked(provider):
    assert check_options(provider, {"device_type": "GPU", "anything": {"at": "all"}}) == []


# provider, option, TOML value, what onnxruntime is given
RENDERED = [
    (TENSORRT, "trt_fp16_enable", True, "True"),
    (TENSORRT, "trt_fp16_enable", False, "False"),
    (TENSORRT, "trt_fp16_enable", 1, "True"),
    (TENSORRT, "trt_fp16_enable", "1", "True"),
    (TENSORRT, "trt_fp16_enable", "false", "False"),
    (CUDA, "do_copy_in_default_stream", 0, "False"),
    (TENSORRT, "trt_max_workspace_size", 1 << 30, "1073741824"),
    (TENSORRT, "device_id", "0", "0"),
    (TENSORRT, "trt_engine_cache_path", "/var/cache/trt", "/var/cache/trt"),
    (TENSORRT, "trt_op_types_to_exclude", "", ""),
    (CUDA, "cudnn_conv_algo_search", "HEURISTIC", "HEURISTIC"),
    ("OpenVINOExecutionProvider", "enable_qdq_optimizer", True, "True"),
    ("OpenVINOExecutionProvider", "num_of_threads", 4, "4"),
]


@pytest.mark.parametrize("provider, name, value, expected", RENDERED)
def test_ort_option_value(provider, name, value, expected):
    assert check_options(provider, {name: value}) == []
    assert ort_option_value(provider, name, value) == expected


SAMPLE = {"bool": True, "int": 1, "float": 0.5, "str": "x", "path": "/x", "list": "NonZero"}


@pytest.mark.parametrize("provider, name", [(p, n) for p in OPTIONS for n in OPTIONS[p]])
def test_every_table_option_takes_a_sample_value(provider, name):
    option = OPTIONS[provider][name]
    value = option.choices[0] if option.kind == "enum" else SAMPLE[option.kind]
    assert option.help and "\n" not in option.help
    assert check_options(provider, {name: value}) == []
    assert isinstance(ort_option_value(provider, name, value), str)


def test_code_only_options_are_not_in_the_tables():
    for provider, names in NOT_FROM_CONFIG.items():
        assert not set(names) & set(OPTIONS[provider]), provider


def test_check_config_prints_the_key_path_and_exits_2(tmp_path):
    path = write(tmp_path, '{ name = "TensorrtExecutionProvider", '
                           'options = { trt_fp16_enabel = true } },')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{path}: device.providers[0].options.trt_fp16_enabel: True: unknown option for "
        "TensorrtExecutionProvider; did you mean trt_fp16_enable?"]


def test_check_config_prints_one_line_per_bad_option(tmp_path):
    path = write(tmp_path, '{ name = "CUDAExecutionProvider", options = { device_id = -1, '
                           'cudnn_conv_algo_search = "FAST" } },')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{path}: device.providers[0].options.device_id: -1: should be an integer >= 0",
        f"{path}: device.providers[0].options.cudnn_conv_algo_search: 'FAST': should be one "
        "of EXHAUSTIVE, HEURISTIC, DEFAULT"]


def test_good_options_reach_onnxruntime_as_strings(tmp_path):
    path = write(tmp_path, '{ name = "TensorrtExecutionProvider", options = { device_id = 0, '
                           'trt_fp16_enable = true, trt_engine_cache_path = "trt-cache" } },')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert (result.exit_code, result.output) == (0, "ok\n")
    ((name, options),) = load_config(path).device.ort_providers()
    assert options == {"device_id": "0", "trt_fp16_enable": "True",
                       "trt_engine_cache_path": str(tmp_path / "trt-cache")}
