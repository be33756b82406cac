"""The gateway half never imports the workstation half: importing every module of edge/ in a
fresh interpreter pulls in neither torch nor onnx nor export/."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "onnx", "export")


def edge_modules() -> list[str]:
    return sorted(f"edge.{m.name}" for m in pkgutil.iter_modules(edge.__path__))


def test_edge_has_the_runtime_modules():
    names = set(edge_modules())
    assert {"edge.cli", "edge.mqtt", "edge.service", "edge.codec", "edge.engine"} <= names


def test_importing_edge_pulls_in_no_workstation_package():
    code = (
        "import importlib, json, sys\n"
        f"for name in {edge_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert bad == [], f"edge/ imports workstation packages: {bad}"
