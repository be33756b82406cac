"""The wire contract between the workstation tools and the gateway, in one place:

    names.py          the rules for line and adapter names, device ids and the topic prefix
    topics.py         the topic layout: every topic either side publishes or subscribes to
    preprocessing.py  the preprocessing record and the one normalisation that applies it
    shapes.py         the sample shape ((F,), (C, L), (C, H, W)) and its names in messages

The config, the control plane, the adapter store, `edge-export push`/`revoke` and the demo
all use these, so a name, a topic or a record one side accepts is what the other expects.
"""

from __future__ import annotations

from .names import (
    BASE,
    DEVICE_PATTERN,
    DEVICE_RULE,
    NAME_PATTERN,
    NAME_RULE,
    PREFIX_PATTERN,
    PREFIX_RULE,
    device_problem,
    is_name,
    name_problem,
    prefix_problem,
)
from .preprocessing import STD_FLOOR, Normalizer, Preprocessing, check_stats
from .topics import ADAPTER_COMMANDS, ANY, DEFAULT_PREFIX, SENSOR_FILTER, TopicLayout, line_of

__all__ = [
    "ADAPTER_COMMANDS",
    "ANY",
    "BASE",
    "DEFAULT_PREFIX",
    "DEVICE_PATTERN",
    "DEVICE_RULE",
    "NAME_PATTERN",
    "NAME_RULE",
    "PREFIX_PATTERN",
    "PREFIX_RULE",
    "SENSOR_FILTER",
    "STD_FLOOR",
    "Normalizer",
    "Preprocessing",
    "TopicLayout",
    "check_stats",
    "device_problem",
    "is_name",
    "line_of",
    "name_problem",
    "prefix_problem",
]
