"""`@table_options`: the column options of CSV / Parquet data (docs/DATA.md), shared by
every command that reads `--data` / `--test-data`.

The decorated command gets one keyword, `columns`, a `TableColumns` (names left None are
inferred), and while it runs, what each file was read as is echoed on stderr (the
`export.data` logger's lines).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import click

from export.data.columns import TableColumns

_OPTIONS = (
    ("label", "--label-column", "Column of the window labels  [default: inferred]"),
    ("window", "--window-column", "Column of the window ids (long shape)  [default: inferred]"),
    ("channel", "--channel-column", "Column of the channel names (long shape)  "
                                    "[default: inferred; none: one channel]"),
    ("time", "--time-column", "Column of the sample times, numbers or ISO 8601 (long shape)  "
                              "[default: inferred; none: row order]"),
    ("value", "--value-column", "Column of the sample values (long shape)  [default: inferred]"),
)


class _EchoHandler(logging.Handler):
    """Log records as lines on the current stderr (click's, so test runners capture them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextlib.contextmanager
def echo_data_descriptions() -> Iterator[None]:
    """While inside, show the `export.data` logger's lines (what each data file was read as)
    on stderr."""
    log, handler = logging.getLogger("export.data"), _EchoHandler()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def table_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --label-column, --window-column, --channel-column, --time-column, --value-column
    and --labels to a click command, passed to it as `columns=TableColumns(...)`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        picked = {name: kwargs.pop(f"{name}_column") for name, _, _ in _OPTIONS}
        labels = kwargs.pop("labels")
        with echo_data_descriptions():
            return command(*args, columns=TableColumns(**picked, labels_file=labels), **kwargs)

    wrapper = click.option(
        "--labels", type=click.Path(dir_okay=False),
        help="CSV/Parquet file of window id -> label, for data without a label column.",
    )(wrapper)
    for name, flag, help_text in reversed(_OPTIONS):
        wrapper = click.option(flag, f"{name}_column", metavar="NAME", help=help_text)(wrapper)
    return wrapper
