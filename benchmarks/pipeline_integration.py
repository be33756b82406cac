"""Plant integration's cost in the pipeline: two fresh edge-runtimes on one broker serving
the same bundle and line, one with Sparkplug B (`[sparkplug]`, alongside the JSON topics, a
SCADA-like subscriber on spBv1.0/#: mosquitto_sub) and Prometheus (`[metrics]`, scraped
every second as a busy Prometheus would) on, and one with both off, in interleaved short
rounds (on, off, then off, on, ...). Target (issue 16): median msg/s on / off >= 0.9.

    res = integration_cost(work, port, bundle, sections, line, half_rates, seconds, rounds)
    integration_table(res, seconds) -> markdown

The comparison is empty unless both ran: the "on" runtime must have published DDATA and
answered scrapes; otherwise RuntimeError.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from pipeline_drift import on_off_rows, on_off_runs, summary

from export.demo.local_broker import free_port

TARGET = 0.9  # median msg/s with Sparkplug and metrics on / with both off
SCRAPE_S = 1.0


class Scraper:
    """GET /metrics every SCRAPE_S on a thread; counts the answers and the failures."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.ok, self.failed, self.bytes = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_S):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    self.bytes += len(answer.read())
                    self.ok += 1
            except OSError:
                self.failed += 1  # before the runtime listens, or refused

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class SparkplugCount:
    """Counts the Sparkplug messages of the "on" runtime by type (NBIRTH, DBIRTH, DDATA), as
    a SCADA host would receive them: `mosquitto_sub` in its own process, so receiving them
    costs the load generator (this process, the benchmark's limit) nothing."""

    PROBE = "spBv1.0/bench/PROBE"  # published until it shows: the subscription is in place

    def __init__(self, port: int, out: Path) -> None:
        self.out, self.counts = out, {}
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
                                      "-t", "spBv1.0/#", "-F", "%t"],
                                     stdout=open(out, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while self.PROBE not in out.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto_sub did not subscribe: {out.read_text()}")
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t",
                            self.PROBE, "-m", "probe"], check=True, timeout=10)
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for topic in self.out.read_text().split():
            kind = topic.split("/")[2]
            if topic != self.PROBE:
                self.counts[kind] = self.counts.get(kind, 0) + 1


DDATA_MODES = ("per_result", "per_batch")  # [sparkplug] ddata: the default first


def integration_cost(work: Path, port: int, bundle: Path, sections: dict, line: str,
                     half_rates: dict[str, float], seconds: float, rounds: int,
                     in_process: bool = False) -> dict:
    """The on / off comparison once per `[sparkplug] ddata` mode."""
    return {mode: _one_mode(work / mode, port, bundle, sections, line, half_rates, seconds,
                            rounds, mode, in_process) for mode in DDATA_MODES}


def _one_mode(work: Path, port: int, bundle: Path, sections: dict, line: str,
              half_rates: dict[str, float], seconds: float, rounds: int, ddata: str,
              in_process: bool) -> dict:
    metrics_port = free_port()
    extra = {"on": {"sparkplug": {"enabled": True, "group_id": "bench", "ddata": ddata},
                    "metrics": {"enabled": True, "port": metrics_port}}, "off": {}}
    work.mkdir(parents=True, exist_ok=True)
    spb, scraper = SparkplugCount(port, work / "sparkplug.topics"), Scraper(metrics_port)
    try:
        runs = on_off_runs(work, port, bundle, sections, line, half_rates, seconds, rounds,
                           extra, in_process)
    finally:
        scraper.close()
        spb.close()
    if not spb.counts.get("DDATA") or not scraper.ok:
        raise RuntimeError(f"the comparison is empty: Sparkplug messages {spb.counts}, "
                           f"scrapes answered {scraper.ok}")
    return {"runs": runs, "rows": summary(runs), "sparkplug": spb.counts,
            "scrapes": scraper.ok, "scrape_bytes": scraper.bytes // max(scraper.ok, 1)}


def integration_table(res: dict, seconds: float) -> str:
    first = res[DDATA_MODES[0]]
    text = (f"Plant integration on against off: two fresh edge-runtimes on the same broker, "
            f"bundle and line, one with `[sparkplug]` (alongside the JSON topics) and "
            f"`[metrics]` on, scraped every {SCRAPE_S:g} s, the other with both off, in "
            f"{first['rows'][0]['rounds']} interleaved rounds per payload of {seconds:g} s "
            f"closed loop and {seconds:g} s at half load; medians over rounds; once per "
            f"`[sparkplug] ddata` mode. Target: on / off >= {TARGET:g}, judged only when "
            "every round is on the same side of it.\n")
    for mode in DDATA_MODES:
        part = res[mode]
        spb = ", ".join(f"{k} {v:,}" for k, v in sorted(part["sparkplug"].items()))
        text += (f"\n`ddata = \"{mode}\"`{' (the default)' if mode == DDATA_MODES[0] else ''}"
                 f": the \"on\" runtime published {spb} and answered {part['scrapes']} "
                 f"scrapes of {part['scrape_bytes']:,} bytes.\n\n"
                 + on_off_rows(part["rows"], TARGET))
    return text
