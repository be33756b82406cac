"""The JSON payloads of the MQTT contract (docs/MQTT.md), one TypedDict each: the builders
annotate the dicts they send with these types (so a type checker ties code and contract),
and edge/contract/schemas.py turns the same types into the JSON Schemas in docs/schemas/.

Publishing stays plain dicts and json.dumps: nothing here runs per message.

    in   SensorWindow      <prefix>/<line>/sensors/<sensor>       (JSON windows; binary: no JSON)
    out  Result            <prefix>/<line>/inference
    out  ErrorReport       <prefix>/<device>/errors
    out  Status            <prefix>/<device>/status         retained; online | offline
    out  Stats             <prefix>/<device>/stats
    out  DriftState        <prefix>/<device>/drift/<line>   retained
    out  Event             <prefix>/<device>/events         drift changes (more types may come)
    out  AdapterState      <prefix>/<device>/adapters/state retained
    in   ActivateCommand, RollbackCommand, RevokeCommand   <prefix>/<device>/adapters/<command>
    in   EnvelopeHeader    the JSON header inside an adapter envelope (adapters/put/<name>)

Outgoing objects are closed (additionalProperties false): a field the code adds without
adding it here fails the schema test. Incoming windows are open (the gateway ignores keys it
does not read); commands are closed (the gateway refuses unknown fields).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypeAliasType, TypedDict

from ..card import Card
from ..drift.profile import DriftProfile
from .names import NAME_PATTERN
from .preprocessing import Preprocessing

MAX_ID_CHARS = 128  # edge/codec.py: a window's id, echoed in its result
MAX_VERSION = 2**31 - 1  # edge/adapter_checks.py: adapter versions are 1..MAX_VERSION
CLOSED = ConfigDict(extra="forbid")

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="a line or adapter name: 1-64 "
                                                              "letters, digits, '.', '-', '_', "
                                                              "starting with a letter or digit")]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION, description="an adapter version")]
UnixTime = Annotated[float, Field(description="seconds since 1970-01-01 UTC")]
# Nested arrays of numbers: a flat (L,) list, (C, L) channels, and deeper shapes for models
# that take them; the shape itself is the bundle's (checked by the gateway, not the schema).
Numbers = TypeAliasType("Numbers", "list[float] | list[Numbers]")


# -- sensor windows (in) ----------------------------------------------------------------------
class SensorWindow(TypedDict):
    """One JSON sensor message. The shape of `values` is the bundle's sample shape: F numbers
    for a feature vector, C lists of L samples for a window (a one-channel sensor may send a
    flat list of L numbers), C x H x W nested lists for an image.
    Numbers must be finite (JSON has no NaN or Infinity). Binary windows (raw float32, MQTT v5
    content type application/octet-stream) are not JSON and carry id, ts and shape as user
    properties."""

    id: Annotated[str | int, Field(min_length=1, max_length=MAX_ID_CHARS,
                                   description="the message id, echoed in the result")]
    ts: NotRequired[Annotated[float | None, Field(description="a time stamp, echoed")]]
    values: Annotated[Numbers, Field(description="the sample: [F], [C][L] or [C][H][W] "
                                                  "nested lists of numbers")]


# -- results and errors (out) -----------------------------------------------------------------
@with_config(CLOSED)
class Result(TypedDict):
    """One result per sensor window."""

    id: Annotated[str, Field(description="the window's id (an integer id comes back as text)")]
    ts: Annotated[float | None, Field(description="the window's ts, echoed (null: none)")]
    line: Annotated[str, Field(description="the production line (the topic's line level)")]
    adapter: Annotated[str, Field(description="the serving adapter, or \"base\"")]
    adapter_version: Annotated[int | None, Field(description="null for the base model")]
    label: Annotated[str | None, Field(description="the class with the highest score")]
    scores: Annotated[dict[str, float | None], Field(
        description="softmax probability per class of the serving model")]
    latency_ms: Annotated[float, Field(ge=0, description="window arrival -> result handed to "
                                                         "the MQTT client")]


@with_config(CLOSED)
class ErrorReport(TypedDict):
    """One report per message or command the gateway could not use (and per internal
    failure it must tell someone about)."""

    id: Annotated[str | None, Field(description="the message's id where it could be read")]
    topic: Annotated[str, Field(description="the topic the refused message came on (or the "
                                            "file, for a dropped adapter or an outbox error)")]
    reason: Annotated[str, Field(description="one line: what was wrong")]
    ts: UnixTime


# -- status (out, retained) -------------------------------------------------------------------
@with_config(CLOSED)
class RouteRef(TypedDict):
    """The model a line runs on."""

    adapter: Annotated[str, Field(description="an adapter name, or \"base\"")]
    version: int | None


@with_config(CLOSED)
class AdapterRef(TypedDict):
    name: str
    version: int


@with_config(CLOSED)
class OnlineStatus(TypedDict):
    """Published retained on every (re)connect once subscribed."""

    state: Literal["online"]
    device: str
    ts: UnixTime
    package_version: str
    onnxruntime_version: str
    provider: Annotated[str, Field(description="the execution provider the models run on")]
    providers: Annotated[list[str], Field(description="the providers that started, in order")]
    placement: Annotated[dict[str, int], Field(description="warm-up nodes per provider")]
    adapters_on_device: Annotated[bool, Field(description="adapter tensors bound on the GPU")]
    static_batch: Annotated[int | None, Field(description="the bundle's fixed batch, or null")]
    precision: Literal["fp32", "fp16"]
    routes: Annotated[dict[str, RouteRef], Field(description="line -> model; \"*\": every "
                                                             "line (no lines configured)")]
    adapters: list[AdapterRef]
    bundle: Annotated[str, Field(description="the bundle directory")]


@with_config(CLOSED)
class OfflineStatus(TypedDict):
    """Published retained on a clean stop (reason "shutdown", with ts), and by the broker as
    the last will (reason "connection lost", no ts: the broker decides when)."""

    state: Literal["offline"]
    device: str
    ts: NotRequired[UnixTime]
    reason: str


Status = Annotated[OnlineStatus | OfflineStatus, Field(discriminator="state")]


# -- stats (out) ------------------------------------------------------------------------------
@with_config(CLOSED)
class Percentiles(TypedDict):
    p50: float | None
    p99: float | None


@with_config(CLOSED)
class BatchSize(TypedDict):
    mean: float
    max: int


@with_config(CLOSED)
class CaptureCounts(TypedDict):
    stored: int
    dropped: int


@with_config(CLOSED)
class OutboxCounts(TypedDict):
    depth: Annotated[int | None, Field(description="waiting for the broker now (null: no "
                                                   "outbox)")]
    dropped: int
    full: int
    errors: int


@with_config(CLOSED)
class Stats(TypedDict):
    """Counters over the last interval (topics.stats_interval_s), QoS 0."""

    device: str
    ts: UnixTime
    interval_s: float
    provider: str | None
    messages_per_s: float
    received: int
    results: int
    errors: int
    queue_full: int
    latency_ms: Percentiles
    queue_depth: int
    queue_bound: int
    batches: int
    batch_size: BatchSize
    duplicates: int
    drift_changes: int
    capture: CaptureCounts
    outbox: OutboxCounts
    worker: NotRequired[int]  # with [workers] count > 1: which worker process sent it


# -- drift (out, retained) and events (out) ---------------------------------------------------
DriftLevel = Literal["ok", "warn", "drift"]


@with_config(CLOSED)
class Indicators(TypedDict, total=False):
    """The indicators over the line's last drift.window windows (ood_share only for bundles
    that output features and profiles that carry their statistics)."""

    input_psi: float
    class_psi: float
    score_psi: float
    score_drop: float
    ood_share: float


@with_config(CLOSED)
class Threshold(TypedDict):
    warn: float
    drift: float


@with_config(CLOSED)
class Thresholds(TypedDict, total=False):
    input_psi: Threshold
    class_psi: Threshold
    score_psi: Threshold
    score_drop: Threshold
    ood_share: Threshold


@with_config(CLOSED)
class DriftState(TypedDict):
    """A line's drift state; "unknown" (with a reason) when its model carries no profile."""

    line: str
    adapter: str
    version: int | None
    state: Literal["ok", "warn", "drift", "unknown"]
    since: Annotated[str | None, Field(description="ISO time of the last change")]
    since_ts: NotRequired[UnixTime]
    windows: Annotated[int, Field(ge=0, description="windows this monitor has seen")]
    indicators: Indicators
    thresholds: Thresholds
    reason: NotRequired[str]


@with_config(CLOSED)
class DriftChange(TypedDict):
    """A drift state change as the watch builds it; the events topic adds `ts`."""

    type: Literal["drift"]
    line: str
    adapter: str
    version: int | None
    previous: DriftLevel
    state: DriftLevel
    windows: int
    indicator: Annotated[str, Field(description="the indicator furthest past its threshold")]
    value: float
    topic: Annotated[str, Field(description="the line's drift topic")]


@with_config(CLOSED)
class DriftEvent(DriftChange):
    """A line's drift state changed."""

    ts: UnixTime


Event = DriftEvent  # one type today; a union discriminated on "type" when more come


# -- adapter state (out, retained) -------------------------------------------------------------
@with_config(CLOSED)
class LineRoute(TypedDict):
    adapter: Annotated[str, Field(description="an adapter name, or \"base\"")]
    version: int | None
    sha256: NotRequired[str | None]
    follow: NotRequired[Literal["latest", "pinned"]]
    since: NotRequired[Annotated[UnixTime, Field(description="when this model took over")]]


@with_config(CLOSED)
class CardEssentials(TypedDict):
    licence: str | None
    author: str | None
    data_fingerprint: str | None
    created: str | None


@with_config(CLOSED)
class HeldAdapter(TypedDict):
    name: str
    version: int
    sha256: str
    size: int
    source: Annotated[str, Field(description="bundle, mqtt or folder:<file>")]
    signer: Annotated[str, Field(description="a trusted key id, \"unsigned\" or \"bundle\"")]
    accepted: UnixTime
    card: CardEssentials | None
    loaded: bool


@with_config(CLOSED)
class RevokedAdapter(TypedDict):
    name: str
    version: int
    reason: str
    signer: str
    ts: UnixTime
    sha256: str | None


@with_config(CLOSED)
class LastCommand(TypedDict, total=False):
    """The last command and its outcome; {} before the first."""

    action: Literal["put", "activate", "rollback", "revoke"]
    result: Literal["accepted", "already held", "done", "refused"]
    id: str | None
    line: str
    name: str | None
    version: int | None
    sha256: str
    topic: str
    reason: str
    signer: str
    was_held: bool
    lines: Annotated[dict[str, RouteRef], Field(description="revoke: the lines it moved")]
    ts: UnixTime
    switch_ms: float
    save_ms: float
    installed_ms: float
    command_ms: float


@with_config(CLOSED)
class AdapterState(TypedDict):
    """Lines, held and revoked adapters, and the last command."""

    device: str
    ts: UnixTime
    lines: Annotated[dict[str, LineRoute], Field(description="line -> model (\"*\": every "
                                                             "line, no lines configured)")]
    held: list[HeldAdapter]
    revoked: list[RevokedAdapter]
    bank: Annotated[int, Field(description="the bundle's bank size (0: not a bank bundle)")]
    last: LastCommand


# -- adapter commands (in) ---------------------------------------------------------------------
CommandId = Annotated[str | int, Field(description="names the command in its answer; a "
                                                   "repeated id is not applied twice")]


@with_config(CLOSED)
class ActivateCommand(TypedDict):
    """Pin a line to a held adapter version, or to the newest (no version), or to the base."""

    line: Name
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="a held adapter, or \"base\"")]
    version: NotRequired[Version | None]
    id: NotRequired[CommandId]


@with_config(CLOSED)
class RollbackCommand(TypedDict):
    """Undo the line's last change."""

    line: Name
    id: NotRequired[CommandId]


@with_config(CLOSED)
class RevokeCommand(TypedDict):
    """Withdraw an adapter version for good (edge-export revoke signs it)."""

    name: Name
    version: Version
    reason: NotRequired[str]
    id: NotRequired[CommandId]
    key_id: NotRequired[Annotated[str, Field(description="required when the gateway has "
                                                         "adapters.require_signed")]]
    signature: NotRequired[Annotated[str, Field(description="Ed25519, base64")]]


class EnvelopeHeader(TypedDict):
    """The JSON header of an adapter envelope (docs/FORMATS.md: b"EDGEADP1", a 4-byte
    big-endian length, this header, then the .onnx_adapter bytes) sent to
    adapters/put/<name>. Its fields are the bundle manifest's adapter entry's."""

    name: Name
    version: Version
    kind: Literal["lora", "bottleneck"]
    rank: int
    targets: list[str]
    sha256: Annotated[str, Field(description="of the .onnx_adapter bytes that follow")]
    size: Annotated[int, Field(ge=0, description="of the .onnx_adapter bytes that follow")]
    base_fingerprint: str
    class_names: list[str]
    preprocessing: Preprocessing | None
    metrics: dict[str, Any]
    reference_logits: list[list[float]] | None
    reference_sha256: str | None
    drift_profile: NotRequired[DriftProfile]
    card: NotRequired[Card]
    key_id: NotRequired[str]
    signature: NotRequired[str]
