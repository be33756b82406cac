"""The runtime on what a GPU gateway's config asks for, checked here on the CPU: a
fixed-batch bundle served over MQTT, providers that cannot run stopping the start in one
line, a bundle exported for other settings than the config says, the TensorRT engine cache,
what status and stats say about the provider, and `edge-runtime doctor`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from reference_bundle import ADAPTER_NAME, build_static_bundle, sample_windows
from test_runtime import Collector, Publisher, exactly_once, offline

from edge.cli import main
from edge.config import load_config
from edge.engine_config import check_cache_writable, engine_cache_dir, provider_requests
from edge.errors import ConfigError
from edge.providers import CUDA, TENSORRT, ProviderRequest
from edge.service import Service

GPU_MISSING = CUDA not in ort.get_available_providers()
CUDA_REQUIRED = [{"name": CUDA, "required": True, "options": {"device_id": 0}},
                 {"name": "CPUExecutionProvider"}]


@pytest.fixture(scope="module")
def static_bundle(basicmotions_bundle) -> Path:
    """The reference base and adapter exported with a fixed batch of 4 (as export.batch = 4
    in a firmware config does, like the Jetson's 8)."""
    return build_static_bundle(basicmotions_bundle.parent, 4)


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_static_batch_bundle_answers_any_batch_over_mqtt(runtime_config, mosquitto,
                                                         basicmotions_bundle, static_bundle):
    """export.batch = 4, batching.max_batch = 16: partial batches are padded, larger ones
    split, and every window's scores equal the dynamic bundle's run."""
    x, _, _ = sample_windows(11)
    collector = Collector(mosquitto.port)
    svc = Service(runtime_config(batching={"max_batch": 16, "max_wait_ms": 50}),
                  bundle_dir=static_bundle)
    try:
        assert svc.start() and svc.engine.static_batch == 4
        pub = Publisher(mosquitto.port)
        for i in range(len(x)):
            line = "line-a" if i % 2 == 0 else "line-b"
            pub.json(f"factory/{line}/sensors/s1", f"w{i}", x[i])
        pub.close()
        assert collector.wait(lambda c: len(c.answers()) >= len(x))
    finally:
        svc.stop(5)
        collector.close()
    assert collector.docs("/errors") == []
    results = collector.docs("/inference")
    exactly_once(results, [f"w{i}" for i in range(len(x))])
    want = {"line-a": offline(basicmotions_bundle, x, ADAPTER_NAME)[0],
            "line-b": offline(basicmotions_bundle, x, None)[0]}
    for doc in results:
        row = int(doc["id"][1:])
        np.testing.assert_allclose(list(doc["scores"].values()), want[doc["line"]][row],
                                   atol=1e-4)


def test_status_and_stats_name_the_provider_the_model_runs_on(runtime_config, mosquitto):
    collector = Collector(mosquitto.port)
    svc = Service(runtime_config(topics={"stats_interval_s": 0.2}))
    try:
        assert svc.start()
        assert collector.wait(lambda c: c.docs("/stats") and c.status())
    finally:
        svc.stop(5)
        collector.close()
    online = next(d for d in collector.status() if d["state"] == "online")
    assert online["provider"] == "CPUExecutionProvider"
    assert online["providers"] == ["CPUExecutionProvider"]
    assert online["adapters_on_device"] is False and online["precision"] == "fp32"
    assert list(online["placement"]) == ["CPUExecutionProvider"]  # every node, counted
    assert online["placement"]["CPUExecutionProvider"] > 10
    assert collector.docs("/stats")[0]["provider"] == "CPUExecutionProvider"


@pytest.mark.skipif(not GPU_MISSING, reason="this onnxruntime build has CUDA")
@pytest.mark.parametrize("device, phrase", [
    ({"providers": CUDA_REQUIRED}, "device.providers[0]: CUDAExecutionProvider is required "
     "(required = true) but this onnxruntime build does not have it"),
    ({"providers": [{"name": CUDA}]},
     "refusing to run on the CPU instead (set device.cpu_fallback = true"),
])
def test_a_provider_that_cannot_run_stops_the_start_in_one_line(runtime_config, device,
                                                               phrase):
    result = CliRunner().invoke(main, ["run", "--config", str(runtime_config(device=device))])
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert phrase in line and "pip install 'edge-adapters[gpu]'" in line


@pytest.mark.skipif(not GPU_MISSING, reason="this onnxruntime build has CUDA")
def test_cpu_fallback_allowed_starts_and_says_so(runtime_config, mosquitto, caplog):
    svc = Service(runtime_config(device={"providers": [{"name": CUDA}],
                                         "cpu_fallback": True}))
    svc.stop(2)  # never started: releases the state lock and the outbox
    assert svc.engine.provider == "CPUExecutionProvider"
    assert "CUDAExecutionProvider is not used: this onnxruntime build does not have it" in \
        caplog.text


@pytest.mark.parametrize("export, phrase", [
    ({"precision": "fp16"}, "export.precision is fp16, but {bundle} was exported as fp32"),
    ({"batch": 8}, "export.batch is 8, but {bundle} was exported with batch dynamic"),
])
def test_a_bundle_for_other_settings_is_refused_in_one_line(runtime_config,
                                                            basicmotions_bundle, export, phrase):
    result = CliRunner().invoke(main, ["run", "--config", str(runtime_config(export=export))])
    assert result.exit_code == 5, result.output
    line = error_line(result)
    assert phrase.format(bundle=basicmotions_bundle) in line and "--target" in line


def test_tensorrt_gets_its_engine_cache_and_profiles(runtime_config, basicmotions_bundle):
    from edge.bundle import read_manifest

    cfg = load_config(runtime_config(device={"providers": [{"name": TENSORRT},
                                                           {"name": "CPUExecutionProvider"}]},
                                     batching={"max_batch": 12}))
    options = provider_requests(cfg, read_manifest(basicmotions_bundle))[0].options
    assert options["trt_engine_cache_path"] == str(cfg.device.state_dir / "trt-cache")
    assert options["trt_timing_cache_path"] == options["trt_engine_cache_path"]
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert options["trt_profile_max_shapes"] == "x:12x6x100"
    assert options["trt_profile_min_shapes"] == "x:1x6x100"


def test_an_unwritable_engine_cache_stops_the_start(runtime_config, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    cfg = load_config(runtime_config(device={"engine_cache_dir": str(blocker / "trt"),
                                             "providers": [{"name": TENSORRT}]}))
    requests = [ProviderRequest(TENSORRT, {"trt_engine_cache_path": str(engine_cache_dir(cfg))})]
    with pytest.raises(ConfigError, match=r"device.engine_cache_dir: .*not-a-dir/trt': the "
                                          r"TensorRT engine cache is not writable"):
        check_cache_writable(cfg, requests, available=[TENSORRT])


# -- doctor --------------------------------------------------------------------------------

def test_doctor_checks_every_held_adapter_on_each_provider(runtime_config, basicmotions_bundle):
    config = runtime_config()
    result = CliRunner().invoke(main, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["problems"] == []
    env = report["environment"]
    assert env["onnxruntime"]["version"] == ort.__version__
    assert "CPUExecutionProvider" in env["available_providers"]
    assert set(env["libraries"]) == {"cuda_driver", "cuda_runtime", "cudnn", "tensorrt"}
    bundle = report["bundle"]
    assert bundle["starts"] and bundle["adapters"] == [f"{ADAPTER_NAME} v1"]
    cpu = bundle["providers"][0]
    assert cpu["provider"] == "CPUExecutionProvider" and cpu["status"] == "ok"
    assert set(cpu["parity"]) == {"base", f"{ADAPTER_NAME} v1"}
    assert max(cpu["parity"].values()) <= cpu["atol"]
    assert {"batch_1", "batch_16"} <= set(cpu["latency_ms"])
    assert list(cpu["placement"]) == ["CPUExecutionProvider"]
    assert {"MatMul", "Softmax"} <= set(cpu["placement"]["CPUExecutionProvider"])
    text = CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert text.exit_code == 0 and text.output.splitlines()[-1] == "ok"
    assert any(ln.startswith("  CPUExecutionProvider: ok, warm-up") for ln in
               text.output.splitlines())


@pytest.mark.skipif(not GPU_MISSING, reason="this onnxruntime build has CUDA")
def test_doctor_fails_when_the_service_would_not_start(runtime_config):
    config = runtime_config(device={"providers": CUDA_REQUIRED})
    result = CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "  CUDAExecutionProvider: missing: this onnxruntime build does not have it" in \
        "\n".join(lines)
    assert any(ln.startswith("problem: the service would not start: device.providers[0]: "
                             "CUDAExecutionProvider is required") for ln in lines)


def test_doctor_reports_a_tampered_held_adapter(runtime_config, basicmotions_bundle, tmp_path):
    """An accepted adapter whose file changed on disk is a problem, not a silent skip."""
    import shutil

    config = runtime_config()
    held = load_config(config).device.state_dir / "adapters"
    held.mkdir(parents=True)
    entry = json.loads((basicmotions_bundle / "manifest.json").read_text())["adapters"][0]
    shutil.copy(basicmotions_bundle / entry["file"], held / "line-a.v2.onnx_adapter")
    (held / "line-a.v2.json").write_text(json.dumps(
        {**entry, "version": 2, "file": "line-a.v2.onnx_adapter", "sha256": "0" * 64}))
    result = CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    assert "problem: not holding line-a.v2.json: sha256 differs from its header" in \
        result.output
