"""The README's base recipe is the one `make demo` and benchmarks/adaptation.py use
(export/demo/run.py): the documented commands reproduce the documented figures."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from export.demo import run as demo

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_command(prefix: str) -> list[str]:
    """The README's shell command starting with `prefix`, continuation lines joined."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.strip().startswith(prefix))
    return shlex.split(line)


def options(argv: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag.startswith("--") and not value.startswith("--"):
            found.setdefault(flag, []).append(value)
    return found


def test_readme_pretrains_the_demos_base():
    opts = options(readme_command("edge-export train --method full"))
    assert opts["--data"] == [demo.PRETRAIN_DATA] and opts["--test-data"] == [demo.PRETRAIN_TEST]
    assert opts["--length"] == [str(demo.LENGTH)]
    assert opts["--epochs"] == [str(demo.PRETRAIN_EPOCHS)]
    config = dict(pair.split("=", 1) for pair in opts["--model-config"])
    assert {k: json.loads(v) for k, v in config.items()} == demo.BASE_CONFIG


def test_readme_adapts_on_the_demos_line():
    opts = options(readme_command("edge-export train --method lora"))
    assert opts["--data"] == [demo.ADAPT_DATA] and opts["--test-data"] == [demo.ADAPT_TEST]
