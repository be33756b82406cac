"""One short pilot on real data, shared by tests/test_pilot.py and tests/test_pilot_report.py
(conftest's session fixtures `pilot_base` and `pilot_run`): a tiny reference base pretrained
on GunPoint, the line ArrowHead (train/test), a 15-second budget, prices given."""

from __future__ import annotations

from pathlib import Path

LENGTH = 64
TINY = {"d_model": 16, "depth": 1, "heads": 2, "patch": 8, "length": LENGTH}
SHORT = {"seeds": 2, "epochs": 8, "progress": False}
LINE = {"data": "ucr:ArrowHead:train", "test_data": "ucr:ArrowHead:test"}
PRICES = 'currency = "EUR"\ncpu_hour = 0.5\ngpu_hour = 2.5\nkwh = 0.3\nwatts = 65\n'


def pretrain_tiny_base(root: Path) -> Path:
    """A tiny reference base pretrained (method full) on GunPoint: 2 classes."""
    from export.train import train

    train(data="ucr:GunPoint:train", method="full", model_config=TINY, epochs=15,
          out=root / "base", progress=False)
    return root / "base" / "model.safetensors"


def run_tiny_pilot(base: Path, root: Path) -> tuple[Path, dict]:
    """(the pilot directory, its report) for the line, with PRICES."""
    from export.pilot import run_pilot

    (root / "prices.toml").write_text(PRICES)
    report = run_pilot(weights=base, **LINE, budget_minutes=0.25, prices=root / "prices.toml",
                       out=root / "pilot", **SHORT)
    return root / "pilot", report
