"""`make demo`: the main job end to end on real data, as a list of steps.

    python -m export.demo --out DIR

1. pretrain the reference base on PLAID (appliance currents; cached in DIR/base)
2. adapt it to ACSF1 (another set of appliances, 100 windows) with a LoRA adapter (DIR/lora)
3. print the KPI table
4. export a bundle (edge-export attach)
5. start a private Mosquitto and edge-runtime, replay real ACSF1 and PLAID test windows as
   two lines (the adapter and the base), print predictions and accuracy, stop on SIGTERM
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .train import MODEL_FILE, TrainResult, train

# The recipe, shared with benchmarks/adaptation.py.
PRETRAIN_DATA = "ucr:PLAID:train"
PRETRAIN_TEST = "ucr:PLAID:test"
ADAPT_DATA = "ucr:ACSF1:train"
ADAPT_TEST = "ucr:ACSF1:test"
LENGTH = 256
BASE_CONFIG: dict[str, Any] = {"d_model": 128, "depth": 2, "heads": 4, "window_norm": True}
PRETRAIN_EPOCHS = 60
ADAPT_EPOCHS = 150
# The adapters as the benchmark runs them (train()'s default targets for the reference model):
# both fit in 3% of the base file with the head and LayerNorms stored alongside; LoRA at
# train()'s default rank 8 on the same targets would take ~5%.
LORA: dict[str, Any] = {"method": "lora", "rank": 4}
BOTTLENECK: dict[str, Any] = {"method": "bottleneck", "rank": 8}


def recipe_data(work: Path) -> dict[str, dict[str, str | Path]]:
    """{"pretrain"|"adapt": {"train"|"test": spec}} for train()'s data options."""
    specs = {"pretrain": (PRETRAIN_DATA, PRETRAIN_TEST), "adapt": (ADAPT_DATA, ADAPT_TEST)}
    return {k: {"train": tr, "test": te} for k, (tr, te) in specs.items()}


@dataclass
class DemoState:
    """What the steps hand to each other."""

    out: Path
    progress: bool = True
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_weights: Path | None = None
    base_metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, TrainResult] = field(default_factory=dict)
    bundle: Path | None = None
    line_accuracy: dict[str, float] = field(default_factory=dict)


def pretrain_base(out: Path, *, data: dict[str, dict[str, Any]], epochs: int = PRETRAIN_EPOCHS,
                  seed: int = 0, progress: bool = True,
                  force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Full training of the reference model on PLAID; skipped when `out` holds its weights.

    `data` is `recipe_data(...)`. Returns the weights path and the pretraining metrics.
    """
    weights = out / MODEL_FILE
    if weights.is_file() and not force:
        return weights, json.loads((out / "metrics.json").read_text())
    result = train(data=data["pretrain"]["train"], test_data=data["pretrain"]["test"],
                   method="full", length=LENGTH,
                   model_config=BASE_CONFIG, epochs=epochs, seed=seed, out=out, force=True,
                   progress=progress)
    return weights, result.metrics


def step_pretrain(state: DemoState) -> None:
    cached = (state.out / "base" / MODEL_FILE).is_file()
    print(f"[1] base model on {PRETRAIN_DATA} "
          f"({'cached in' if cached else 'pretraining into'} {state.out / 'base'})")
    state.data = recipe_data(state.out)
    state.base_weights, state.base_metrics = pretrain_base(state.out / "base", data=state.data,
                                                           progress=state.progress)
    print(f"    PLAID test accuracy {100 * state.base_metrics['accuracy']:.1f}%")


def step_lora(state: DemoState) -> None:
    print(f"[2] LoRA adapter on {ADAPT_DATA} ({state.out / 'lora'})")
    adapt = state.data["adapt"]
    state.results["lora"] = train(weights=state.base_weights, data=adapt["train"],
                                  test_data=adapt["test"], epochs=ADAPT_EPOCHS, **LORA,
                                  out=state.out / "lora", force=True, progress=state.progress)


def step_report(state: DemoState) -> None:
    print("[3] KPIs (ACSF1 test split)\n")
    print("| method | accuracy | trainable | adapter KB | base KB | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in state.results.items():
        m = result.metrics
        print(f"| {name} | {100 * m['accuracy']:.1f}% | {m['trainable_pct']:.2f}% | "
              f"{m['adapter_bytes'] / 1000:.1f} | {m['base_bytes'] / 1000:.1f} | "
              f"{m['train_seconds']:.1f} |")


def step_bundle(state: DemoState) -> None:
    from .demo_serve import build_bundle

    print(f"[4] edge-export attach: bundle with the ACSF1 adapter ({state.out / 'bundle'})")
    state.bundle = build_bundle(state.out, state.base_weights, state.out / "lora", ADAPT_TEST)


def step_serve(state: DemoState) -> None:
    from .demo_serve import serve_and_replay

    print("[5] edge-runtime on a private Mosquitto; real test windows replayed on two lines")
    state.line_accuracy = serve_and_replay(state.out, state.bundle)


STEPS: list[Callable[[DemoState], None]] = [step_pretrain, step_lora, step_report, step_bundle,
                                            step_serve]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    state = DemoState(out=args.out, progress=not args.no_progress)
    start = time.perf_counter()
    for step in STEPS:
        step(state)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}")


if __name__ == "__main__":
    main()
