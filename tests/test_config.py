"""edge/config.py: the shipped firmware configs, and the one-line errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import (
    Config,
    check_config,
    describe_fields,
    load_config,
    resolve_credentials,
)
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "firmware_configs").glob("*.toml"))
MINIMAL = '[device]\nid = "gw-1"\n'


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------------------------

def test_the_three_device_classes_ship():
    names = {p.name for p in SHIPPED}
    assert {"cpu.toml", "x86-cuda.toml", "jetson-orin-nano.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path):
    cfg = load_config(path)
    assert check_config(path) == []
    assert cfg.source == path.resolve()
    assert cfg.adapters.require_signed is True
    assert cfg.broker.password_env and cfg.broker.password_file is None
    assert cfg.topics.lines["press-3"].adapter is not None
    assert cfg.device.providers[-1].name == "CPUExecutionProvider"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_comments_every_key(path: Path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if "=" in stripped and not stripped.startswith(("#", "{", "]")) and i:
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"{path.name}:{i + 1}: no comment above {stripped!r}"


# file, providers in order, threads, export precision, export batch
DEVICE_CLASSES = [
    ("cpu.toml", ["CPUExecutionProvider"], 2, "fp32", "dynamic"),
    ("x86-cuda.toml", ["CUDAExecutionProvider", "CPUExecutionProvider"], 4, "fp32", "dynamic"),
    ("jetson-orin-nano.toml",
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], 2, "fp16", 8),
]


@pytest.mark.parametrize("name, providers, threads, precision, batch", DEVICE_CLASSES)
def test_device_classes(name, providers, threads, precision, batch):
    cfg = load_config(ROOT / "firmware_configs" / name)
    assert [p.name for p in cfg.device.providers] == providers
    assert cfg.device.threads == threads
    assert (cfg.export.precision, cfg.export.batch) == (precision, batch)


def test_jetson_tensorrt_options_reach_onnxruntime_as_strings():
    cfg = load_config(ROOT / "firmware_configs" / "jetson-orin-nano.toml")
    name, options = cfg.device.ort_providers()[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] == "True"
    assert all(isinstance(v, str) for v in options.values())
    assert [p.required for p in cfg.device.providers] == [False, True, False]
    assert cfg.device.engine_cache_dir == Path("/var/lib/edge-runtime/trt-cache")


# --------------------------------------------------------------------------------------------
# Bad configs: one line per problem, naming the file, the key path and what is allowed
# --------------------------------------------------------------------------------------------

# TOML appended to a valid [device] table (or replacing it), key path, text in the message
BAD = [
    ("[broker]\nprot = 1883\n", "broker.prot", "unknown key; allowed keys here: clean_start"),
    ("[broker]\nport = 70000\n", "broker.port", "less than or equal to 65535"),
    ("[broker]\nport = 0\n", "broker.port", "greater than or equal to 1"),
    ("[broker]\nport = 1883.5\n", "broker.port", "integer"),
    ("[broker]\nkeepalive = 4\n", "broker.keepalive", "greater than or equal to 5"),
    ("[broker]\npassword_env = \"MY-PASS\"\n", "broker.password_env", "pattern"),
    ("[broker.tls]\nenabled = \"yes\"\n", "broker.tls.enabled", "valid boolean"),
    ("[broker.tls]\ncert = \"c.pem\"\n", "broker.tls.key", "cert and key go together"),
    ("[broker.tls]\nverify = false\n", "broker.tls.verify", "allowed keys here: ca, cert, "
     "enabled, insecure, key"),
    ("[batching]\nmax_batch = 0\n", "batching.max_batch", "greater than or equal to 1"),
    ("[batching]\nmax_batch = 5000\n", "batching.max_batch", "less than or equal to 4096"),
    ("[batching]\nmax_wait_ms = -1\n", "batching.max_wait_ms", "greater than or equal to 0"),
    ("[topics]\nqos = 3\n", "topics.qos", "0, 1 or 2"),
    ("[topics]\nprefix = \"factory/#\"\n", "topics.prefix", "not a valid topic prefix"),
    ("[topics]\ninputs = [\"{prefix}/a+/x\"]\n", "topics.inputs[0]", "'+' fills a whole level"),
    ("[topics]\ninputs = [\"{prefix}/#/x\"]\n", "topics.inputs[0]", "'#' only the last"),
    ("[topics]\ninputs = [\"{prefx}/+\"]\n", "topics.inputs[0]",
     "the only placeholder is {prefix}"),
    ("[topics]\ninputs = []\n", "topics.inputs", "at least 1 item"),
    ("[topics.lines.\"a/b\"]\nadapter = \"x\"\n", "topics.lines.a/b", "not a valid line name"),
    ("[topics.lines.\"..\"]\nadapter = \"x\"\n", "topics.lines...", "not a valid line name"),
    ("[topics.lines.l1]\nadapter = \"..\"\n", "topics.lines.l1.adapter",
     "not a valid adapter name"),
    ("[topics.lines.press-3]\nversion = 2\n", "topics.lines.press-3.version",
     "a version needs an adapter"),
    ("[topics.lines.press-3]\nadaptor = \"x\"\n", "topics.lines.press-3.adaptor",
     "allowed keys here: adapter, version"),
    ("[limits]\nmax_payload_bytes = 100\n", "limits.max_payload_bytes",
     "greater than or equal to 1024"),
    ("[adapters]\nrequire_signed = \"false\"\n", "adapters.require_signed", "valid boolean"),
    ("[export]\nprecision = \"int4\"\n", "export.precision", "'fp32' or 'fp16'"),
    ("[export]\nbatch = 0\n", "export.batch", "\"dynamic\" or an integer >= 1"),
    ("[export]\nbatch = \"eight\"\n", "export.batch", "\"dynamic\" or an integer >= 1"),
    ("[export]\nopset = 12\n", "export.opset", "greater than or equal to 13"),
    ("[export]\nmax_rank = 0\n", "export.max_rank", "greater than or equal to 1"),
    ("[export]\natol = 0.0\n", "export.atol", "greater than 0"),
    ("[export]\nexporter = \"jit\"\n", "export.exporter", "'auto', 'dynamo' or 'torchscript'"),
    ("[exprot]\nopset = 17\n", "exprot", "allowed keys here: adapters, batching, broker, "
     "device, drift, export, limits, metrics, outbox, sparkplug, topics"),
]

BAD_DEVICE = [
    ('[device]\nid = "gw/1"\n', "device.id", "not a valid device id"),
    ('[device]\nid = "gw-1"\nthreads = -1\n', "device.threads", "greater than or equal to 0"),
    ('[device]\nid = "gw-1"\nproviders = []\n', "device.providers", "at least 1 item"),
    ('[device]\nid = "gw-1"\nproviders = [{name = "CUDAExecutionProvder"}]\n',
     "device.providers[0].name", "did you mean CUDAExecutionProvider?"),
    ('[device]\nid = "gw-1"\nproviders = [{name = "CPUExecutionProvider"}, '
     '{name = "CPUExecutionProvider"}]\n', "device.providers", "each provider may appear once"),
    ('[device]\nid = "gw-1"\nproviders = [{name = "CPUExecutionProvider", opts = {}}]\n',
     "device.providers[0].opts", "allowed keys here: name, options"),
    ('[device]\nid = "gw-1"\nproviders = [{name = "CUDAExecutionProvider", '
     'options = {device = {id = 0}}}]\n', "device.providers[0].options.device",
     "string, number or boolean"),
    ('[broker]\nport = 1883\n', "device", "Field required"),
]


@pytest.mark.parametrize("text, key, allowed", [(MINIMAL + t, k, a) for t, k, a in BAD]
                         + BAD_DEVICE)
def test_bad_config_names_file_key_and_what_is_allowed(tmp_path, text, key, allowed):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    file_, key_path, _value, message = lines[0].split(": ", 3)
    assert (file_, key_path) == (str(path), key)
    assert allowed in message
    assert info.value.problems == lines
    assert info.value.exit_code == 2


def test_unknown_key_line_shows_the_value_and_all_allowed_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "[broker]\nprot = 1883\n")
    assert check_config(path) == [
        f"{path}: broker.prot: 1883: unknown key; allowed keys here: clean_start, client_id, "
        "host, keepalive, password_env, password_file, port, session_expiry, tls, "
        "username_env, username_file"]


@pytest.mark.parametrize("key", ["password", "username"])
def test_credentials_in_the_file_are_rejected_without_echoing_them(tmp_path, key):
    path = write(tmp_path, MINIMAL + f'[broker]\n{key} = "hunter2"\n')
    problems = check_config(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: broker.{key}: ")
    assert f"use {key}_env" in problems[0] and f"{key}_file" in problems[0]
    assert "hunter2" not in problems[0]


def test_both_env_and_file_for_one_credential(tmp_path):
    path = write(tmp_path, MINIMAL + '[broker]\npassword_env = "P"\npassword_file = "p.txt"\n')
    (problem,) = check_config(path)
    assert "broker.password_file" in problem and "not both" in problem


def test_check_config_reports_every_problem_at_once(tmp_path):
    path = write(tmp_path, '[device]\nid = "gw 1"\n[broker]\nport = 70000\nprot = 1\n'
                 '[topics]\nqos = 3\n[batching]\nmax_batch = 0\n[export]\nprecision = "int4"\n')
    problems = check_config(path)
    keys = [line.split(": ")[1] for line in problems]
    assert sorted(keys) == sorted(["device.id", "broker.port", "broker.prot", "topics.qos",
                                   "batching.max_batch", "export.precision"])
    assert all(line.startswith(f"{path}: ") for line in problems)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == problems


def test_valid_config_has_no_problems(tmp_path):
    assert check_config(write(tmp_path, MINIMAL)) == []


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, '[device]\nid = "gw-1"\nthreads 2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: TOML syntax error")
    assert "line 3" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_config(path)
    assert check_config(path) == [f"{path}: no such file"]


# --------------------------------------------------------------------------------------------
# Defaults, paths, TLS
# --------------------------------------------------------------------------------------------

def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert [p.name for p in cfg.device.providers] == ["CPUExecutionProvider"]
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.client_id) == ("127.0.0.1", 1883,
                                                                         "edge-gw-1")
    assert cfg.broker.clean_start is False and cfg.broker.session_expiry == 3600
    assert (cfg.topics.prefix, cfg.topics.qos, cfg.topics.inputs) == (
        "factory", 1, ["factory/+/sensors/+"])
    assert (cfg.batching.max_batch, cfg.batching.max_wait_ms) == (32, 10)
    assert (cfg.limits.max_payload_bytes, cfg.limits.max_adapter_bytes) == (1 << 20, 16 << 20)
    assert cfg.adapters.require_signed is True
    assert (cfg.export.opset, cfg.export.precision, cfg.export.batch, cfg.export.max_rank,
            cfg.export.atol) == (17, "fp32", "dynamic", 8, None)
    assert cfg.device.state_dir == tmp_path.resolve() / "state"
    assert cfg.device.bundle is None


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc" / "edge"
    conf_dir.mkdir(parents=True)
    path = write(conf_dir, '[device]\nid = "gw-1"\nbundle = "../bundle"\n'
                 'state_dir = "/var/lib/edge"\n[adapters]\ntrusted_keys = ["keys/a.pub"]\n')
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_config(Path("etc/edge/gw.toml"))
    assert cfg.device.bundle == conf_dir.resolve() / "../bundle"
    assert cfg.device.bundle.resolve() == (tmp_path / "etc" / "bundle").resolve()
    assert cfg.device.state_dir == Path("/var/lib/edge")
    assert cfg.adapters.trusted_keys == [conf_dir.resolve() / "keys" / "a.pub"]
    assert cfg.source == path.resolve()


def test_tls_enabled_with_a_missing_ca_names_the_key(tmp_path):
    path = write(tmp_path, MINIMAL + '[broker.tls]\nenabled = true\nca = "certs/ca.pem"\n')
    (problem,) = check_config(path)
    assert problem.startswith(f"{path}: broker.tls.ca: 'certs/ca.pem': file not found")
    assert str(tmp_path.resolve() / "certs" / "ca.pem") in problem


def test_tls_files_are_checked_only_when_enabled(tmp_path):
    text = '[broker.tls]\nenabled = {}\nca = "certs/ca.pem"\n'
    assert check_config(write(tmp_path, MINIMAL + text.format("false"))) == []
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = load_config(write(tmp_path, MINIMAL + text.format("true")))
    assert cfg.broker.tls.enabled and cfg.broker.tls.ca == tmp_path.resolve() / "certs/ca.pem"


def test_config_built_in_python_needs_no_file():
    cfg = Config.model_validate({"device": {"id": "gw-1", "bundle": "b"}})
    assert cfg.source is None and cfg.device.bundle == Path("b")
    assert cfg.broker.client_id == "edge-gw-1"


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------

def test_credentials_from_environment(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, MINIMAL + '[broker]\nusername_env = "EDGE_TEST_USER"\n'
                            'password_env = "EDGE_TEST_PASS"\n'))
    monkeypatch.setenv("EDGE_TEST_USER", "gateway")
    monkeypatch.setenv("EDGE_TEST_PASS", "s3cret")
    assert resolve_credentials(cfg) == ("gateway", "s3cret")


def test_credentials_from_files(tmp_path):
    (tmp_path / "user").write_text("gateway\n")
    (tmp_path / "pass").write_text("s3cret \r\n")
    cfg = load_config(write(tmp_path, MINIMAL + '[broker]\nusername_file = "user"\n'
                            'password_file = "pass"\n'))
    assert resolve_credentials(cfg) == ("gateway", "s3cret ")


def test_no_credentials(tmp_path):
    assert resolve_credentials(load_config(write(tmp_path, MINIMAL))) == (None, None)


def test_missing_environment_variable_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_TEST_PASS", raising=False)
    path = write(tmp_path, MINIMAL + '[broker]\npassword_env = "EDGE_TEST_PASS"\n')
    with pytest.raises(ConfigError, match=r"gw.toml: broker.password_env: 'EDGE_TEST_PASS': "
                       "environment variable is not set"):
        resolve_credentials(load_config(path))


def test_missing_password_file_names_the_key(tmp_path):
    path = write(tmp_path, MINIMAL + '[broker]\npassword_file = "secrets/mqtt"\n')
    with pytest.raises(ConfigError, match=r"broker.password_file: .*secrets/mqtt.*cannot read"):
        resolve_credentials(load_config(path))


# --------------------------------------------------------------------------------------------
# Topics and routing
# --------------------------------------------------------------------------------------------

def test_topic_layout(tmp_path):
    cfg = load_config(write(tmp_path, '[device]\nid = "gw-7"\n[topics]\nprefix = "acme/plant1"\n'
                            'inputs = ["{prefix}/+/sensors/+", "legacy/#"]\n'))
    assert cfg.topics.inputs == ["acme/plant1/+/sensors/+", "legacy/#"]
    topics = cfg.topic_layout
    assert topics.results("press-3") == "acme/plant1/press-3/inference"
    assert topics.errors == "acme/plant1/gw-7/errors"
    assert topics.status == "acme/plant1/gw-7/status"
    assert topics.stats == "acme/plant1/gw-7/stats"
    assert topics.put("line7") == "acme/plant1/gw-7/adapters/put/line7"
    assert topics.state == "acme/plant1/gw-7/adapters/state"
    assert topics.sensors() == "acme/plant1/+/sensors/+"  # the default topics.inputs
    for bad in ("a/b", "#", "", "x" * 65, "+x"):
        with pytest.raises(ValueError):
            topics.results(bad)


def test_routes(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + '[topics.lines.press-3]\nadapter = "bearing"\n'
                            'version = 2\n[topics.lines.press-4]\nadapter = "base"\n'
                            '[topics.lines.press-5]\nadapter = "bearing"\n'))
    lines = cfg.topics.lines
    assert (lines["press-3"].adapter, lines["press-3"].version) == ("bearing", 2)
    assert lines["press-4"].adapter is None  # "base" = the base model
    assert lines["press-5"].version is None  # latest
    assert set(lines) == {"press-3", "press-4", "press-5"}  # listed lines only


# --------------------------------------------------------------------------------------------
# Docs and the gateway's import boundary
# --------------------------------------------------------------------------------------------

def test_every_key_is_documented_with_its_default():
    doc = (ROOT / "docs" / "CONFIG.md").read_text().splitlines()
    rows = describe_fields()
    assert len(rows) > 30
    for key, default, description in rows:
        assert description, f"{key} has no description"
        found = [line for line in doc if line.startswith(f"| `{key}` |")]
        assert found, f"docs/CONFIG.md does not document {key}"
        assert f"`{default}`" in found[0], f"docs/CONFIG.md: {key} default is not {default}"


def test_config_imports_no_workstation_packages():
    code = ("import sys, edge.config; bad = {'torch', 'onnx', 'export'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
