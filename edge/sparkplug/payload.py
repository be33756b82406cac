"""Sparkplug B payloads of the edge node, built with Eclipse Tahu's protobuf schema
(sparkplug_b.proto beside this file, compiled to sparkplug_b_pb2.py; see __init__.py).

Metrics are (name, datatype, value) triples; a value of None is sent as is_null, with its
datatype, so a SCADA knows the type of a metric that has no value yet.

    node_birth(bd_seq=3, seq=0, properties={"Properties/Package Version": "0.1.0"})
    device_birth(seq=1, metrics=result_metrics(None, labels, route, drift))   # all null
    device_data(seq=2, metrics=result_metrics(doc, ...), ts_ms=...)          # a result
    node_death(bd_seq=3)                                                      # the will
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError

from ..errors import BadMessage
from .sparkplug_b_pb2 import Payload

# Sparkplug B DataType numbers (sparkplug_b.proto, enum DataType).
INT64, UINT64, DOUBLE, BOOLEAN, STRING = 4, 8, 10, 11, 12
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
# The metrics of one line (a Sparkplug device); scores add one Double per class.
LABEL = "Inference/Label"
MESSAGE_ID = "Inference/Message ID"
LATENCY = "Inference/Latency ms"
SCORE = "Inference/Scores/"  # + class name
ADAPTER = "Model/Adapter"
ADAPTER_VERSION = "Model/Adapter Version"
DRIFT = "Drift/State"

Metric = tuple[str, int, object]  # (name, Sparkplug datatype, value or None)


def now_ms() -> int:
    return int(time.time() * 1000)


def _payload(metrics: Iterable[Metric], seq: int | None, ts_ms: int | None) -> bytes:
    ts = now_ms() if ts_ms is None else ts_ms
    return _stamped_payload([(metrics, ts)], seq, ts)


def _stamped_payload(groups: Iterable[tuple[Iterable[Metric], int]], seq: int | None,
                     ts_ms: int) -> bytes:
    """One payload stamped `ts_ms`; each group's metrics carry that group's timestamp."""
    msg = Payload(timestamp=ts_ms)
    if seq is not None:
        msg.seq = seq
    for metrics, stamp in groups:
        for name, datatype, value in metrics:
            _add_metric(msg, name, datatype, value, stamp)
    return msg.SerializeToString()


def _add_metric(msg: Payload, name: str, datatype: int, value: object, ts_ms: int) -> None:
    m = msg.metrics.add(name=name, datatype=datatype, timestamp=ts_ms)
    if value is None:
        m.is_null = True
    elif datatype in (INT64, UINT64):
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # two's complement, as Tahu does
    elif datatype == DOUBLE:
        m.double_value = float(value)
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    else:
        m.string_value = str(value)


def node_birth(*, bd_seq: int, seq: int, properties: dict[str, str]) -> bytes:
    """NBIRTH: bdSeq (the one of this connection's will), the rebirth control (false) and
    the node's read-only properties (package version, provider ...)."""
    metrics: list[Metric] = [(BD_SEQ, INT64, bd_seq), (REBIRTH, BOOLEAN, False)]
    metrics += [(name, STRING, value) for name, value in properties.items()]
    return _payload(metrics, seq, None)


def node_death(*, bd_seq: int) -> bytes:
    """NDEATH: only bdSeq, no seq (the broker sends it as our will, at a time it decides)."""
    return _payload([(BD_SEQ, INT64, bd_seq)], None, None)


def device_birth(*, seq: int, metrics: Sequence[Metric]) -> bytes:
    return _payload(metrics, seq, None)


def device_data(*, seq: int, results: Sequence[tuple[Sequence[Metric], int]]) -> bytes:
    """DDATA of one or more results of a line, in order, each result's metrics stamped with
    its own time (a result sent after an outage is not dated at its sending); the payload
    carries the last one's."""
    return _stamped_payload(results, seq, results[-1][1])


def result_metrics(doc: dict | None, labels: Sequence[str], adapter: str,
                   version: int | None, drift: str | None, watch_drift: bool) -> list[Metric]:
    """A line's metrics: from a result document (the results topic's JSON) or, with `doc`
    None, the DBIRTH's before any result (inference metrics null). Drift/State only when
    the drift watch is on (`watch_drift`)."""
    doc = doc or {}
    scores = doc.get("scores") or {}
    metrics: list[Metric] = [
        (LABEL, STRING, doc.get("label")),
        (MESSAGE_ID, STRING, doc.get("id")),
        (LATENCY, DOUBLE, doc.get("latency_ms")),
        *((SCORE + name, DOUBLE, scores.get(name)) for name in labels),
        (ADAPTER, STRING, adapter),
        (ADAPTER_VERSION, INT64, version),
    ]
    if watch_drift:
        metrics.append((DRIFT, STRING, drift))
    return metrics


def _value(metric) -> object:
    kind = metric.WhichOneof("value")
    return None if metric.is_null or kind is None else getattr(metric, kind)


def decode_command(payload: bytes) -> list[tuple[str, object]]:
    """(name, value) of each metric of an NCMD or DCMD; BadMessage when it is not a
    Sparkplug B payload."""
    msg = Payload()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise BadMessage(f"not a Sparkplug B payload ({exc or 'undecodable protobuf'})") \
            from None
    return [(m.name, _value(m)) for m in msg.metrics]
