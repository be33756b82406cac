"""The pilot's report (export/pilot/report.py): every figure of report.json shows in
report.html and report.md as the formatting helpers write it, nulls read "not measured", no
prices means no money, and the HTML renders in headless Chromium (PNG and A4 PDF) with no
console error, no broken image and nothing wider than an A4 page.

The report is a real pilot's report.json (tests/pilot_run.py: a short pilot on real data),
or the report.json PILOT_REPORT_JSON names.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from edge.errors import ExportError
from export.pilot.report import write_reports
from export.pilot.report_format import (
    duration,
    figure_formatter,
    money,
    nbytes,
    numbers,
    pct,
    pct_ci,
    points,
    points_ci,
)
from export.pilot.summary import summary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium): the report's "
                             "rendering is not checked")
A4_TEXT_PX = 688  # 210 mm - 2 x 14 mm margins, at 96 CSS px per inch
SCREEN = (1240, 1754)  # A4's aspect ratio at 150 dpi


@pytest.fixture
def report(pilot_run) -> dict:
    """report.json as the writers get it (through JSON: no numpy scalars, no tuples)."""
    path = os.environ.get("PILOT_REPORT_JSON") or pilot_run[0] / "report.json"
    return json.loads(Path(path).read_text(encoding="utf-8"))


def written(report: dict, out: Path) -> tuple[str, str]:
    paths = write_reports(report, out)
    assert set(paths) == {"html", "md"}
    return (paths["html"].read_text(encoding="utf-8"), paths["md"].read_text(encoding="utf-8"))


class _Text(HTMLParser):
    """The text a reader sees (SVG text included), style content left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.images: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script")
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_text(html: str) -> tuple[str, list[str]]:
    parser = _Text()
    parser.feed(html)
    return "\n".join(parser.parts), parser.images


def missing_figures(report: dict, text: str) -> list[str]:
    """Every figure of `report` the reports show, formatted by its helper, absent from text."""
    missing = []
    for path, value in numbers(report):
        fmt = figure_formatter(path)
        if fmt is None:
            missing.append(f"{'.'.join(path)}: no formatter in report_format.FIGURES")
        elif fmt(value, report) not in text:
            missing.append(f"{'.'.join(path)} = {value!r} as {fmt(value, report)!r}")
    return missing


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def test_every_figure_appears_as_formatted(report, tmp_path):
    html, md = written(report, tmp_path)
    text, _ = html_text(html)
    assert len(list(numbers(report))) > 100  # the walk sees the candidates' figures
    assert missing_figures(report, text) == []
    assert missing_figures(report, md) == []


def test_the_walk_notices_a_figure_the_report_leaves_out(report, tmp_path):
    html, _ = written(report, tmp_path)
    text, _ = html_text(html)
    changed = copy.deepcopy(report)
    changed["candidates"][0]["test"]["accuracy"]["value"] = 0.12345  # not what the HTML says
    changed["candidates"][0]["training"]["wall_s_new"] = 1.0
    problems = missing_figures(changed, text)
    assert any("test.accuracy.value" in p for p in problems)
    assert any("wall_s_new" in p for p in problems)


def test_headline_and_summary(report, tmp_path):
    html, md = written(report, tmp_path)
    text, _ = html_text(html)
    rec = report["recommendation"]
    chosen = next(c for c in report["candidates"] if c["name"] == rec["name"])
    for figure in (points(rec["gain_vs_base"]["value"]), points_ci(rec["gain_vs_base"]["ci95"]),
                   pct_ci(chosen["test"]["accuracy"]["ci95"])):
        summary = text.split("Plots", 1)[0]
        assert figure in summary and figure in md.split("## Plots", 1)[0]
    given = copy.deepcopy(report)
    given["summary"] = "Adopt <the> adapter & save 90% of the disk."
    html, md = written(given, tmp_path / "given")
    assert "Adopt &lt;the&gt; adapter &amp; save 90% of the disk." in html
    assert "Adopt <the> adapter & save 90% of the disk." in md


def test_without_prices_no_money_figures(report, tmp_path):
    unpriced = copy.deepcopy(report)
    unpriced["prices"] = None
    for c in unpriced["candidates"]:
        c["training"]["cost"] = None
    unpriced["summary"] = summary(unpriced)  # what the pilot writes without a price file
    html, md = written(unpriced, tmp_path)
    text, _ = html_text(html)
    currency = (report.get("prices") or {}).get("currency", "EUR")
    assert currency not in text and currency not in md
    assert "no money figures" in text and "no money figures" in md
    assert missing_figures(unpriced, text) == []


def test_running_cost_not_measured(report, tmp_path):
    unmeasured = copy.deepcopy(report)
    unmeasured["running_cost"] = None
    html, md = written(unmeasured, tmp_path)
    text, _ = html_text(html)
    assert "Running cost on the gateway" in text and "Not measured." in text
    assert "Not measured." in md
    assert missing_figures(unmeasured, text) == []


def test_formatting_helpers():
    assert (pct(0.713), pct(0.00012), pct(None)) == ("71.3%", "0.012%", "not measured")
    assert (points(0.35), points(-0.01)) == ("+35.0 pts", "-1.0 pts")
    assert (pct_ci([0.62, 0.8]), points_ci([-0.06, 0.04])) == ("62.0–80.0%", "-6.0 to +4.0 pts")
    assert (nbytes(924), nbytes(51234), nbytes(1650000)) == ("924 B", "50.0 KiB", "1.6 MiB")
    assert (duration(0.194), duration(12.34), duration(512.3)) == ("0.19 s", "12.3 s",
                                                                    "8 min 32 s")
    assert (money(0.0012, "EUR"), money(0.05, "EUR"), money(12.5, "EUR")) == (
        "EUR 0.0012", "EUR 0.05", "EUR 12.50")


def test_rejects_other_versions_and_writes_nothing(report, tmp_path):
    with pytest.raises(ExportError, match="version 2"):
        write_reports({**report, "version": 2}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_markdown_tables_are_well_formed(report, tmp_path):
    _, md = written(report, tmp_path)
    for block in re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M):
        rows = block.strip("\n").split("\n")
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
        assert len(set(cells)) == 1, block
        assert re.fullmatch(r"\|(?:---:?\|)+", rows[1]), rows[1]
    assert "<img" not in md and "![" not in md


# --------------------------------------------------------------------------------------------
# Self-contained, and rendered in Chromium
# --------------------------------------------------------------------------------------------


def static_problems(html: str) -> list[str]:
    """Images that are not decodable data: URIs, SVGs that do not parse, anything fetched."""
    problems = []
    _, images = html_text(html)
    for src in images:
        match = re.fullmatch(r"data:image/[\w+.-]+;base64,([A-Za-z0-9+/=\s]+)", src)
        try:
            Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=False))).verify()
        except (AttributeError, binascii.Error, OSError, SyntaxError):
            problems.append(f"image {src[:40]!r} is not a decodable data: URI")
    for svg in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        try:
            ET.fromstring(svg)
        except ET.ParseError as exc:
            problems.append(f"svg does not parse: {exc}")
    for pattern in (r"<script\b", r"<link\b", r"\b(?:src|href)=\"(?!data:|#)",
                    r"url\((?!['\"]?(?:data:|#))"):
        problems += [f"fetches or runs something: {m!r}" for m in re.findall(pattern, html)]
    return problems


PROBE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.body.querySelectorAll('*:not(svg *)')]
    .filter(el => el.getBoundingClientRect().right > width + 1)
    .map(el => el.tagName + (el.id ? '#' + el.id : '') + ' ' +
               Math.round(el.getBoundingClientRect().right));
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => i.src.slice(0, 40));
  const svgs = [...document.querySelectorAll('svg')].filter(
    s => s.getBoundingClientRect().width > 0).length;
  console.log('PILOT-PROBE ' + JSON.stringify(
    {width, scroll: document.documentElement.scrollWidth, wide, broken, svgs}));
});
</script>"""


def chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium; returns its log (stderr), where console messages land."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def console_messages(log: str) -> list[str]:
    return re.findall(r":CONSOLE[^\]]*\]\s*(.*)", log) + [
        line for line in log.splitlines() if "Uncaught" in line and ":CONSOLE" not in line]


def render_problems(html_path: Path, tmp: Path) -> tuple[list[str], dict]:
    """Console messages and the probe's findings (broken images, elements wider than an A4
    text column, SVGs drawn) for `html_path`, loaded at A4's text width."""
    probed = tmp / f"probed-{html_path.name}"
    probed.write_text(html_path.read_text(encoding="utf-8").replace(
        "</body>", PROBE + "</body>"), encoding="utf-8")
    log = chromium(tmp, f"--screenshot={tmp / 'probe.png'}",
                   f"--window-size={A4_TEXT_PX},1000", probed.as_uri())
    messages = console_messages(log)
    probes = [m for m in messages if "PILOT-PROBE" in m]
    assert probes, f"the probe did not run: {log[-2000:]}"
    found = json.loads(re.search(r"PILOT-PROBE (\{.*\})", probes[0]).group(1).replace('\\"', '"'))
    problems = [m for m in messages if "PILOT-PROBE" not in m]
    problems += [f"broken image {src}" for src in found["broken"]]
    problems += [f"wider than the page: {el}" for el in found["wide"]]
    if found["scroll"] > found["width"]:
        problems.append(f"page scrolls sideways: {found['scroll']} > {found['width']} px")
    return problems, found


@needs_chromium
def test_renders_in_chromium_to_png_and_a4_pdf(report, tmp_path):
    paths = write_reports(report, tmp_path / "pilot")
    html = paths["html"].read_text(encoding="utf-8")
    assert static_problems(html) == []
    problems, found = render_problems(paths["html"], tmp_path)
    assert problems == []
    assert found["svgs"] == html.count("<svg") >= 4  # every plot drawn

    png, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    log = chromium(tmp_path, f"--screenshot={png}", f"--window-size={SCREEN[0]},{SCREEN[1]}",
                   paths["html"].as_uri())
    log += chromium(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer",
                    paths["html"].as_uri())
    assert console_messages(log) == []
    with Image.open(png) as image:
        assert image.size == SCREEN
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # something was drawn
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF")
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", body)
    assert boxes and all(abs(float(w) - 595.3) < 2 and abs(float(h) - 841.9) < 2
                         for w, h in boxes), boxes  # A4 in pt, every page
    assert len(re.findall(rb"/Type\s*/Page\b", body)) >= 3  # summary, plots, details


@needs_chromium
def test_render_checks_catch_errors_and_broken_images(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><p>x</p>"
                   '<img src="data:image/png;base64,iVBORw0KGgoAAAAbroken">'
                   '<div style="width:2000px">wide</div>'
                   "<svg><g></svg>"
                   "<script>undefinedFunction();</script></body></html>", encoding="utf-8")
    html = bad.read_text(encoding="utf-8")
    static = static_problems(html)
    assert any("not a decodable" in p for p in static)
    assert any("svg does not parse" in p for p in static)
    assert any("<script" in p for p in static)
    problems, _ = render_problems(bad, tmp_path)
    assert any("Uncaught" in p for p in problems)
    assert any("broken image" in p for p in problems)
    assert any("wider than the page: DIV" in p for p in problems)
