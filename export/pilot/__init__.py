"""`edge-export pilot`: one line's pilot. Candidates searched within a budget, the adapter
chosen by a stated rule, and the KPI report (report.json, report.html, report.md).

    candidates.py  the candidates, in the order the budget is spent on them
    settings.py    the search's settings and defaults (torch-free)
    search.py      running them: a validation split per seed, budget, skipped ones
    metrics.py     accuracy, macro F1, recall, bootstrap intervals, paired differences
    resources.py   wall time, CPU seconds, peak memory of a run; the machine
    prices.py      prices.toml and the cost of a run
    recommend.py   the recommendation rule and its section of the report
    assemble.py    report.json's line, base and candidate sections
    summary.py     the manager's paragraph and the commands
    pipeline.py    run_pilot(): all of it, staged and written to OUT/
    running_cost.py  the running-cost KPI, measured on onnxruntime (measure_runtime.py)
    report.py      report.html and report.md from report.json (plots, report_html, report_md,
                   report_tables, report_format)
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_pilot"]


def __getattr__(name: str) -> Any:
    # run_pilot loads torch: imported on first use, so the report writers stay light
    if name == "run_pilot":
        from export.pilot.pipeline import run_pilot

        return run_pilot
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
