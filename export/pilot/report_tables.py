"""What the report says, as text: the headline, the summary and every table, built once from
report.json for both the HTML and the Markdown writer (they only differ in markup).

Every figure goes through export/pilot/report_format.py; nothing here computes a figure.
Without prices there are no money columns at all; a null measurement reads "not measured".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from export.pilot.report_format import (
    MISSING,
    count,
    duration,
    kwh,
    millis,
    minutes,
    money,
    nbytes,
    pct,
    pct_ci,
    plain,
    points,
    points_ci,
    watts,
)

__all__ = [
    "Headline", "Table", "candidate", "confusion_table", "headline", "recall_table",
    "recommended", "results_table", "rule_text", "running_cost_table", "setup_table",
    "skipped_table", "summary_text", "training_table",
]


@dataclass
class Table:
    """A table as text: `rows` hold one string per header."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    key: str = ""  # a stable id for the HTML anchor
    numeric: list[bool] = field(default_factory=list)  # right-align these columns


@dataclass
class Headline:
    """One key figure of the headline block: label, the figure, a line of context."""

    label: str
    value: str
    detail: str


def candidate(report: dict, name: str | None) -> dict | None:
    return next((c for c in report.get("candidates", []) if c["name"] == name), None)


def recommended(report: dict) -> dict | None:
    return candidate(report, (report.get("recommendation") or {}).get("name"))


def _cost(training: dict) -> str:
    cost = training.get("cost")
    return money(cost["amount"], cost["currency"]) if cost else MISSING


# --------------------------------------------------------------------------------------------
# Headline and summary
# --------------------------------------------------------------------------------------------


def headline(report: dict) -> list[Headline]:
    """The figures a manager reads first: choice, accuracy gained, training, running cost."""
    rec = report.get("recommendation") or {}
    chosen = recommended(report)
    if chosen is None:
        return [Headline("Recommended adapter", "none", "no candidate finished")]
    gain = rec.get("gain_vs_base") or {}
    vs_full = rec.get("vs_full") or {}
    items = [
        Headline("Recommended adapter", chosen["name"],
                 f"{chosen['method']}, {pct(chosen['trainable_fraction'])} of the base's "
                 f"parameters, {nbytes(chosen['adapter_bytes'])} per line"),
        Headline("Accuracy gained", points(gain.get("value")),
                 f"95% CI {points_ci(gain.get('ci95'))} over the {gain.get('baseline', 'base')}; "
                 f"test accuracy {pct(chosen['test']['accuracy']['value'])} "
                 f"(95% CI {pct_ci(chosen['test']['accuracy']['ci95'])})"),
        Headline("Against the full fine-tune", points(vs_full.get("difference")),
                 f"95% CI {points_ci(vs_full.get('ci95'))}: "
                 + ("distinguishable" if vs_full.get("distinguishable")
                    else "not distinguishable on this test set")),
        _training_headline(report, chosen),
        _running_headline(report),
    ]
    return items


def _training_headline(report: dict, chosen: dict) -> Headline:
    training = chosen["training"]
    budget = report.get("budget") or {}
    search = (f"the whole search {duration(budget.get('used_s'))} of a "
              f"{minutes(budget.get('minutes'))} budget")
    if report.get("prices") and training.get("cost"):
        return Headline("Training cost", _cost(training),
                        f"{duration(training['wall_s'])} wall time over "
                        f"{count(len(chosen['seeds']))} seed(s); {search}")
    return Headline("Training time", duration(training["wall_s"]),
                    f"over {count(len(chosen['seeds']))} seed(s); {search}; "
                    "no price file, so no money figures")


def _running_headline(report: dict) -> Headline:
    running = report.get("running_cost")
    if not running:
        return Headline("Running cost", MISSING, "the gateway figures were not measured")
    disk = running.get("disk_bytes") or {}
    per_line = running.get("bytes_per_line") or {}
    return Headline(
        f"Gateway disk, {count(running['lines'])} lines",
        f"{nbytes(disk.get('attached'))} instead of {nbytes(disk.get('merged'))}",
        f"one base + {count(running['lines'])} adapters against {count(running['lines'])} "
        f"models; {nbytes(per_line.get('adapter'))} to ship per line instead of "
        f"{nbytes(per_line.get('full_model'))}")


def rule_text(report: dict) -> str:
    """How the recommendation was chosen: the engine's rule, its margin, where it was written."""
    rec = report.get("recommendation") or {}
    near = rec.get("vs_best") or {}
    return (f"{rec.get('rule', 'no rule recorded')} (margin "
            f"{points(rec.get('margin'), signed=False)}). On the validation windows it shares "
            f"with the best candidate ({near.get('best')}) the recommendation scores "
            f"{points(near.get('difference'))} against it, judged with a margin of "
            f"{points(near.get('margin'), signed=False)}. The recommended adapter is written to "
            f"{rec.get('adapter_dir')}/ in the pilot folder, ready for attach, add-adapter or "
            "push.")


def summary_text(report: dict) -> str:
    """report.json's `summary`, or one paragraph made of the headline's figures."""
    if report.get("summary"):
        return str(report["summary"])
    return " ".join(f"{h.label}: {h.value} ({h.detail})." for h in headline(report))


# --------------------------------------------------------------------------------------------
# Details
# --------------------------------------------------------------------------------------------


def _options(options: dict) -> str:
    return "; ".join(f"{key} {plain(value)}" for key, value in options.items()) or "—"


def results_table(report: dict) -> Table:
    """Every candidate: what it is, its size and its accuracy."""
    rows = []
    for c in report.get("candidates", []):
        test = c["test"]
        per_seed = " · ".join(pct(v) for v in c["val_accuracy"]["per_seed"])
        near = c.get("val_vs_best") or {}
        if near:
            per_seed += (f"; {points(near.get('difference'))} vs {near.get('best')}, margin "
                         f"{points(near.get('margin'), signed=False)}")
        rows.append([
            c["name"], c["method"], _options(c.get("options") or {}),
            f"{count(c['trainable_params'])} ({pct(c['trainable_fraction'])})",
            nbytes(c["adapter_bytes"]),
            f"{pct(c['val_accuracy']['mean'])} ({per_seed})",
            f"{pct(test['accuracy']['value'])} ({pct_ci(test['accuracy']['ci95'])})",
            f"{pct(test['macro_f1']['value'])} ({pct_ci(test['macro_f1']['ci95'])})",
        ])
    return Table("Candidates: size and accuracy",
                 ["Candidate", "Method", "Options", "Trainable params", "Adapter size",
                  "Validation accuracy (mean; per seed; against the best)",
                  "Test accuracy (95% CI)", "Macro F1 (95% CI)"], rows,
                 note="Test figures are those of each candidate's seed with the best "
                      "validation accuracy (see the training table).",
                 key="candidates", numeric=[False, False, False, True, True, True, True, True])


def training_table(report: dict) -> Table:
    """Every candidate's training: seeds, epochs, time, memory and (with prices) cost."""
    priced = bool(report.get("prices"))
    cands = report.get("candidates", [])
    # No GPU and no GPU seconds: the column would say "not measured" for what did not happen.
    gpu = bool((report.get("machine") or {}).get("gpu")) or any(
        c["training"].get("gpu_s") is not None for c in cands)
    headers = ["Candidate", "Seeds (tested)", "Epochs run", "Wall time", "CPU time"]
    headers += ["GPU time"] if gpu else []
    headers += ["Peak RSS", "RSS growth", "Optimizer state", "Gradients"]
    headers += ["Cost", "Energy"] if priced else []
    rows = []
    for c in cands:
        t = c["training"]
        row = [c["name"], f"{', '.join(count(s) for s in c['seeds'])} "
                          f"({count(c['test']['seed'])})",
               ", ".join(count(e) for e in t.get("epochs_run") or []) or MISSING,
               duration(t.get("wall_s")), duration(t.get("cpu_s"))]
        row += [duration(t.get("gpu_s"))] if gpu else []
        row += [nbytes(t.get("peak_rss_bytes")), nbytes(t.get("rss_growth_bytes")),
                nbytes(t.get("optimizer_state_bytes")), nbytes(t.get("grad_bytes"))]
        if priced:
            cost = t.get("cost")
            row += [_cost(t), kwh(cost.get("energy_kwh")) if cost else MISSING]
        rows.append(row)
    note = ("Times are summed over seeds; memory figures are the peak over seeds."
            + ("" if priced else " No price file was given: times only, no money figures."))
    return Table("Candidates: training", headers, rows, note=note, key="training",
                 numeric=[False] + [True] * (len(headers) - 1))


def recall_table(report: dict) -> Table:
    """Per-class recall on the test set, a row per candidate."""
    classes = [str(c) for c in (report.get("line") or {}).get("classes", [])]
    rows = []
    for c in report.get("candidates", []):
        recall = c["test"].get("per_class_recall") or {}
        rows.append([c["name"]] + [pct(recall.get(k)) if k in recall else MISSING
                                   for k in classes])
    return Table("Per-class recall (test set)", ["Candidate", *classes], rows, key="recall",
                 numeric=[False] + [True] * len(classes))


def confusion_table(report: dict) -> Table | None:
    """The recommended adapter's confusion matrix: rows true class, columns predicted."""
    cm = (report.get("recommendation") or {}).get("confusion_matrix")
    if not cm:
        return None
    labels = [str(x) for x in cm["labels"]]
    rows = [[f"true {label}"] + [count(v) for v in row]
            for label, row in zip(labels, cm["matrix"], strict=True)]
    return Table("Confusion matrix of the recommended adapter (test set)",
                 ["", *(f"pred. {label}" for label in labels)], rows, key="confusion",
                 numeric=[False] + [True] * len(labels))


def skipped_table(report: dict) -> Table | None:
    skipped = (report.get("budget") or {}).get("skipped") or []
    if not skipped:
        return None
    return Table("Skipped candidates", ["Candidate", "Why"],
                 [[s["candidate"], s["reason"]] for s in skipped], key="skipped")


def running_cost_table(report: dict) -> Table | None:
    """The gateway's running cost for N lines; None when it was not measured at all."""
    r = report.get("running_cost")
    if not r:
        return None
    n = count(r["lines"])
    sub = {k: r.get(k) or {} for k in ("bytes_per_line", "disk_bytes", "memory_bytes",
                                        "swap_ms", "latency_ms")}
    lat = sub["latency_ms"]
    rows = [
        ["Bytes to ship per line", nbytes(sub["bytes_per_line"].get("adapter")),
         nbytes(sub["bytes_per_line"].get("full_model"))],
        [f"Disk for {n} lines", nbytes(sub["disk_bytes"].get("attached")),
         nbytes(sub["disk_bytes"].get("merged"))],
        [f"Memory for {n} lines (onnxruntime)", nbytes(sub["memory_bytes"].get("attached")),
         nbytes(sub["memory_bytes"].get("merged"))],
        ["Switching a line", millis(sub["swap_ms"].get("adapter_swap")),
         millis(sub["swap_ms"].get("model_reload"))],
        [f"Latency, batch {count(lat['batch']) if lat.get('batch') else MISSING}",
         millis(lat.get("attached")), millis(lat.get("merged"))],
    ]
    return Table(f"Running cost on the gateway, {n} lines",
                 ["", "Adapters (one base + adapters)", "Full models (one per line)"], rows,
                 note="Switching: swapping an adapter against reloading a model.",
                 key="running", numeric=[False, True, True])


def setup_table(report: dict) -> Table:
    """The line, the base, the budget, the prices and the machine, as label/value rows."""
    line, base = report.get("line") or {}, report.get("base") or {}
    budget, machine = report.get("budget") or {}, report.get("machine") or {}
    test = line.get("test") or "a stratified split of the training data"
    rows = [
        ["Line data", f"train {line.get('train')}; test {test}"],
        ["Windows", f"{count(line.get('n_train'))} train ({count(line.get('n_val'))} of them "
                    "validate each seed, another stratified split per seed), "
                    f"{count(line.get('n_test'))} test"],
        ["Shape", f"{count(line.get('channels'))} channel(s) × {count(line.get('length'))} "
                  f"samples; {len(line.get('classes', []))} classes: "
                  f"{', '.join(str(c) for c in line.get('classes', []))}"],
        ["Base model", f"{base.get('spec')} ({base.get('weights')}), "
                       f"{count(base.get('params'))} parameters, {nbytes(base.get('bytes'))}"],
        ["Base fingerprint", str(base.get("fingerprint"))],
        ["Budget", f"{minutes(budget.get('minutes'))}, used {duration(budget.get('used_s'))}"],
        ["Prices", _prices(report)],
        ["Machine", f"{machine.get('cpu')}, {count(machine.get('cores'))} cores "
                    f"({count(machine.get('threads'))} torch threads); GPU "
                    f"{machine.get('gpu') or 'none'}; torch {machine.get('torch')}; "
                    f"onnxruntime {machine.get('onnxruntime')}"],
        ["Created", f"{report.get('created')} by edge-adapters {report.get('package_version')}"],
    ]
    return Table("The pilot", ["", ""], rows, key="setup")


def _prices(report: dict) -> str:
    p = report.get("prices")
    if not p:
        return "none given: times only, no money figures"
    cur = p["currency"]
    return (f"{money(p.get('cpu_hour'), cur)} per CPU-hour, {money(p.get('gpu_hour'), cur)} "
            f"per GPU-hour, {money(p.get('kwh'), cur)} per kWh at {watts(p.get('watts'))}")
