"""The wire contract's names: one rule each for production line and adapter names, device
ids and the topic prefix, checked at every entry point (config, MQTT commands and topics,
envelopes, the export CLI), so a name one side accepts is never refused, or worse misread,
by another.

A line or adapter name is also an MQTT topic level and part of file names in the gateway's
state, hence: 1-64 letters, digits, '.', '-', '_', starting with a letter or digit ('..',
'.x', 'a/b', '+' and '#' can never be names). A device id is one topic level of every
device topic: 1-64 letters, digits, '-', '_'. The prefix is one or more topic levels.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1-64 letters, digits, '.', '-', '_', starting with a letter or digit"
BASE = "base"  # not an adapter name: what a line runs with no adapter
DEVICE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEVICE_RULE = "1-64 letters, digits, '-', '_' (one topic level)"
PREFIX_PATTERN = r"^[^/+#\s]+(/[^/+#\s]+)*$"
PREFIX_RULE = "topic levels joined by '/', none empty, without '+', '#' or spaces"
_NAME, _DEVICE, _PREFIX = map(re.compile, (NAME_PATTERN, DEVICE_PATTERN, PREFIX_PATTERN))


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _shown(value: object) -> str:
    return repr(value)[:80] if isinstance(value, str) else type(value).__name__


def name_problem(value: object, what: str) -> str | None:
    """Why `value` is not a valid `what` ("line", "adapter"), or None when it is."""
    if not is_name(value):
        return f"{what} name {_shown(value)} is not {NAME_RULE}"
    if what == "adapter" and value == BASE:
        return f"adapter name {BASE!r} is reserved for the base model"
    return None


def device_problem(value: object) -> str | None:
    """Why `value` is not a valid device id (`device.id`, `--device`), or None."""
    if isinstance(value, str) and _DEVICE.fullmatch(value):
        return None
    return f"device id {_shown(value)} is not {DEVICE_RULE}"


def prefix_problem(value: object) -> str | None:
    """Why `value` is not a valid topic prefix (`topics.prefix`, `--prefix`), or None."""
    if isinstance(value, str) and _PREFIX.fullmatch(value):
        return None
    return f"topic prefix {_shown(value)} is not {PREFIX_RULE}"
