"""Drift monitoring's cost in the pipeline: (c) of benchmarks/pipeline.py again, against two
fresh edge-runtimes on one broker serving the same bundle and line, one with `[drift]
enabled = true` (the capture store on, as shipped) and one with `enabled = false`, in
interleaved short rounds (on, off, then off, on, ...) so that a busy machine weighs on both
alike. Each round and side: closed-loop msg/s, then p99 at a fixed half load (the same
rate for both). Target: median msg/s on / off >= 0.95.

    res = drift_cost(work, port, bundle, sections, line, half_rates, seconds, rounds, ...)
    drift_table(res) -> markdown

The two runtimes differ in prefix and device id only (sensor topics are per line, so a
shared prefix would feed both). The comparison is empty unless the monitor ran: the drift
topic of the "on" runtime must show the line evaluated (state ok / warn / drift, windows
and indicators), and the "off" runtime must publish no drift topic at all; otherwise
RuntimeError.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pipeline_load import SPAN, Payloads, RunningService, measure

from edge.contract import TopicLayout
from edge.contract.topics import ANY
from edge.drift.capture_store import SUFFIX
from export.demo.local_broker import subscriber, write_runtime_config

SIDES = {"on": TopicLayout("bench-on", "gw-bench-on"),
         "off": TopicLayout("bench-off", "gw-bench-off")}
TARGET = 0.95  # median msg/s with drift on / with it off
EVALUATED = ("ok", "warn", "drift")  # states of a line the monitor has evaluated


class DriftDocs:
    """Every drift-topic message of the two runtimes, per side (retained ones included)."""

    def __init__(self, port: int) -> None:
        self.docs: dict[str, list[dict]] = {side: [] for side in SIDES}
        self.client = subscriber(port, [layout.drift(ANY) for layout in SIDES.values()],
                                 self._on_message)

    def _on_message(self, c, userdata, msg) -> None:
        side = next(s for s, layout in SIDES.items()
                    if msg.topic.startswith(layout.prefix + "/"))
        self.docs[side].append(json.loads(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_side(work: Path, port: int, bundle: Path, sections: dict, side: str,
               extra: dict, in_process: bool) -> RunningService:
    """One runtime: `sections` (lines, device, batching, limits, topics) as pipeline.py's,
    this side's prefix and device id, and `extra` sections on top."""
    layout, directory = SIDES[side], work / f"{work.name}-{side}"
    directory.mkdir(parents=True, exist_ok=True)
    topics = {**sections.get("topics", {}), "prefix": layout.prefix}
    config = write_runtime_config(directory, port=port, bundle=bundle, device_id=layout.device,
                                  **{**sections, "topics": topics, **extra})
    return RunningService(config, in_process, directory / "service.log")


def on_off_runs(work: Path, port: int, bundle: Path, sections: dict, line: str,
                half_rates: dict[str, float], seconds: float, rounds: int,
                extra: dict[str, dict], in_process: bool = False) -> list[dict]:
    """Two fresh runtimes, `extra["on"]` and `extra["off"]` sections on top of `sections`:
    for each payload kind (`half_rates`: kind -> the open-loop rate), `rounds` interleaved
    rounds of both sides (on, off, then off, on, ...)."""
    work.mkdir(parents=True, exist_ok=True)
    services = {side: start_side(work, port, bundle, sections, side, extra[side], in_process)
                for side in SIDES}
    runs = []
    try:
        for side, service in services.items():
            service.wait_online(port, SIDES[side].status)
        for kind, rate in half_rates.items():
            payloads = Payloads(kind)
            for r in range(rounds):
                for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    layout = SIDES[side]
                    full, half = measure(port, layout.sensors(line, "imu"),
                                         [layout.results(line), layout.errors], payloads,
                                         seconds, rate=rate, base=r * SPAN)
                    runs.append({"kind": kind, "round": r, "side": side, "closed": full,
                                 "half": half})
    finally:
        for service in services.values():
            service.stop_checked()
    return runs


def drift_cost(work: Path, port: int, bundle: Path, sections: dict, line: str,
               half_rates: dict[str, float], seconds: float, rounds: int,
               in_process: bool = False) -> dict:
    """Drift on against off: the runs, the drift docs seen and the windows the "on" side
    captured."""
    docs = DriftDocs(port)
    try:
        runs = on_off_runs(work / "drift", port, bundle, sections, line, half_rates, seconds,
                           rounds, {side: {"drift": {"enabled": side == "on"}}
                                    for side in SIDES}, in_process)
    finally:
        docs.close()
    capture = work / "drift" / "drift-on" / "state" / "capture"
    res = {"runs": runs, "drift": _checked(docs.docs, line),
           "captured": sum(1 for _ in capture.glob(f"*{SUFFIX}")) if capture.is_dir() else 0}
    res["rows"] = summary(runs)
    return res


def _checked(docs: dict[str, list[dict]], line: str) -> dict:
    """What the drift topics showed; RuntimeError when the "on" runtime never evaluated the
    line (no profile: the comparison would be empty) or the "off" one published anything."""
    if docs["off"]:
        raise RuntimeError(f"drift is off but the runtime published {docs['off'][-1]}")
    evaluated = [d for d in docs["on"] if d.get("line") == line
                 and d.get("state") in EVALUATED and d.get("windows", 0) > 0
                 and d.get("indicators")]
    if not evaluated:
        shown = docs["on"][-1] if docs["on"] else "nothing"
        raise RuntimeError(f"the drift monitor never evaluated line {line}: its drift topic "
                           f"showed {shown}")
    last = evaluated[-1]
    return {"states": sorted({d["state"] for d in evaluated}), "last_state": last["state"],
            "windows": last["windows"], "indicators": last["indicators"],
            "messages": len(docs["on"])}


def summary(runs: list[dict]) -> list[dict]:
    """Per kind: medians over rounds of each side, the on/off ratio of the medians, and
    the range of the per-round ratios."""
    rows = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        side = {s: [r for r in runs if r["kind"] == kind and r["side"] == s] for s in SIDES}
        rate = {s: statistics.median(r["closed"]["rate"] for r in side[s]) for s in SIDES}
        p99 = {s: statistics.median(r["half"]["p99"] for r in side[s]) for s in SIDES}
        paired = [on["closed"]["rate"] / off["closed"]["rate"]
                  for on, off in zip(side["on"], side["off"], strict=True)]
        rows.append({"kind": kind, "rounds": len(paired), "rate": rate, "p99": p99,
                     "half_rate": statistics.median(r["half"]["rate"] for r in side["on"]),
                     "ratio": rate["on"] / rate["off"], "round_ratios": paired,
                     "lost": sum(r[p]["lost"] for r in side["on"] + side["off"]
                                 for p in ("closed", "half")),
                     "errors": sum(r[p]["errors"] for r in side["on"] + side["off"]
                                   for p in ("closed", "half"))})
    return rows


def drift_table(res: dict, seconds: float) -> str:
    """The comparison's paragraph and table (markdown)."""
    drift = res["drift"]
    return (f"Drift monitoring on against off: two fresh edge-runtimes on the same broker, "
            f"bundle and line, `[drift] enabled = true` (defaults: window, thresholds, the "
            f"capture store on) and `false`, in {res['rows'][0]['rounds']} interleaved rounds "
            f"per payload (on, off, then off, on, ...) of {seconds:g} s closed loop and "
            f"{seconds:g} s at half load (half of (c)'s rate above, the same for both); "
            f"medians over rounds. The \"on\" runtime's drift topic showed "
            f"{' / '.join(drift['states'])} (last: {drift['last_state']} after "
            f"{drift['windows']} windows, {drift['messages']} drift messages); it captured "
            f"{res['captured']} windows. Target: on / off >= {TARGET:g}, judged only when "
            "every round is on the same side of it.\n\n"
            + on_off_rows(res["rows"], TARGET))


ON_OFF_HEAD = ("| payload | on msg/s | off msg/s | on / off | per-round on / off | "
               "half load msg/s | on p99 ms, half load | off p99 ms, half load | "
               "lost / errors | target |\n"
               "|---|---:|---:|---:|---|---:|---:|---:|---:|---|\n")


def on_off_rows(rows: list[dict], target: float) -> str:
    """The table of an on / off comparison (summary's rows) against `target`."""
    lines = []
    for r in rows:
        lines.append(f"| {r['kind']} | {r['rate']['on']:,.0f} | {r['rate']['off']:,.0f} | "
                     f"{r['ratio']:.3f} | {min(r['round_ratios']):.2f} .. "
                     f"{max(r['round_ratios']):.2f} | {r['half_rate']:,.0f} | "
                     f"{r['p99']['on']:.1f} | {r['p99']['off']:.1f} | "
                     f"{r['lost']} / {r['errors']} | {on_off_verdict(r, target)} |")
    return ON_OFF_HEAD + "\n".join(lines) + "\n"


def on_off_verdict(row: dict, target: float) -> str:
    """Judged as the pipeline's targets are: only when every round's on / off falls on the
    same side of `target`; otherwise the spread is too wide to say."""
    good = [x >= target for x in row["round_ratios"]]
    if all(good):
        return f"pass (>= {target:g})"
    if not any(good):
        return f"FAIL (< {target:g})"
    return f"cannot judge (rounds on both sides of {target:g})"
