"""report.md: the report for a wiki, as Markdown tables and no images.

Wikis rarely take a folder of image files along with a page, so the Markdown report carries
no plots: it says where they are (report.html, beside it) and gives the one plot whose
figures a table holds just as well, the confusion matrix. The text is the HTML report's
(export/pilot/report_tables.py).
"""

from __future__ import annotations

from export.pilot.report_tables import (
    Table,
    confusion_table,
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

__all__ = ["render_markdown"]


def render_markdown(report: dict) -> str:
    """The whole report as one Markdown document (GitHub / GitLab flavoured tables)."""
    line = (report.get("line") or {}).get("train", "")
    parts = [
        f"# Pilot report: {_inline(str(line))}",
        f"_Created {report.get('created')} by edge-adapters {report.get('package_version')}_",
        "## Summary", _inline(summary_text(report)),
        _table(Table("", ["Key figure", "Value", ""],
                     [[h.label, f"**{h.value}**", h.detail] for h in headline(report)])),
        "## Plots",
        "The learning curves, accuracy against size and the cost bars are in `report.html` "
        "beside this file (one self-contained file: open it in a browser, or print it).",
        "## Details",
        f"**How the recommendation was chosen:** {_inline(rule_text(report))}",
    ]
    for table in (results_table(report), training_table(report), recall_table(report),
                  confusion_table(report)):
        if table is not None:
            parts += [f"### {table.title}", _table(table)] + ([table.note] if table.note else [])
    skipped = skipped_table(report)
    parts += ([f"### {skipped.title}", _table(skipped)] if skipped else
              ["### Skipped candidates", "None: every candidate ran."])
    running = running_cost_table(report)
    parts += ([f"### {running.title}", _table(running), running.note] if running else
              ["### Running cost on the gateway", "Not measured."])
    setup = setup_table(report)
    parts += [f"### {setup.title}", _table(Table("", ["", ""], setup.rows))]
    commands = "\n".join(str(c) for c in report.get("commands") or [])
    parts += ["## Reproduce", "```sh\n" + (commands or "# no commands recorded") + "\n```"]
    return "\n\n".join(parts) + "\n"


def _table(table: Table) -> str:
    numeric = table.numeric or [False] * len(table.headers)
    lines = ["| " + " | ".join(_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A table cell: pipes escaped, one line."""
    return _inline(text).replace("|", "\\|") or " "


def _inline(text: str) -> str:
    return " ".join(text.split())
