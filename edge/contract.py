"""The wire contract's names: one rule for every production line and adapter name, checked
at every entry point (config, MQTT commands and topics, envelopes, the export CLI), so a
name one side accepts is never refused, or worse misread, by another.

A name is also an MQTT topic level and part of file names in the gateway's state, hence:
1-64 letters, digits, '.', '-', '_', starting with a letter or digit ('..', '.x', 'a/b',
'+' and '#' can never be names).
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1-64 letters, digits, '.', '-', '_', starting with a letter or digit"
BASE = "base"  # not an adapter name: what a line runs with no adapter
_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def name_problem(value: object, what: str) -> str | None:
    """Why `value` is not a valid `what` ("line", "adapter"), or None when it is."""
    if not is_name(value):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        return f"{what} name {shown} is not {NAME_RULE}"
    if what == "adapter" and value == BASE:
        return f"adapter name {BASE!r} is reserved for the base model"
    return None
