"""How the report writes each kind of figure, once for the HTML and the Markdown report.

The report never computes a figure: it formats the ones in report.json. Fractions (accuracy,
F1, recall, trainable share) become percentages with one decimal; differences between two
accuracies become signed percentage points; bytes KiB/MiB; durations s/min/h; money keeps
two significant digits (pilot costs are often fractions of a cent). `FIGURES` says which
formatter each figure of report.json gets, by its path, so a test can check every figure
the report shows appears as formatted here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FIGURES", "MISSING", "NOT_SHOWN", "count", "duration", "figure_formatter", "kwh",
    "millis", "minutes", "money", "nbytes", "numbers", "pct", "pct_ci", "plain", "points",
    "points_ci", "watts",
]

MISSING = "not measured"


def pct(x: float | None) -> str:
    """0.713 -> '71.3%'; shares under 0.1% keep two significant digits (0.00012 -> '0.012%')."""
    if x is None:
        return MISSING
    value = 100.0 * x
    if value != 0 and abs(value) < 0.1:
        return f"{_sig(value, 2)}%"
    return f"{value:.1f}%"


def points(x: float | None, signed: bool = True) -> str:
    """A difference of two fractions in percentage points: 0.35 -> '+35.0 pts'."""
    if x is None:
        return MISSING
    return f"{100.0 * x:+.1f} pts" if signed else f"{100.0 * x:.1f} pts"


def pct_ci(pair: list[float] | None) -> str:
    """A 95% interval of a fraction: [0.62, 0.8] -> '62.0–80.0%'."""
    if not pair:
        return MISSING
    return f"{100.0 * pair[0]:.1f}–{100.0 * pair[1]:.1f}%"


def points_ci(pair: list[float] | None) -> str:
    """A 95% interval of a difference: [-0.06, 0.04] -> '-6.0 to +4.0 pts'."""
    if not pair:
        return MISSING
    return f"{100.0 * pair[0]:+.1f} to {100.0 * pair[1]:+.1f} pts"


def nbytes(n: int | float | None) -> str:
    """924 -> '924 B'; 51234 -> '50.0 KiB'; binary units, one decimal."""
    if n is None:
        return MISSING
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def duration(s: float | None) -> str:
    """Seconds: '0.19 s', '12.3 s', '8 min 32 s', '1 h 05 min'."""
    if s is None:
        return MISSING
    if s < 10:
        return f"{s:.2f} s"
    if s < 100:
        return f"{s:.1f} s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def millis(ms: float | None) -> str:
    """Milliseconds, three significant digits: 0.2 -> '0.2 ms', 35.04 -> '35 ms'."""
    return MISSING if ms is None else f"{ms:.3g} ms"


def count(n: int | None) -> str:
    """412345 -> '412,345'."""
    return MISSING if n is None else f"{n:,}"


def plain(v: Any) -> str:
    """An option's value as typed: 4 -> '4', 0.01 -> '0.01', a list comma-joined."""
    if isinstance(v, (list, tuple)):
        return ", ".join(plain(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def money(amount: float | None, currency: str) -> str:
    """'EUR 0.0012' (two significant digits under 1), 'EUR 12.50' from 1 on."""
    if amount is None:
        return MISSING
    if amount == 0 or abs(amount) >= 1:
        return f"{currency} {amount:,.2f}"
    return f"{currency} {_sig(amount, 2)}"


def kwh(v: float | None) -> str:
    return MISSING if v is None else f"{_sig(v, 2)} kWh"


def watts(v: float | None) -> str:
    return MISSING if v is None else f"{v:g} W"


def minutes(v: float | None) -> str:
    return MISSING if v is None else f"{v:g} min"


def _sig(x: float, digits: int) -> str:
    """`x` with `digits` significant digits in fixed notation (never 1e-05)."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text  # 0.050 -> 0.05


# --------------------------------------------------------------------------------------------
# Which formatter each figure of report.json gets
# --------------------------------------------------------------------------------------------

Formatter = Callable[[Any, dict], str]  # (value, report) -> text


def _currency(report: dict) -> str:
    return (report.get("prices") or {}).get("currency", "")


def _f(fn: Callable[[Any], str]) -> Formatter:
    return lambda value, report: fn(value)


def _money(value: Any, report: dict) -> str:
    return money(value, _currency(report))


# Path patterns (`*`: any key or list index) -> formatter; `ci95` pairs are one figure.
FIGURES: list[tuple[tuple[str, ...], Formatter]] = [
    (("machine", "cores"), _f(count)),
    (("machine", "threads"), _f(count)),
    (("line", "*"), _f(count)),
    (("base", "params"), _f(count)),
    (("base", "bytes"), _f(nbytes)),
    (("budget", "minutes"), _f(minutes)),
    (("budget", "used_s"), _f(duration)),
    (("prices", "watts"), _f(watts)),
    (("prices", "*"), _money),
    (("candidates", "*", "options", "*"), _f(plain)),
    (("candidates", "*", "options", "*", "*"), _f(plain)),
    (("candidates", "*", "seeds", "*"), _f(count)),
    (("candidates", "*", "trainable_params"), _f(count)),
    (("candidates", "*", "trainable_fraction"), _f(pct)),
    (("candidates", "*", "adapter_bytes"), _f(nbytes)),
    (("candidates", "*", "val_accuracy", "mean"), _f(pct)),
    (("candidates", "*", "val_accuracy", "per_seed", "*"), _f(pct)),
    (("candidates", "*", "val_vs_best", "difference"), _f(points)),
    (("candidates", "*", "val_vs_best", "margin"), _f(lambda v: points(v, signed=False))),
    (("candidates", "*", "test", "seed"), _f(count)),
    (("candidates", "*", "test", "*", "value"), _f(pct)),
    (("candidates", "*", "test", "*", "ci95"), _f(pct_ci)),
    (("candidates", "*", "test", "per_class_recall", "*"), _f(pct)),
    (("candidates", "*", "training", "epochs_run", "*"), _f(count)),
    (("candidates", "*", "training", "cost", "amount"), _money),
    (("candidates", "*", "training", "cost", "energy_kwh"), _f(kwh)),
    (("candidates", "*", "training", "*_bytes"), _f(nbytes)),
    (("candidates", "*", "training", "*_s"), _f(duration)),
    (("recommendation", "margin"), _f(lambda v: points(v, signed=False))),
    (("recommendation", "vs_best", "margin"), _f(lambda v: points(v, signed=False))),
    (("recommendation", "*", "value"), _f(points)),
    (("recommendation", "*", "difference"), _f(points)),
    (("recommendation", "*", "ci95"), _f(points_ci)),
    (("recommendation", "confusion_matrix", "matrix", "*", "*"), _f(count)),
    (("running_cost", "lines"), _f(count)),
    (("running_cost", "*_bytes", "*"), _f(nbytes)),
    (("running_cost", "bytes_per_line", "*"), _f(nbytes)),
    (("running_cost", "latency_ms", "batch"), _f(count)),
    (("running_cost", "*_ms", "*"), _f(millis)),
]
# Figures the report draws rather than prints (learning curves) or that are not figures.
NOT_SHOWN: list[tuple[str, ...]] = [("version",), ("candidates", "*", "curves")]


def _matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if len(path) != len(pattern):
        return False
    for part, pat in zip(path, pattern, strict=True):
        if pat == "*" or part == pat:
            continue
        if pat.startswith("*") and part.endswith(pat[1:]):
            continue
        return False
    return True


def figure_formatter(path: tuple[str, ...]) -> Formatter | None:
    """The formatter of the figure at `path` (keys and list indices as strings), or None."""
    return next((fmt for pattern, fmt in FIGURES if _matches(path, pattern)), None)


def numbers(report: dict) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every figure the report shows: (path, value) for numbers and `ci95` pairs, nulls and
    booleans left out, NOT_SHOWN subtrees skipped."""
    yield from _walk(report, ())


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    if any(_matches(path[: len(p)], p) for p in NOT_SHOWN if len(path) >= len(p)):
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        if path and path[-1] == "ci95":
            yield path, node
            return
        for i, value in enumerate(node):
            yield from _walk(value, (*path, str(i)))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node
