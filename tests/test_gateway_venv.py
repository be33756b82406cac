"""The gateway venv itself (make test's second run, EDGE_TESTS=gateway): no workstation
package in it, the gateway code as `pip install .` put it there (not this tree on sys.path),
and its `edge-runtime` console script serving real windows over MQTT."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import WORKSTATION_PACKAGES
from reference_bundle import sample_windows
from test_runtime import Collector, Publisher, exactly_once, stops_cleanly

import edge

pytestmark = pytest.mark.gateway

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "edge-runtime"


@pytest.mark.parametrize("name", WORKSTATION_PACKAGES)
def test_no_workstation_package(name):
    assert importlib.util.find_spec(name) is None, f"{name} is installed in the gateway venv"
    with pytest.raises(ModuleNotFoundError):
        __import__(name)


def test_edge_is_the_installed_copy_of_this_tree():
    """Imported from site-packages, file for file what edge/ holds now: a stale install (or a
    module the tree no longer has) would test other code than this tree's."""
    installed = Path(edge.__file__).resolve().parent
    assert installed.parent == Path(sysconfig.get_paths()["purelib"]).resolve(), installed

    def sources(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*.py")}

    tree = ROOT / "edge"
    assert sources(installed) == sources(tree)
    _, mismatch, errors = filecmp.cmpfiles(tree, installed, sorted(sources(tree)), shallow=False)
    assert (mismatch, errors) == ([], [])


def test_console_script_serves_and_exits_zero(runtime_config, mosquitto, tmp_path):
    """`edge-runtime run` from the venv's bin/, outside the tree: results for real windows on
    both lines, then SIGTERM drains and exits 0."""
    x, _, _ = sample_windows(4)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = tmp_path / "service.log"
    collector = Collector(mosquitto.port)
    with open(log, "w") as out:
        proc = subprocess.Popen([str(CONSOLE_SCRIPT), "run", "--config", str(runtime_config())],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stops_cleanly(proc, log, collector):
        assert collector.wait(lambda c: any(s["state"] == "online" for s in c.status())), \
            log.read_text()
        pub = Publisher(mosquitto.port)
        ids = [f"w{i}" for i in range(len(x))]
        for i, msg_id in enumerate(ids):
            pub.json(f"factory/line-{'ab'[i % 2]}/sensors/s", msg_id, x[i])
        pub.close()
        assert collector.wait(lambda c: len(c.docs("/inference")) >= len(ids)), log.read_text()
        exactly_once(collector.answers(), ids)
