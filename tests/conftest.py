"""Shared fixtures: a private Mosquitto broker, a reference bundle trained on real data, and
runtime configs that point at both; and the rules of the gateway run.

Two runs (`make test`): the full suite in .venv (the workstation: torch, onnx, peft, sktime),
and the gateway's tests in .venv-gateway, which has only what `pip install .[cpu]` brings
plus the test runner, with EDGE_TESTS=gateway set. There:
- the WORKSTATION_ONLY modules are not collected, and every other module must collect;
- the bundles come from tests/data (tests/gateway_data.py), not from training;
- torch and the other workstation packages must be absent, and a test that skips fails,
  unless its reason is one of GATEWAY_SKIPS (the machine, not the venv, lacks something);
- tests marked `gateway` (checks of that venv itself) run; they are deselected elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from gateway_data import HAVE_TORCH, PARTS, SHAPE_KINDS, unpack, write_shapes
from payload_recorder import PayloadRecorder, load_validators

from export.demo.local_broker import BrokerMissing, start_broker, write_runtime_config

GATEWAY = os.environ.get("EDGE_TESTS") == "gateway"
# Modules that need torch, onnx, peft or sktime: the exporter's, training's and the data
# readers' tests, the drift calibration (sktime's data), the GPU tests (onnx), the benchmarks'
# smoke runs (they train) and the check of tests/data against the exporter. Every other
# module is a gateway test.
WORKSTATION_ONLY = [
    "test_adapters.py", "test_benchmarks_smoke.py", "test_cards.py", "test_cli.py", "test_data.py",
    "test_data_tables.py", "test_drift_calibration.py", "test_export.py", "test_export_fixes.py",
    "test_gateway_data.py",
    "test_gpu.py", "test_model_size.py", "test_peft_io.py", "test_pilot.py", "test_pilot_report.py",
    "test_readme_recipe.py", "test_reference_model.py", "test_running_cost.py", "test_train.py",
    "test_input_shapes.py",
    "test_drift_export.py", "test_check_adapters.py", "test_models_catalogue.py",
]
WORKSTATION_PACKAGES = ("torch", "onnx", "peft", "sktime", "safetensors")
GATEWAY_SKIPS = (  # skip reasons that are about the machine, allowed in the gateway run
    "systemd-analyze not found",
    "this onnxruntime build has CUDA",
)
collect_ignore = WORKSTATION_ONLY if GATEWAY else []


def pytest_configure(config) -> None:
    if not GATEWAY:
        if not HAVE_TORCH:
            raise pytest.UsageError("torch is not installed: in a gateway venv, run the "
                                    "gateway's tests with EDGE_TESTS=gateway (as make test "
                                    "does); the full suite needs .venv (pip install -e .[dev])")
        return
    present = [name for name in WORKSTATION_PACKAGES if importlib.util.find_spec(name)]
    if present:
        raise pytest.UsageError(f"EDGE_TESTS=gateway: {', '.join(present)} installed in this "
                                "venv; the gateway run needs a venv with only "
                                "`pip install .[test-gateway]` (make test builds .venv-gateway)")


def pytest_collection_modifyitems(config, items) -> None:
    """Outside the gateway run, deselect the checks of the gateway venv itself."""
    if GATEWAY:
        return
    keep = [item for item in items if item.get_closest_marker("gateway") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In the gateway run, a skipped test fails, unless the machine explains it."""
    report = (yield).get_result()
    if GATEWAY and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not any(allowed in reason for allowed in GATEWAY_SKIPS):
            report.outcome = "failed"
            report.longrepr = (f"EDGE_TESTS=gateway: skipped ({reason}); a gateway test must "
                               "run in the gateway venv (or list the reason in GATEWAY_SKIPS "
                               "in tests/conftest.py when the machine lacks something)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In the gateway run, a module that skips as a whole fails too."""
    report = (yield).get_result()
    if GATEWAY and report.skipped:
        report.outcome = "failed"
        report.longrepr = (f"EDGE_TESTS=gateway: {collector.nodeid} skipped at collection "
                           f"({_skip_reason(report)}); if it needs torch, add it to "
                           "WORKSTATION_ONLY in tests/conftest.py")


def _skip_reason(report) -> str:
    """A skip's longrepr is (path, line, "Skipped: reason")."""
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)


@pytest.fixture(scope="session")
def payload_validators() -> dict:
    """{schema name: jsonschema validator} of docs/schemas/ (tests/payload_recorder.py)."""
    return load_validators()


@pytest.fixture
def mosquitto(tmp_path, request, payload_validators):
    """A fresh broker per test (no retained state leaks between tests). Its log is printed
    at teardown, which pytest shows only for failing tests. A recorder on it checks, at
    teardown, every payload the gateway published against docs/schemas/ (and the test's own
    windows and commands when it is marked `valid_inputs`): a payload that breaks its
    schema fails the test with the topic, the payload and the schema's complaint."""
    try:
        broker = start_broker(tmp_path / "mosquitto")
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    recorder = PayloadRecorder(
        broker.port, inputs=request.node.get_closest_marker("valid_inputs") is not None)
    yield broker
    try:
        problems = recorder.check(payload_validators)
    finally:
        recorder.close()
        broker.stop()
        print(f"--- mosquitto log ({broker.conf}) ---\n{broker.log_text()}")
    if problems:
        pytest.fail(f"{len(problems)} payload(s) break their schema (docs/schemas/):\n"
                    + "\n".join(problems[:20]), pytrace=False)


@pytest.fixture(scope="session")
def basicmotions_bundle(tmp_path_factory) -> Path:
    """A bundle trained for a few seconds on real BasicMotions data: a tiny reference base
    and one LoRA adapter named `line-a` (tests/reference_bundle.py). Trained now where torch
    is installed; the checked-in one, with its bank2, bank4 and static4 siblings, where not."""
    root = tmp_path_factory.mktemp("basicmotions")
    if not HAVE_TORCH:
        return unpack("basicmotions", root) / "bundle"
    from reference_bundle import build_bundle

    return build_bundle(root)


@pytest.fixture(scope="session")
def engine_bundles(tmp_path_factory) -> dict[str, Path]:
    """A reference base and three adapter kinds exported four ways: {"dynamic", "static4",
    "bank", "bank_static4": bundle dir} (tests/adapter_factory.py engine_bundles)."""
    root = tmp_path_factory.mktemp("engine")
    if not HAVE_TORCH:
        unpack("engine", root)
        return {name: root / name for name in PARTS["engine"]}
    from adapter_factory import engine_bundles

    return engine_bundles(root)


@pytest.fixture(scope="session")
def shape_lines(tmp_path_factory) -> dict:
    """{"features", "images": shape_models.Line}: a base pretrained on real scikit-learn
    samples of that shape, a LoRA `line-a`, its bundle and merged model (workstation only)."""
    from shape_models import build_line

    return {kind: build_line(kind, tmp_path_factory.mktemp(kind)) for kind in SHAPE_KINDS}


@pytest.fixture(scope="session")
def shape_bundles(request, tmp_path_factory) -> Path:
    """root/features and root/images (bundles of shape_lines), root/samples/<kind>.npz (held-
    out rows): built now where torch is installed, the checked-in ones where not."""
    root = tmp_path_factory.mktemp("shapes")
    if not HAVE_TORCH:
        return unpack("shapes", root)
    return write_shapes(request.getfixturevalue("shape_lines"), root)


@pytest.fixture(scope="session")
def signing_bundle(tmp_path_factory) -> Path:
    """A tiny base with one untrained LoRA adapter "line7" (tests/adapter_factory.py)."""
    root = tmp_path_factory.mktemp("signing")
    if not HAVE_TORCH:
        return unpack("signing", root) / "bundle"
    from adapter_factory import signing_bundle

    return signing_bundle(root)


@pytest.fixture(scope="session")
def pilot_base(tmp_path_factory) -> Path:
    """A tiny base pretrained on real GunPoint data (tests/pilot_run.py)."""
    from pilot_run import pretrain_tiny_base

    return pretrain_tiny_base(tmp_path_factory.mktemp("pilot_base"))


@pytest.fixture(scope="session")
def pilot_run(pilot_base, tmp_path_factory) -> tuple[Path, dict]:
    """(pilot directory, report) of one short pilot on the ArrowHead line (tests/pilot_run.py)."""
    from pilot_run import run_tiny_pilot

    return run_tiny_pilot(pilot_base, tmp_path_factory.mktemp("pilot"))


@pytest.fixture
def runtime_config(tmp_path, mosquitto, basicmotions_bundle):
    """`runtime_config(lines=..., **sections)` -> a config file for this test's broker."""
    def make(**kwargs) -> Path:
        kwargs.setdefault("lines", {"line-a": {"adapter": "line-a"}, "line-b": {}})
        return write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                    **kwargs)
    return make


@pytest.fixture
def service(runtime_config):
    """`service(**config_kwargs)` -> a started in-process Service; stopped at teardown."""
    from edge.service import Service

    started = []

    def make(**kwargs) -> Service:
        svc = Service(runtime_config(**kwargs))
        started.append(svc)
        assert svc.start(), "service did not connect"
        return svc

    yield make
    for svc in started:
        svc.stop(5)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and two threads on a busy 2-core box spin.
    Nothing to do without torch (the gateway run)."""
    if not HAVE_TORCH:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    """(private, public) Ed25519 signing key files."""
    from export.signing import keygen

    return keygen(out=tmp_path / "keys" / "signing")


@pytest.fixture
def swap_config(runtime_config, keys, tmp_path):
    """A runtime config trusting `keys`, watching tmp_path/inbox; line-a follows the newest
    line-a, line-b is the base, line-c is pinned to line-a v1."""
    def make(**kwargs):
        kwargs.setdefault("lines", {"line-a": {"adapter": "line-a"}, "line-b": {},
                                    "line-c": {"adapter": "line-a", "version": 1}})
        kwargs.setdefault("adapters", {"require_signed": True, "trusted_keys": [str(keys[1])],
                                       "watch_dir": str(tmp_path / "inbox"),
                                       "watch_interval_s": 0.05})
        return runtime_config(**kwargs)
    return make


@pytest.fixture
def started():
    """`started(config, bundle=None)` -> a started Service; every one stopped at teardown."""
    from edge.service import Service

    services: list = []

    def start(config, bundle=None):
        svc = Service(config, bundle_dir=bundle)
        services.append(svc)
        assert svc.start()
        return svc
    yield start
    for svc in services:
        svc.stop()
