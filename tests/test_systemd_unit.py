"""deploy/systemd/edge-runtime.service: systemd itself accepts every line of it (unknown keys
and bad values are only warnings to systemd, so the test reads the warnings), it carries the
settings the deployment relies on, and the command its ExecStartPre runs accepts the shipped
Jetson config."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "edge-runtime.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "edge-runtime.env.example"
CONSOLE_SCRIPT = Path(sys.executable).parent / "edge-runtime"
INSTALLED_SCRIPT = "/opt/edge-runtime/venv/bin/edge-runtime"
INSTALLED_CONFIG = "/etc/edge-runtime/config.toml"


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not found (install systemd to check the unit file)")
    return exe


def verify(exe: str, unit: Path) -> list[str]:
    """`systemd-analyze verify` on one unit file: the lines that are about that file (unknown
    key, value that does not parse, command not executable...), or [] when systemd accepts it.
    Works without systemd as PID 1 and without root."""
    cmd = [exe, "verify", "--man=no", "--generators=no"]
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if int(re.match(r"systemd (\d+)", version).group(1)) >= 250:
        cmd.append("--recursive-errors=no")  # other units' problems are not ours
    env = {**os.environ, "SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_COLOR": "0",
           "SYSTEMD_LOG_LEVEL": "info"}
    out = subprocess.run([*cmd, str(unit)], capture_output=True, text=True, env=env)
    text = out.stdout + out.stderr
    problems = [line for line in text.splitlines() if unit.name in line]
    if out.returncode != 0 and not problems:
        problems = [f"systemd-analyze verify exited {out.returncode}: {text.strip()}"]
    return problems


def runnable_copy(tmp_path: Path, edit=lambda text: text) -> Path:
    """The unit with the installed paths replaced by this venv's console script and a real
    config file, since verify insists that ExecStart='s binary exists."""
    config = tmp_path / "config.toml"
    shutil.copy(ROOT / "firmware_configs" / "cpu.toml", config)
    text = UNIT.read_text().replace(INSTALLED_SCRIPT, str(CONSOLE_SCRIPT))
    text = edit(text.replace(INSTALLED_CONFIG, str(config)))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def misspell_restart(text: str) -> str:
    text, n = re.subn(r"^Restart=on-failure$", "Restrat=on-failure", text, flags=re.M)
    assert n == 1
    return text


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda text: text, None),           # the shipped unit: no warning at all
    (misspell_restart, "Restrat"),       # proof that the check can fail
])
def test_systemd_accepts_the_unit(tmp_path, edit, expected):
    exe = systemd_analyze()
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT}: install the package into this venv"
    problems = verify(exe, runnable_copy(tmp_path, edit))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in line for line in problems), problems


def unit_settings() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # keys may repeat
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.parametrize(("section", "key", "value"), [
    ("Unit", "After", "network-online.target"),
    ("Unit", "Wants", "network-online.target"),
    ("Service", "Type", "exec"),
    ("Service", "User", "edge-runtime"),
    ("Service", "EnvironmentFile", "/etc/edge-runtime/edge-runtime.env"),
    ("Service", "StateDirectory", "edge-runtime edge-runtime/trt-cache"),
    ("Service", "StateDirectoryMode", "0750"),
    ("Service", "ExecStartPre", f"{INSTALLED_SCRIPT} check-config {INSTALLED_CONFIG}"),
    ("Service", "ExecStart", f"{INSTALLED_SCRIPT} run --config {INSTALLED_CONFIG}"),
    ("Service", "Restart", "on-failure"),
    ("Service", "RestartPreventExitStatus", "2"),
    ("Service", "KillSignal", "SIGTERM"),
    ("Service", "TimeoutStopSec", "30"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "CapabilityBoundingSet", ""),
    ("Service", "DevicePolicy", "closed"),
    ("Install", "WantedBy", "multi-user.target"),
])
def test_unit_has_the_required_setting(section, key, value):
    assert unit_settings().get(section, key, fallback=None) == value


@pytest.mark.parametrize("key", ["DynamicUser", "PrivateDevices", "MemoryDenyWriteExecute"])
def test_unit_leaves_out_what_breaks_the_gpu_or_the_state(key):
    assert not unit_settings().has_option("Service", key)


def test_env_example_names_the_variables_the_configs_use():
    text = ENV_EXAMPLE.read_text()
    for name in ("EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD"):
        assert re.search(rf"^{name}=", text, flags=re.M), name
        assert f'"{name}"' in (ROOT / "firmware_configs" / "jetson-orin-nano.toml").read_text()


def test_exec_start_pre_accepts_the_shipped_jetson_config():
    out = subprocess.run([str(CONSOLE_SCRIPT), "check-config",
                          "firmware_configs/jetson-orin-nano.toml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stdout + out.stderr
