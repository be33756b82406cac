"""The paragraph a plant manager reads first, and the commands that reproduce the pilot, both
written from report.json's own figures (formatted here, never recomputed)."""

from __future__ import annotations

import shlex
from typing import Any

__all__ = ["commands", "summary"]


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f}"


def _size(n: float) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def summary(report: dict) -> str:
    """One paragraph: recommendation, accuracy gain with its interval, training cost, running
    cost saved, what the budget left out."""
    rec = report["recommendation"]
    if rec is None:
        return ("No adapter finished within the budget, so there is no recommendation; "
                f"{_budget(report)} Give a larger --budget-minutes.")
    by_name = {c["name"]: c for c in report["candidates"]}
    chosen, full = by_name[rec["name"]], by_name.get("full")
    parts = [_choice(rec, chosen), _accuracy(report, rec, chosen), _training(chosen, full),
             _running(report.get("running_cost")), _budget(report)]
    return " ".join(p for p in parts if p)


def _choice(rec: dict, chosen: dict) -> str:
    what = (f"Recommended: {chosen['name']}, a {chosen['method']} adapter of "
            f"{_size(chosen['adapter_bytes'])} per line training "
            f"{_pct(chosen['trainable_fraction'])} of the base's parameters")
    if not rec["within_margin"]:
        return (f"{what}: no adapter came within {100 * rec['margin']:.1f} points of the best "
                "validation accuracy, so this is the best adapter, not a small one.")
    why = "the default adapter" if chosen.get("default") else "the smallest adapter"
    return (f"{what}: {why}, and on validation within the noise of the best candidate "
            f"({_points(rec['vs_best']['difference'])} points, margin "
            f"{100 * rec['vs_best']['margin']:.1f}).")


def _accuracy(report: dict, rec: dict, chosen: dict) -> str:
    acc = chosen["test"]["accuracy"]
    lo, hi = acc["ci95"]
    text = (f"On the line's {report['line']['n_test']} test windows it scores "
            f"{_pct(acc['value'])} (95% interval {_pct(lo)} to {_pct(hi)})")
    gain = rec["gain_vs_base"]
    if gain is not None:
        label = "the base as it is" if gain["baseline"] == "base" else "the linear probe"
        text += (f", {_points(gain['value'])} points against {label} "
                 f"({_points(gain['ci95'][0])} to {_points(gain['ci95'][1])})")
    full = rec["vs_full"]
    if full is not None:
        verdict = ("a real difference" if full["distinguishable"]
                   else "not distinguishable on this test set")
        text += (f", and {_points(full['difference'])} points against the full fine-tune "
                 f"({_points(full['ci95'][0])} to {_points(full['ci95'][1])}: {verdict})")
    return text + "."


def _training(chosen: dict, full: dict | None) -> str:
    t = chosen["training"]
    runs = len(t["epochs_run"])
    text = (f"Training it took {t['wall_s']:.1f} s ({t['cpu_s']:.1f} CPU seconds) for "
            f"{runs} seed{'s' if runs != 1 else ''}")
    if t["cost"] is not None:
        text += f", {t['cost']['amount']:.4f} {t['cost']['currency']}"
    if full is None:
        return text + "."
    f = full["training"]
    per_run, full_per_run = t["wall_s"] / max(runs, 1), f["wall_s"] / max(len(f["epochs_run"]), 1)
    speed = ("no faster than the full fine-tune at this model size"
             if per_run >= 0.9 * full_per_run else
             f"{full_per_run / per_run:.1f} times faster than the full fine-tune")
    return (f"{text}; a run took {per_run:.1f} s against {full_per_run:.1f} s for the full "
            f"fine-tune ({speed}), holding {_size(t['optimizer_state_bytes'])} of optimizer "
            f"state against {_size(f['optimizer_state_bytes'])}.")


def _running(running: dict | None) -> str:
    if running is None:
        return "Running cost was not measured."
    n, disk, per_line = running["lines"], running["disk_bytes"], running["bytes_per_line"]
    return (f"For {n} lines, one base and {n} adapters take {_size(disk['attached'])} of "
            f"gateway disk against {_size(disk['merged'])} for {n} models, and each line ships "
            f"{_size(per_line['adapter'])} instead of {_size(per_line['full_model'])}.")


def _budget(report: dict) -> str:
    budget = report["budget"]
    text = (f"The search ran {len(report['candidates'])} candidates in "
            f"{budget['used_s']:.0f} s of its {60 * budget['minutes']:.0f} s budget")
    left_out = [s["candidate"] for s in budget["skipped"]
                if s["reason"].startswith("budget: not run")]
    cut = len(budget["skipped"]) - len(left_out)
    if left_out:
        text += f"; it left out {len(left_out)} for lack of time ({left_out[0]} first)"
    if cut:
        text += f"; {cut} cut short (fewer seeds, or stopped at the deadline)"
    return text + "."


def commands(options: dict[str, Any], out: str) -> list[str]:
    """The pilot's command line as run, then how its adapter goes to a gateway."""
    line = ["edge-export", "pilot"]
    if options["base"] != "reference":
        line += ["--base", options["base"]]
    for flag in ("weights", "data", "test_data", "budget_minutes", "prices", "lines", "seeds",
                 "threads", "epochs", "patience"):
        if options.get(flag) is not None:
            line += [f"--{flag.replace('_', '-')}", str(options[flag])]
    line += ["--out", out]
    base = [] if options["base"] == "reference" else ["--base", options["base"]]
    attach = ["edge-export", "attach", *base, "--weights", str(options["weights"]),
              "--adapter", f"{out}/adapter", "--name", "line", "--out", f"{out}-bundle"]
    inspect = ["edge-export", "inspect", f"{out}/adapter"]
    return [shlex.join(line), shlex.join(inspect), shlex.join(attach)]
