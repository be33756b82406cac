"""report.html: one self-contained file (CSS inline, plots as inline SVG, no script, nothing
fetched), readable on screen and printed on A4.

The text comes from export/pilot/report_tables.py (shared with the Markdown report), the
plots from export/pilot/plots.py; this module only adds the markup.
"""

from __future__ import annotations

from html import escape

from export.pilot.plots import Plot, plots
from export.pilot.report_tables import (
    Headline,
    Table,
    headline,
    recall_table,
    results_table,
    rule_text,
    running_cost_table,
    setup_table,
    skipped_table,
    summary_text,
    training_table,
)

__all__ = ["render_html"]

# A4 is 210 mm wide; with 14 mm margins the text is 182 mm (~688 CSS px). Every block scales
# to that width: SVGs by their viewBox, tables by wrapping, commands by pre-wrap.
CSS = """
@page { size: A4; margin: 14mm 14mm 16mm 14mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 10pt/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1b1f24;
       margin: 0 auto; max-width: 190mm; padding: 8mm 6mm; }
h1 { font-size: 17pt; margin: 0 0 2pt; }
h2 { font-size: 13pt; margin: 16pt 0 6pt; border-bottom: 1px solid #c8ced6;
     break-after: avoid; page-break-after: avoid; }
h3 { font-size: 10.5pt; margin: 12pt 0 4pt; break-after: avoid; page-break-after: avoid; }
p { margin: 4pt 0; }
.meta { color: #57606a; font-size: 8.5pt; }
.summary { font-size: 10.5pt; background: #f3f6f9; border-left: 3pt solid #2f6fb3;
           padding: 6pt 10pt; }
.headline { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 6pt;
            margin: 8pt 0; break-inside: avoid; page-break-inside: avoid; }
.kpi { border: 1px solid #d5dbe2; border-radius: 4pt; padding: 5pt 7pt; }
.kpi .label { font-size: 7.5pt; text-transform: uppercase; letter-spacing: .04em;
              color: #57606a; }
.kpi .value { font-size: 13pt; font-weight: 600; overflow-wrap: anywhere; }
.kpi .detail { font-size: 7.5pt; color: #3d444d; }
figure { margin: 10pt 0; break-inside: avoid; page-break-inside: avoid; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 8pt; color: #3d444d; margin-top: 3pt; }
table { width: 100%; border-collapse: collapse; font-size: 7.5pt; margin: 4pt 0;
        table-layout: auto; }
th, td { border-bottom: 1px solid #dde2e8; padding: 2.5pt 4pt; text-align: left;
         vertical-align: top; overflow-wrap: break-word; }
table.kv td { overflow-wrap: anywhere; }  /* paths and fingerprints: break anywhere */
table.kv td:first-child { white-space: nowrap; width: 1%; color: #3d444d; }
th { background: #eef1f5; font-weight: 600; }
td.num, th.num { text-align: right; }
tr { break-inside: avoid; page-break-inside: avoid; }
thead { display: table-header-group; }
tr.chosen td { background: #fff6d6; font-weight: 600; }
.note { font-size: 7.5pt; color: #57606a; }
pre { white-space: pre-wrap; overflow-wrap: break-word; font: 8pt/1.4 "DejaVu Sans Mono",
      monospace; background: #f3f6f9; padding: 6pt 8pt 6pt 22pt; border-radius: 3pt; }
pre .cmd { display: block; text-indent: -16pt; margin-bottom: 3pt; }  /* wrapped: indented */
section.plots { break-before: page; page-break-before: always; }
@media print { body { padding: 0; max-width: none; } }
"""


def render_html(report: dict) -> str:
    """The whole report as one HTML document."""
    line = (report.get("line") or {}).get("train", "")
    body = "\n".join([
        f"<header><h1>Pilot report: {escape(str(line))}</h1>",
        f'<p class="meta">Created {escape(str(report.get("created")))} by edge-adapters '
        f'{escape(str(report.get("package_version")))}</p></header>',
        _summary(report), _plots(plots(report)), _details(report), _commands(report),
    ])
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>Pilot report: {escape(str(line))}</title>\n<style>{CSS}</style>\n"
            f"</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _summary(report: dict) -> str:
    cards = "\n".join(_kpi(h) for h in headline(report))
    return (f'<section id="summary"><h2>Summary</h2>\n<p class="summary">'
            f"{escape(summary_text(report))}</p>\n<div class=\"headline\">\n{cards}\n</div>"
            "</section>")


def _kpi(item: Headline) -> str:
    return (f'<div class="kpi"><div class="label">{escape(item.label)}</div>'
            f'<div class="value">{escape(item.value)}</div>'
            f'<div class="detail">{escape(item.detail)}</div></div>')


def _plots(figures: list[Plot]) -> str:
    parts = ['<section class="plots" id="plots"><h2>Plots</h2>']
    for plot in figures:
        parts.append(f'<figure class="{plot.key}" id="plot-{plot.key}">'
                     f"<h3>{escape(plot.title)}</h3>\n{plot.svg}\n"
                     f"<figcaption>{escape(plot.caption)}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _details(report: dict) -> str:
    chosen = (report.get("recommendation") or {}).get("name")
    rule = (f"<p><strong>How the recommendation was chosen:</strong> "
            f"{escape(rule_text(report))}</p>")
    # The confusion matrix is a plot here (its counts are the plot's text); report.md has
    # it as a table.
    tables = [results_table(report), training_table(report), recall_table(report),
              skipped_table(report)]
    parts = ['<section id="details"><h2>Details</h2>', rule]
    parts += [_table(t, chosen) for t in tables if t is not None]
    if skipped_table(report) is None:
        parts.append("<h3>Skipped candidates</h3><p>None: every candidate ran.</p>")
    running = running_cost_table(report)
    parts.append(_table(running, chosen) if running else
                 "<h3>Running cost on the gateway</h3><p>Not measured.</p>")
    parts.append(_table(setup_table(report), None, header=False, css="kv"))
    parts.append("</section>")
    return "\n".join(parts)


def _table(table: Table, chosen: str | None, header: bool = True, css: str = "") -> str:
    numeric = table.numeric or [False] * len(table.headers)
    head = ("<thead><tr>" + "".join(f'<th{_num(n)}>{escape(h)}</th>'
                                     for h, n in zip(table.headers, numeric, strict=True))
            + "</tr></thead>") if header else ""
    rows = []
    for row in table.rows:
        css = ' class="chosen"' if chosen is not None and row[0] == chosen else ""
        cells = "".join(f"<td{_num(n)}>{escape(cell)}</td>"
                        for cell, n in zip(row, numeric, strict=True))
        rows.append(f"<tr{css}>{cells}</tr>")
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    table_css = f' class="{css}"' if css else ""
    return (f'<h3 id="{table.key}">{escape(table.title)}</h3>\n<table{table_css}>{head}<tbody>'
            + "\n".join(rows) + f"</tbody></table>{note}")


def _num(numeric: bool) -> str:
    return ' class="num"' if numeric else ""


def _commands(report: dict) -> str:
    commands = [str(c) for c in report.get("commands") or []] or ["(no commands recorded)"]
    # One block per command: a wrapped command continues indented, and copies as one line.
    text = "".join(f'<span class="cmd">{escape(c)}</span>' for c in commands)
    return (f'<section id="reproduce"><h2>Reproduce</h2><p>The exact commands of this pilot, '
            f"in order:</p>\n<pre>{text}</pre></section>")
