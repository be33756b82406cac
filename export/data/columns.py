"""`TableColumns`: which columns of a CSV or Parquet file hold what (docs/DATA.md).

Every field left None is inferred from the column names and echoed back. Kept free of
pyarrow so that the command line can build one before any file is read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

# field -> the command-line flag that sets it (error messages name the flag to change)
FLAGS = {
    "label": "--label-column",
    "window": "--window-column",
    "channel": "--channel-column",
    "time": "--time-column",
    "value": "--value-column",
    "labels_file": "--labels",
}

# Names a column is recognised by (case-insensitive) when its option is not given.
INFERRED_NAMES = {
    "label": ("label", "labels", "class", "class_label", "target", "y", "category"),
    "window": ("window", "window_id", "case", "case_id", "series", "series_id", "sample_id",
               "id"),
    "channel": ("channel", "channel_name", "sensor", "signal", "variable", "tag", "dim",
                "dimension"),
    "time": ("time", "t", "ts", "timestamp", "datetime", "step", "time_step", "index"),
    "value": ("value", "val", "reading", "measurement"),
}


@dataclass(frozen=True)
class TableColumns:
    """Column names of a table (None: inferred). Long shape: `window`, `channel`, `time`,
    `value`; labels in `label` or in `labels_file` (CSV/Parquet: window id -> label). Wide
    shape: `label` and, optionally, `window` (ids, used for `labels_file` and messages)."""

    label: str | None = None
    window: str | None = None
    channel: str | None = None
    time: str | None = None
    value: str | None = None
    labels_file: str | Path | None = None

    @property
    def names_long_shape(self) -> bool:
        """True when an option only the long shape has is given."""
        return any(v is not None for v in (self.channel, self.time, self.value))

    def given(self) -> dict[str, str]:
        """The column options that are set: field -> column name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "labels_file" and getattr(self, f.name) is not None}
