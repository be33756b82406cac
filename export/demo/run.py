"""`make demo`: the main job end to end on real data, as a list of steps.

    python -m export.demo --out DIR

1. pretrain the reference base on PLAID (appliance currents; cached in DIR/base)
2. run the line's pilot on ACSF1 (another set of appliances, 100 windows): edge-export pilot
   searches adapters within a budget, recommends one and writes the KPI report
   (DIR/pilot/report.html, .md, .json; the adapter in DIR/pilot/adapter); print its summary
3. train the recommended adapter again on all of ACSF1's training windows for the full
   epochs (DIR/acsf1): the production version
4. export the gateway's bundle with the pilot's adapter as acsf1 v1 (edge-export attach,
   DIR/bundle); copy it to the workstation's DIR/bundle-workstation and add the production
   adapter there as acsf1 v2 (edge-export add-adapter; base.onnx stays byte-identical); make
   a signing key (edge-export keygen, DIR/keys)
5. start a private Mosquitto and edge-runtime (signed adapters only, trusting that key);
   replay real ACSF1 and PLAID test windows as two lines (acsf1, following its newest
   version, and the base); push acsf1 v2 over MQTT while it runs, unsigned (refused) then
   signed (accepted, hot-swapped); replay the ACSF1 windows again; print accuracy per line
   and adapter version and the switch time; stop on SIGTERM
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.train import MODEL_FILE, TrainResult, train

# The recipe, shared with benchmarks/adaptation.py.
PRETRAIN_DATA = "ucr:PLAID:train"
PRETRAIN_TEST = "ucr:PLAID:test"
ADAPT_DATA = "ucr:ACSF1:train"
ADAPT_TEST = "ucr:ACSF1:test"
LENGTH = 256
BASE_CONFIG: dict[str, Any] = {"d_model": 128, "depth": 2, "heads": 4, "window_norm": True}
PRETRAIN_EPOCHS = 60
ADAPT_EPOCHS = 150
PILOT_BUDGET_MINUTES = 2.0  # the demo's pilot search, on 2 CPU cores
PILOT_SEEDS = 2
# The adapters as the benchmark runs them: train()'s defaults, what `edge-export train
# --method lora|bottleneck` does with nothing else given (rank, targets, learning rate).
LORA: dict[str, Any] = {"method": "lora"}
BOTTLENECK: dict[str, Any] = {"method": "bottleneck"}


def recipe_data() -> dict[str, dict[str, str | Path]]:
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
    pilot: dict[str, Any] = field(default_factory=dict)  # the pilot's report
    results: dict[str, TrainResult] = field(default_factory=dict)
    bundle: Path | None = None
    workstation: Path | None = None  # the workstation's copy of the bundle, with v2
    key: Path | None = None  # the private signing key; its .pub is trusted by the gateway
    accuracy: dict[str, float] = field(default_factory=dict)  # "line adapter vN" -> accuracy


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
    state.data = recipe_data()
    state.base_weights, state.base_metrics = pretrain_base(state.out / "base", data=state.data,
                                                           progress=state.progress)
    print(f"    PLAID test accuracy {100 * state.base_metrics['accuracy']:.1f}%")


def step_pilot(state: DemoState) -> None:
    from export.pilot import run_pilot

    print(f"[2] edge-export pilot on {ADAPT_DATA}: adapters searched within "
          f"{PILOT_BUDGET_MINUTES:g} minutes ({state.out / 'pilot'})")
    adapt = state.data["adapt"]
    state.pilot = run_pilot(weights=state.base_weights, data=adapt["train"],
                            test_data=adapt["test"], budget_minutes=PILOT_BUDGET_MINUTES,
                            seeds=PILOT_SEEDS, out=state.out / "pilot", force=True,
                            progress=state.progress)
    print("\n".join(textwrap.wrap(state.pilot["summary"], 92, initial_indent="    ",
                                   subsequent_indent="    ")))
    print(f"    report: {state.out / 'pilot' / 'report.html'} (also report.md, report.json)")


def step_production(state: DemoState) -> None:
    """The recommended adapter's recipe on all the line's training windows, full epochs."""
    rec = state.pilot["recommendation"]
    chosen = next(c for c in state.pilot["candidates"] if c["name"] == rec["name"])
    options = chosen["options"]
    print(f"[3] {rec['name']} again on all of {ADAPT_DATA}, {ADAPT_EPOCHS} epochs "
          f"({state.out / 'acsf1'})")
    adapt = state.data["adapt"]
    result = train(weights=state.base_weights, data=adapt["train"], test_data=adapt["test"],
                   method=chosen["method"], rank=options["rank"], targets=options["targets"],
                   lr=options["lr"], epochs=ADAPT_EPOCHS, out=state.out / "acsf1", force=True,
                   progress=state.progress)
    state.results["acsf1"] = result
    print(f"    ACSF1 test accuracy {100 * result.accuracy:.1f}% (the pilot's adapter: "
          f"{100 * chosen['test']['accuracy']['value']:.1f}%)")


def step_bundle(state: DemoState) -> None:
    from export.demo.serve import build_bundles, make_key

    print(f"[4] edge-export attach: the gateway's bundle, the pilot's adapter as acsf1 v1 "
          f"({state.out / 'bundle'})")
    state.bundle, state.workstation = build_bundles(
        state.out, state.base_weights, state.out / "pilot" / "adapter", state.out / "acsf1",
        ADAPT_TEST)
    state.key = make_key(state.out / "keys" / "signing")


def step_serve(state: DemoState) -> None:
    from export.demo.serve import serve_and_push

    print("[5] edge-runtime on a private Mosquitto: real test windows on two lines, "
          "acsf1 v2 pushed live")
    state.accuracy = serve_and_push(state.out, state.bundle, state.workstation, state.key)


STEPS: list[Callable[[DemoState], None]] = [step_pretrain, step_pilot, step_production,
                                            step_bundle, step_serve]


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
