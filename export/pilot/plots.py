"""The report's plots, drawn with matplotlib (Agg) from report.json, as inline SVG text.

SVG keeps the text as text (svg.fonttype none): it prints sharp on A4 and the figures in the
plots are searchable. Each candidate keeps one colour in every plot. Plots draw only what
report.json holds; a panel whose figures are null says "not measured".
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on a workstation shell or in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from export.pilot.report_format import count, duration, millis, money, nbytes  # noqa: E402
from export.pilot.report_tables import recommended  # noqa: E402

__all__ = ["Plot", "plots", "to_svg"]

WIDTH_IN = 7.2  # A4's 180 mm text width: the SVG scales to the page, fonts stay readable
STYLE = {
    "svg.fonttype": "none", "svg.hashsalt": "pilot-report", "font.size": 8,
    "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False,
    "font.family": "DejaVu Sans",
}
NOT_MEASURED = "not measured"


@dataclass
class Plot:
    """One figure of the report: `svg` is a complete <svg> element (no XML prolog)."""

    key: str
    title: str
    caption: str
    svg: str


def plots(report: dict) -> list[Plot]:
    """Every plot the report shows, in the issue's order; plots without data are left out."""
    out = []
    for key, title, draw in _PLOTS:
        with plt.rc_context(STYLE):
            drawn = draw(report)
        if drawn is not None:
            fig, caption = drawn
            out.append(Plot(key, title, caption, to_svg(fig)))
    return out


def to_svg(fig: Figure) -> str:
    """The figure as one <svg> element: its natural size in pt, its viewBox lets CSS shrink it
    to the page (max-width: 100%) without changing the aspect ratio."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # no XML prolog or DOCTYPE inside an HTML document


def _colours(report: dict) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(report["candidates"]) <= 10 else "tab20")
    return {c["name"]: cmap(i % cmap.N) for i, c in enumerate(report["candidates"])}


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------


def _learning_curves(report: dict) -> tuple[Figure, str] | None:
    cands = [c for c in report["candidates"] if c.get("curves")]
    if not cands:
        return None
    colours = _colours(report)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(WIDTH_IN, 2.7))
    for c in cands:
        for curve in c["curves"]:
            tested = curve["seed"] == c["test"]["seed"]
            style = {"color": colours[c["name"]], "lw": 1.5 if tested else 0.8,
                     "alpha": 1.0 if tested else 0.3, "label": c["name"] if tested else None}
            ax_loss.plot(range(1, len(curve["train_loss"]) + 1), curve["train_loss"], **style)
            acc = [100.0 * a for a in curve["val_accuracy"]]
            ax_acc.plot(range(1, len(acc) + 1), acc, **style)
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.25)
    _legend_below(fig, ax_loss)
    return fig, ("Per epoch, per candidate. The solid line is the seed whose test figures the "
                 "report gives; the other seeds are faint.")


def _legend_below(fig: Figure, ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)),
                   frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.06 + 0.05 * ((len(labels) - 1) // 5), 1, 1))


# --------------------------------------------------------------------------------------------
# Accuracy against size
# --------------------------------------------------------------------------------------------


def _tradeoff(report: dict) -> tuple[Figure, str] | None:
    cands = report["candidates"]
    if not cands:
        return None
    colours = _colours(report)
    chosen = recommended(report)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 2.9), sharey=True)
    for ax, key, xlabel in ((axes[0], "trainable_params", "trainable parameters (log)"),
                            (axes[1], "adapter_bytes", "bytes shipped per line (log)")):
        _tradeoff_panel(ax, cands, key, colours, chosen)
        ax.set(xscale="log", xlabel=xlabel)
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("Accuracy against trainable parameters")
    axes[1].set_title("Accuracy against adapter size")
    _legend_below(fig, axes[0])
    return fig, ("Test accuracy with its 95% interval. The star is the recommended adapter; the "
                 "dashed line is the full fine-tune, the reference adapters are judged against. "
                 "Candidates that train or ship nothing are drawn as dotted lines.")


def _tradeoff_panel(ax: Axes, cands: list[dict], key: str, colours: dict,
                    chosen: dict | None) -> None:
    for c in cands:
        acc = c["test"]["accuracy"]
        y = 100.0 * acc["value"]
        lo, hi = (100.0 * v for v in acc["ci95"]) if acc.get("ci95") else (y, y)
        x = c.get(key)
        if c["method"] == "full":
            ax.axhline(y, color=colours[c["name"]], ls="--", lw=1)
            ax.annotate("full fine-tune", (0.01, y), xycoords=("axes fraction", "data"),
                        xytext=(0, 2), textcoords="offset points", fontsize=6.5,
                        color=colours[c["name"]])
        if not x:  # nothing trained / shipped: no place on a log axis
            ax.axhline(y, color=colours[c["name"]], ls=":", lw=1, label=c["name"])
            continue
        is_chosen = chosen is not None and c["name"] == chosen["name"]
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="*" if is_chosen else "o",
                    ms=12 if is_chosen else 5, color=colours[c["name"]], capsize=2, lw=0.8,
                    label=c["name"], zorder=3 if is_chosen else 2,
                    mec="black" if is_chosen else None)
        if is_chosen:
            ax.annotate(f"recommended\n{c['name']}", (x, y), xytext=(8, -18),
                        textcoords="offset points", fontsize=7, fontweight="bold")


# --------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------


def _confusion(report: dict) -> tuple[Figure, str] | None:
    cm = (report.get("recommendation") or {}).get("confusion_matrix")
    if not cm or not cm.get("matrix"):
        return None
    labels, matrix = [str(x) for x in cm["labels"]], cm["matrix"]
    side = min(WIDTH_IN * 0.7, 1.6 + 0.42 * len(labels))
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, count(value), ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 * top else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="windows")
    name = report["recommendation"]["name"]
    return fig, f"{name} on the test set: rows are the true classes, columns the predicted."


# --------------------------------------------------------------------------------------------
# Cost bars
# --------------------------------------------------------------------------------------------


def _costs(report: dict) -> tuple[Figure, str] | None:
    cands = report["candidates"]
    if not cands:
        return None
    # The bar rows grow with the candidates (~0.22 in a bar); the gateway row stays 2.4 in.
    top = max(1.8, 0.6 + 0.22 * len(cands))
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH_IN, top + 2.6),
                             gridspec_kw={"height_ratios": [top, 2.4]})
    colours = _colours(report)
    names = [c["name"] for c in cands]
    _hbars(axes[0][0], names, [c["training"].get("wall_s") for c in cands], duration,
           "Training wall time (all seeds)", [colours[n] for n in names])
    if report.get("prices"):
        currency = report["prices"]["currency"]
        amounts = [(c["training"].get("cost") or {}).get("amount") for c in cands]
        _hbars(axes[0][1], names, amounts, lambda v: money(v, currency),
               f"Training cost ({currency})", [colours[n] for n in names])
    else:
        _hbars(axes[0][1], names, [c["training"].get("peak_rss_bytes") for c in cands], nbytes,
               "Training peak memory (RSS)", [colours[n] for n in names])
    running = report.get("running_cost") or {}
    lines = count(running["lines"]) if running else "N"
    _pairs(axes[1][0], running, [("disk_bytes", f"disk\n{lines} lines", "attached", "merged"),
                                 ("memory_bytes", f"memory\n{lines} lines", "attached",
                                  "merged")],
           nbytes, "Gateway storage: adapters vs full models")
    _pairs(axes[1][1], running, [("swap_ms", "switch a line", "adapter_swap", "model_reload"),
                                 ("latency_ms", "latency", "attached", "merged")],
           millis, "Gateway time: adapters vs full models")
    fig.tight_layout()
    money_note = "" if report.get("prices") else " No price file: times only, no money."
    return fig, ("Top: what training each candidate cost. Bottom: what running the "
                 "recommended adapter on the gateway costs, with one base and an adapter per "
                 "line (blue) against a full model per line (orange)." + money_note)


def _hbars(ax: Axes, names: list[str], values: list, fmt: Callable, title: str,
           colours: list) -> None:
    ax.set_title(title)
    shown = [(n, v, col) for n, v, col in zip(names, values, colours, strict=True) if v is not None]
    if not shown:
        _not_measured(ax)
        return
    ys = range(len(shown))
    ax.barh(ys, [v for _, v, _ in shown], color=[col for *_, col in shown])
    ax.set_yticks(ys, [n for n, _, _ in shown])
    ax.invert_yaxis()
    for y, (_, v, _) in zip(ys, shown, strict=True):
        ax.text(v, y, " " + fmt(v), va="center", fontsize=6.5)
    ax.margins(x=0.35)
    ax.set_xticks([])
    ax.spines["bottom"].set_visible(False)


def _pairs(ax: Axes, running: dict, groups: list[tuple[str, str, str, str]], fmt: Callable,
           title: str) -> None:
    """Grouped bars: per running_cost entry, the adapters' figure (blue) beside the full
    models' (orange). `groups`: (entry, label, adapters' key, full models' key)."""
    ax.set_title(title)
    if not running:
        _not_measured(ax)
        return
    for g, (group, _, *keys) in enumerate(groups):
        entry = running.get(group) or {}
        for side, (key, colour) in enumerate(zip(keys, ("tab:blue", "tab:orange"), strict=True)):
            x, value = g + (side - 0.5) * 0.4, entry.get(key)
            if value is None:
                ax.text(x, 0, NOT_MEASURED, rotation=90, fontsize=6, ha="center",
                        va="bottom", color="grey")
                continue
            ax.bar(x, value, 0.38, color=colour)
            ax.text(x, value, fmt(value), ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(groups)), [label for _, label, *_ in groups])
    handles = [Patch(color="tab:blue", label="one base + adapters"),
               Patch(color="tab:orange", label="a full model per line")]
    ax.legend(handles=handles, loc="upper left", frameon=False)
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.margins(y=0.35)  # room for the legend above the bars


def _not_measured(ax: Axes) -> None:
    ax.text(0.5, 0.5, NOT_MEASURED, ha="center", va="center", transform=ax.transAxes,
            color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


_PLOTS: list[tuple[str, str, Callable[[dict], tuple[Figure, str] | None]]] = [
    ("curves", "Learning curves", _learning_curves),
    ("tradeoff", "Accuracy against size", _tradeoff),
    ("confusion", "Confusion matrix of the recommended adapter", _confusion),
    ("costs", "Training and running cost", _costs),
]
