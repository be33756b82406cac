"""`run_pilot()`: one line's pilot from the base and the line's data to OUT/ (report.json,
report.html, report.md and the recommended adapter in OUT/adapter).

Steps: check the options and the data (one clear error each, before anything is trained);
run the candidates within the budget (search.py: each seed validates on its own stratified
split of the line's training data; the test data, or a held-out 20% of the training data
without it, is scored only after the choice); choose by the stated rule (recommend.py); write the
adapter (with its check sample: export/check_sample.py), measure the running cost, write the
reports. Everything is written into a staging directory beside OUT and renamed at the end: an
error leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import ConfigError, DataError
from export.cards import CardOptions, make_card, training_card
from export.check_sample import SAMPLE_FILE
from export.data import TableColumns
from export.fitting import limit_threads
from export.models import weights_fingerprint
from export.outputs import check_writable, share_tree
from export.peft_io import save_adapter
from export.pilot.assemble import base_section, candidate_entry, line_section
from export.pilot.candidates import plan_candidates
from export.pilot.prices import Prices, load_prices
from export.pilot.recommend import choose, closeness, recommendation_section
from export.pilot.report import write_reports
from export.pilot.resources import machine_info
from export.pilot.running_cost import measure_running_cost
from export.pilot.search import EPOCHS, CandidateResult, Line, SearchSettings, run_search
from export.pilot.summary import commands, summary
from export.train import check_sample, output_meta, prepare, training_profile

__all__ = ["ADAPTER_DIR", "REPORT_FILE", "VAL_FRACTION", "run_pilot"]

REPORT_FILE = "report.json"
ADAPTER_DIR = "adapter"
VAL_FRACTION = 0.2  # of the line's training windows, per class and seed, for the choice


def run_pilot(*, base: str = "reference", weights: str | Path, data: str | Path,
              test_data: str | Path | None = None, budget_minutes: float = 10.0,
              prices: str | Path | None = None, lines: int = 10, out: str | Path,
              force: bool = False, seeds: int = 3, threads: int | None = None,
              progress: bool = True, columns: TableColumns | None = None, epochs: int = EPOCHS,
              patience: int | None = None, card: CardOptions | None = None) -> dict:
    """Run the pilot and write OUT/; returns the report (report.json's dict).

    `weights`: the pretrained base; `data` / `test_data`: the line's windows (without
    `test_data` a stratified 20% of `data` is held out as the test set). `budget_minutes`
    bounds the search (training and scoring of every candidate); `prices` a prices.toml
    (export/pilot/prices.py); `lines` the N of the running-cost figures; `seeds` runs per
    candidate where the budget allows; `threads` torch's thread count for the pilot;
    `epochs` each run's schedule, `patience` early stopping (off by default). `columns` is
    passed to the data reader (CSV/Parquet column names). `card` sets the adapter's card
    (export/cards.py). Bad input raises ConfigError or DataError, with nothing written.
    """
    options = dict(base=base, weights=weights, data=data, test_data=test_data,
                   budget_minutes=budget_minutes, prices=prices, lines=lines, seeds=seeds,
                   threads=threads, epochs=epochs, patience=patience)
    _check_options(options)
    make_card(options=card, layers=[])  # a bad licence or card file fails before the search
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out names a directory")
    check_writable(out, force, ConfigError)
    price_list = load_prices(prices)
    settings = SearchSettings(budget_s=60.0 * budget_minutes, seeds=seeds, epochs=epochs,
                              patience=patience, val_fraction=VAL_FRACTION, progress=progress)
    with limit_threads(threads):
        line, fingerprint = _load_line(base, weights, data, test_data, columns)
        plan = plan_candidates(line.base, classes_match=_classes_match(line, weights))
        search = run_search(line, plan, settings)
        machine = machine_info()
    report = _report(options, line, fingerprint, search, price_list, machine)
    return _write(report, line, search, options, out, progress, card)


def _check_options(options: dict) -> None:
    budget = options["budget_minutes"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ConfigError(f"--budget-minutes must be a positive number, got {budget!r}")
    for flag in ("lines", "seeds", "epochs", "patience"):
        value = options[flag]
        if flag == "patience" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, "
                              f"got {value!r}")
    if options["weights"] is None:
        raise ConfigError("--weights is required: the pilot adapts a pretrained base")


def _load_line(base: str, weights: Any, data: Any, test_data: Any,
               columns: TableColumns | None) -> tuple[Line, str]:
    """The base and the line's splits, checked: every class has test windows."""
    model, splits = prepare(base, weights, data, test_data, seed=0, columns=columns)
    counts = splits.y_eval.bincount(minlength=splits.train.num_classes).tolist()
    absent = [n for n, c in zip(splits.train.class_names, counts, strict=True) if c == 0]
    if absent:
        where = f"--test-data {test_data}" if test_data is not None else "the held-out test split"
        raise DataError(f"{where} has no windows of class(es) {', '.join(map(repr, absent))}; "
                        "every class of --data needs test windows to be scored")
    fingerprint = weights_fingerprint(model)
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Line(model, splits, params, nbytes), fingerprint


def _classes_match(line: Line, weights: Any) -> bool:
    """The base's head already names the line's classes (from `train`'s edge_model.json)."""
    meta = Path(weights).with_name("edge_model.json")
    try:
        names = json.loads(meta.read_text(encoding="utf-8")).get("class_names")
    except (OSError, ValueError):
        return False
    return names == list(line.splits.train.class_names)


def _report(options: dict, line: Line, fingerprint: str, search, prices: Prices | None,
            machine: dict) -> dict:
    near = closeness(search.results)
    chosen, within = choose(search.results, near)
    y_test = line.splits.y_eval.numpy()
    recommendation = None
    if chosen is not None:
        recommendation = recommendation_section(chosen, within, search.results, y_test,
                                                list(line.splits.train.class_names),
                                                near[chosen.candidate.name])
        recommendation["adapter_dir"] = ADAPTER_DIR
    return {
        "version": 1,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "package_version": __version__, "machine": machine,
        "line": line_section(line, data=options["data"], test_data=options["test_data"],
                             val_fraction=VAL_FRACTION),
        "base": base_section(line, spec=options["base"], weights=options["weights"],
                             fingerprint=fingerprint),
        "budget": {"minutes": options["budget_minutes"], "used_s": search.used_s,
                   "skipped": search.skipped},
        "prices": None if prices is None else prices.to_dict(),
        "candidates": [candidate_entry(r, line, prices, near[r.candidate.name])
                       for r in search.results],
        "recommendation": recommendation, "running_cost": None, "summary": "", "commands": [],
    }  # fmt: skip


def _write(report: dict, line: Line, search, options: dict, out: Path, progress: bool,
           card: CardOptions | None = None) -> dict:
    """Stage OUT beside it (adapter, running cost, reports), then swap it in."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = staging / "out"
        target.mkdir()
        rec = report["recommendation"]
        if rec is not None:
            chosen = next(r for r in search.results if r.candidate.name == rec["name"])
            _save_adapter(chosen, report, line, options, target / ADAPTER_DIR, card)
            report["running_cost"] = _running_cost(options, target / ADAPTER_DIR, staging,
                                                   progress)
        report["summary"] = summary(report)
        report["commands"] = commands(options, str(out))
        text = json.dumps(report, indent=2, allow_nan=False)
        (target / REPORT_FILE).write_text(text + "\n", encoding="utf-8")
        write_reports(report, target)
        share_tree(target)
        if out.exists():
            shutil.rmtree(out)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _save_adapter(chosen: CandidateResult, report: dict, line: Line, options: dict,
                  path: Path, card: CardOptions | None = None) -> None:
    """The recommended adapter as a normal adapter directory (attach / add-adapter / push)."""
    entry = next(c for c in report["candidates"] if c["name"] == chosen.candidate.name)
    metrics = {
        "method": chosen.candidate.method, "pilot": chosen.candidate.name,
        "seed": chosen.best_seed, "lr": chosen.candidate.lr, "rank": chosen.candidate.rank,
        "targets": entry["options"]["targets"], "val_accuracy": entry["val_accuracy"]["mean"],
        "test_accuracy": entry["test"]["accuracy"]["value"], "eval_split": "test",
        "trainable_params": entry["trainable_params"], "adapter_bytes": entry["adapter_bytes"],
        "train_data": str(options["data"]), "n_train": report["line"]["n_train"],
        "test_data": None if options["test_data"] is None else str(options["test_data"]),
    }  # fmt: skip
    base_config = getattr(line.base, "config", None)
    base_config = dict(base_config) if isinstance(base_config, dict) else None
    sample = check_sample(chosen.model, line.splits)  # of the test windows it was scored on
    blob = sample.to_bytes()
    card_doc = training_card(card, train_ds=line.splits.train, n_test=len(line.splits.y_eval),
                             eval_split="test", metrics=metrics, weights=options["weights"],
                             fingerprint=report["base"]["fingerprint"])
    meta = output_meta(options["base"], options["weights"], base_config,
                       report["base"]["fingerprint"], line.splits, metrics,
                       profile=training_profile(chosen.model, line.splits),
                       sample=sample.record(blob), card=card_doc)
    save_adapter(chosen.model, path, meta=meta)
    (path / SAMPLE_FILE).write_bytes(blob)  # inside the staging directory, like the rest


def _running_cost(options: dict, adapter_dir: Path, staging: Path, progress: bool) -> dict:
    """The running-cost figures of the recommended adapter, measured on onnxruntime with the
    bundle and the merged model exported into a scratch folder of the staging area."""
    workdir = staging / "running-cost"
    workdir.mkdir()
    return measure_running_cost(base=options["base"], weights=options["weights"],
                                adapter_dir=adapter_dir, lines=options["lines"],
                                workdir=workdir, progress=progress)
