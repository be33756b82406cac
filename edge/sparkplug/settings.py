"""[sparkplug]: the gateway as a Sparkplug B edge node (docs/MQTT.md, "Sparkplug B").

Kept beside the node rather than in edge/config.py, which only holds the field; this module
imports nothing of edge/ so config.py can import it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

ID_RULE = "1-128 characters, none of '+', '/', '#' (Sparkplug B topic ids)"


def id_problem(value: object) -> str | None:
    """Why `value` is not a Sparkplug group, edge node or device id, or None. The spec
    forbids only the MQTT reserved characters; control characters and spaces are refused
    too (a topic level a person cannot read back is a support call)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        return f"{value!r} is not {ID_RULE}"
    if any(c in "+/#" or c.isspace() or not c.isprintable() for c in value):
        return f"{value!r} is not {ID_RULE} (nor spaces or control characters)"
    return None


def _sparkplug_id(value: str) -> str:
    if id_problem(value):
        raise PydanticCustomError("sparkplug_id", "not a Sparkplug id: {rule}",
                                  {"rule": ID_RULE})
    return value


SparkplugId = Annotated[str, AfterValidator(_sparkplug_id)]


class SparkplugSettings(BaseModel):
    """[sparkplug]: publish results as a Sparkplug B edge node (each line a device)."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(False, description="be a Sparkplug B edge node on a second "
                                "MQTT connection (NBIRTH/DBIRTH/DDATA, NDEATH as its will)")
    group_id: SparkplugId = Field("edge-adapters", description="Sparkplug group id: "
                                  "spBv1.0/<group_id>/...; no '+', '/', '#'")
    edge_node_id: SparkplugId | None = Field(None, description="Sparkplug edge node id; "
                                             "unset = device.id")
    mode: Literal["alongside", "instead"] = Field(
        "alongside", description="alongside = results on the JSON topics and in Sparkplug; "
        "instead = results only in Sparkplug (status, errors, stats stay JSON)")
    ddata: Literal["per_result", "per_batch"] = Field(
        "per_result", description="per_result = one DDATA per result; per_batch = one DDATA "
        "per line per inference batch, holding each result's metrics with that result's "
        "timestamp, in order (far fewer messages under load; the host must take several "
        "values of a metric in one payload)")
    queue: int = Field(10_000, ge=1, le=1_000_000, description="results held in memory "
                       "while the Sparkplug connection is down; past it the oldest are "
                       "dropped, with a warning")
