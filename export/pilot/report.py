"""The pilot's report files: report.html and report.md, written from the report dict (the
report.json contract, version 1). report.json itself is the pipeline's to write.

Both documents are rendered before either is written, and each is written atomically: a
failure leaves no half-written report.
"""

from __future__ import annotations

from pathlib import Path

from edge.bundle import atomic_write
from edge.errors import ExportError
from export.outputs import shared_mode

__all__ = ["REPORT_VERSION", "write_reports"]

REPORT_VERSION = 1
_REQUIRED = ("line", "base", "budget", "candidates", "recommendation")


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write OUT_DIR/report.html and OUT_DIR/report.md; returns {"html": path, "md": path}.

    Raises ExportError when `report` is not a version-1 report dict.
    """
    _check(report)
    # Imported here: matplotlib loads only when a report is written (not for `--help`).
    from export.pilot.report_html import render_html
    from export.pilot.report_md import render_markdown

    out_dir = Path(out_dir)
    texts = {"html": render_html(report), "md": render_markdown(report)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"report.{kind}" for kind in texts}
    for kind, text in texts.items():
        atomic_write(paths[kind], text.encode("utf-8"))
        paths[kind].chmod(shared_mode())  # mkstemp gives 0600; readers need the umask's mode
    return paths


def _check(report: dict) -> None:
    version = report.get("version") if isinstance(report, dict) else None
    if version != REPORT_VERSION:
        raise ExportError(f"report version {version!r}: this writer reads version "
                          f"{REPORT_VERSION} (regenerate the pilot's report.json)")
    missing = [key for key in _REQUIRED if key not in report]
    if missing:
        raise ExportError(f"report.json lacks {', '.join(missing)}")
