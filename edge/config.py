"""Firmware config: one TOML file per device class, validated into objects.

    cfg = load_config("firmware_configs/jetson-orin-nano.toml")
    cfg.device.providers[0].name, cfg.broker.port, cfg.topic_layout.errors

Unknown keys are errors, every field has a description (docs/CONFIG.md is built from them),
and every problem is reported as one line: `<file>: <key path>: <bad value>: <what is allowed>`.
Relative paths resolve against the config file's directory. Credentials never live in the
file: only the names of environment variables or files that hold them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined, to_jsonable_python

from .card_policy import CardPolicy
from .contract import (
    BASE,
    DEFAULT_PREFIX,
    DEVICE_RULE,
    NAME_RULE,
    PREFIX_RULE,
    SENSOR_FILTER,
    TopicLayout,
    device_problem,
    name_problem,
    prefix_problem,
)
from .drift.monitor import DEFAULT_THRESHOLDS, MonitorSettings, Threshold
from .errors import ConfigError
from .provider_options import OPTIONS, check_options, ort_option_value
from .sparkplug.settings import SparkplugSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 gateways
    import tomli as tomllib

# Every provider onnxruntime knows (`onnxruntime.get_all_providers()`, 1.32); whether one is
# available in the installed build is the engine's business, not the config's.
KNOWN_PROVIDERS = tuple(f"{n}ExecutionProvider" for n in (
    "Tensorrt CUDA MIGraphX OpenVINO Dnnl VitisAI QNN Nnapi VSINPU Js CoreML Dml Rknpu WebNN "
    "WebGpu Xnnpack CANN Azure CPU").split())
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SECRET_KEYS = ("password", "username")
MiB = 1 << 20


def _conflict(key: str, value: Any, msg: str) -> PydanticCustomError:
    """An error found by a model validator; `key` is relative to where the model sits."""
    return PydanticCustomError("config_conflict", msg, {"key": key, "value": value})


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the config file's directory (the validation context)."""
    value = value.expanduser()
    base = (info.context or {}).get("base_dir")
    return value if base is None or value.is_absolute() else Path(base) / value


def _scalar(value: Any) -> Any:
    if not isinstance(value, (str, int, float, bool)):
        raise PydanticCustomError("scalar", "should be a string, number or boolean")
    return value


def _topic_filter(topic: str) -> str:
    """A subscription filter, or a shared one: `$share/<group>/<filter>` (MQTT v5 4.8.2)."""
    if topic.startswith("$share/"):
        _, group, rest = (topic.split("/", 2) + [""])[:3]
        if not group or not rest or re.search(r"[+#{}]", group):
            raise PydanticCustomError("topic_filter", "a shared subscription is "
                                      "$share/<group>/<filter>: the group is one non-empty "
                                      "level without '+', '#' or placeholders, then a filter")
        _plain_filter(rest)
    else:
        _plain_filter(topic)
    return topic


def _plain_filter(topic: str) -> None:
    if topic.startswith("$"):  # $SYS/...: the broker's own topics, never sensor windows
        raise PydanticCustomError("topic_filter", "topics starting with '$' belong to the "
                                  "broker; the only '$' form allowed is $share/<group>/<filter>")
    levels = re.sub(r"\{prefix\}", "p", topic).split("/")
    if re.search(r"[{}]", "".join(levels)):
        raise PydanticCustomError("topic_filter", "the only placeholder is {prefix}")
    if any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) \
            or "#" in levels[:-1] or not topic:
        raise PydanticCustomError("topic_filter", "not an MQTT filter: '+' fills a whole "
                                  "level, '#' only the last one")


def _ruled(problem: Callable[[object], str | None], what: str, rule: str):
    """One of the wire contract's name rules (edge/contract/names.py) as a validator."""
    def check(value: str) -> str:
        if problem(value):
            raise PydanticCustomError("name", "not a valid {what}: {rule}",
                                      {"what": what, "rule": rule})
        return value
    return AfterValidator(check)


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
LineName = Annotated[str, _ruled(lambda v: name_problem(v, "line"), "line name", NAME_RULE)]
AdapterName = Annotated[str, _ruled(  # "base" names the base model in a route
    lambda v: None if v == BASE else name_problem(v, "adapter"), "adapter name", NAME_RULE)]
DeviceId = Annotated[str, _ruled(device_problem, "device id", DEVICE_RULE)]
TopicPrefix = Annotated[str, _ruled(prefix_problem, "topic prefix", PREFIX_RULE)]
TopicFilter = Annotated[str, AfterValidator(_topic_filter)]
Scalar = Annotated[Any, AfterValidator(_scalar)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provider(_Section):
    """One onnxruntime execution provider and its options."""

    name: str = Field(description="onnxruntime provider name, e.g. CUDAExecutionProvider")
    options: dict[str, Scalar] = Field(default_factory=dict, description="provider options "
                                       "(device_id, trt_fp16_enable, ...); names and values "
                                       "are checked for the CPU, CUDA and TensorRT providers")
    required: StrictBool = Field(False, description="true: start-up fails, naming this "
                                 "provider and why, when it cannot run here; false: the next "
                                 "provider takes over, with a warning")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in KNOWN_PROVIDERS:
            near = difflib.get_close_matches(name, KNOWN_PROVIDERS, n=1)
            known = f"did you mean {near[0]}?" if near else "known: " + ", ".join(KNOWN_PROVIDERS)
            raise PydanticCustomError("provider", "unknown execution provider; {known}",
                                      {"known": known})
        return name

    @model_validator(mode="after")
    def _check_options(self, info: ValidationInfo) -> Provider:
        problems = check_options(self.name, self.options)
        if problems:  # every bad option at once, each at its own key path
            raise ValidationError.from_exception_data("Provider", [
                {"type": _conflict(f"options.{key}", self.options[key], msg), "loc": (),
                 "input": self.options[key]} for key, msg in problems])
        table = OPTIONS.get(self.name, {})
        for key, value in self.options.items():
            if key in table and table[key].kind == "path":
                self.options[key] = str(_resolve_path(Path(value), info))
        return self


class Device(_Section):
    """[device]: who this gateway is and how it runs the model."""

    id: DeviceId = Field(description="device id, unique in the fleet and an MQTT topic "
                         "level: 1-64 letters, digits, '-', '_' (required)")
    providers: list[Provider] = Field(
        default_factory=lambda: [Provider(name="CPUExecutionProvider")], min_length=1,
        description="execution providers, most preferred first; later ones are the fallback")
    threads: int = Field(0, ge=0, le=1024, description="intra-op threads; 0 = onnxruntime's "
                         "default")
    bundle: ConfigPath | None = Field(None, description="bundle directory (base.onnx, "
                                      "manifest.json, adapters/)")
    state_dir: ConfigPath = Field(Path("state"), validate_default=True,
                                  description="where accepted adapters and the outbox live")
    cpu_fallback: StrictBool = Field(False, description="start on the CPU when none of the "
                                     "configured accelerators (CUDA, TensorRT, ...) can run "
                                     "here; false = refuse to start, naming the reason")
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto", description="keep adapter tensors on the device and bind them with IOBinding "
        "(a swap rebinds, no per-run copy); auto = on for CUDA and TensorRT")
    engine_cache_dir: ConfigPath | None = Field(None, description="TensorRT engines and timing "
                                                "cache; unset = <state_dir>/trt-cache (a "
                                                "provider's trt_engine_cache_path wins)")

    @field_validator("providers")
    @classmethod
    def _no_duplicates(cls, providers: list[Provider]) -> list[Provider]:
        if len({p.name for p in providers}) != len(providers):
            raise PydanticCustomError("providers", "each provider may appear once")
        return providers

    def ort_providers(self) -> list[tuple[str, dict[str, str]]]:
        """The `providers=` argument for onnxruntime.InferenceSession (option values as str)."""
        return [(p.name, self.ort_options(p)) for p in self.providers]

    @staticmethod
    def ort_options(provider: Provider) -> dict[str, str]:
        """One provider's options as the strings onnxruntime parses."""
        return {k: ort_option_value(provider.name, k, v) for k, v in provider.options.items()}


class TlsSettings(_Section):
    """[broker.tls]: TLS to the broker (port 8883 by convention)."""

    enabled: StrictBool = Field(False, description="connect with TLS")
    ca: ConfigPath | None = Field(None, description="CA certificate (PEM) of the broker; "
                                  "unset = the system trust store")
    cert: ConfigPath | None = Field(None, description="client certificate (PEM), mutual TLS")
    key: ConfigPath | None = Field(None, description="client private key (PEM), mutual TLS")
    insecure: StrictBool = Field(False, description="skip the hostname check (tests only)")

    @field_validator("ca", "cert", "key")
    @classmethod
    def _exists_when_enabled(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("enabled") and not path.is_file():
            raise PydanticCustomError("missing_file", "file not found: {path}",
                                      {"path": str(path)})
        return path

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise _conflict("key" if self.key is None else "cert", None,
                            "cert and key go together: set both or neither")
        return self


class Broker(_Section):
    """[broker]: the MQTT v5 broker and the session with it."""

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port (1..65535)")
    client_id: str | None = Field(None, min_length=1, description="MQTT client id; unset = "
                                  "'edge-<device.id>'")
    keepalive: int = Field(60, ge=5, le=65535, description="MQTT keepalive, seconds (>= 5)")
    clean_start: StrictBool = Field(False, description="drop the broker-side session on "
                                    "connect; false = persistent session")
    session_expiry: int = Field(3600, ge=0, le=0xFFFFFFFF, description="seconds the broker "
                                "keeps the session after a disconnect")
    username_env: str | None = Field(None, pattern=_ENV_NAME, description="environment "
                                     "variable holding the user name")
    password_env: str | None = Field(None, pattern=_ENV_NAME, description="environment "
                                     "variable holding the password")
    username_file: ConfigPath | None = Field(None, description="file holding the user name")
    password_file: ConfigPath | None = Field(None, description="file holding the password")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS settings")

    @model_validator(mode="after")
    def _one_source_each(self) -> Broker:
        for what in ("username", "password"):
            if getattr(self, f"{what}_env") and getattr(self, f"{what}_file"):
                raise _conflict(f"{what}_file", str(getattr(self, f"{what}_file")),
                                f"set {what}_env or {what}_file, not both")
        return self


class LineSettings(_Section):
    """[topics.lines.<line>]: which adapter serves a production line."""

    adapter: AdapterName | None = Field(None, description="adapter name; "
                                "omitted or \"base\" = the base model")
    version: int | None = Field(None, ge=1, description="adapter version; omitted = latest")

    @model_validator(mode="after")
    def _base_has_no_version(self) -> LineSettings:
        self.adapter = None if self.adapter == BASE else self.adapter
        if self.adapter is None and self.version is not None:
            raise _conflict("version", self.version, "a version needs an adapter")
        return self


class Topics(_Section):
    """[topics]: MQTT topic layout; device topics are `<prefix>/<device.id>/...`."""

    prefix: TopicPrefix = Field(DEFAULT_PREFIX, description="first topic level(s), e.g. "
                                "'factory' or 'acme/plant1'")
    inputs: list[TopicFilter] = Field(
        default_factory=lambda: [SENSOR_FILTER], min_length=1,
        description="sensor subscription filters ('{prefix}' is replaced); the level after "
        "the prefix is the line; '$share/<group>/<filter>' shares the messages among the "
        "gateways of one group (each gets some)")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of subscriptions and results")
    stats_interval_s: float = Field(10, ge=0, description="seconds between stats; 0 = none")
    lines: dict[LineName, LineSettings] = Field(
        default_factory=dict, description="routing table; when it lists lines, a message on an "
        "unlisted line is answered with an error; when empty, every line gets the base model")

    @model_validator(mode="after")
    def _expand_prefix(self) -> Topics:
        self.inputs = [f.replace("{prefix}", self.prefix) for f in self.inputs]
        return self


class Batching(_Section):
    """[batching]: how sensor windows are grouped into one inference call."""

    max_batch: int = Field(32, ge=1, le=4096, description="most windows per call (1..4096)")
    max_wait_ms: float = Field(10, ge=0, le=10000, description="longest a window waits for "
                               "its batch to fill, ms (0..10000)")


class Limits(_Section):
    """[limits]: bounds that keep a flood or a bad sender from taking the gateway down."""

    max_payload_bytes: int = Field(MiB, ge=1024, description="largest sensor message (>= 1024)")
    queue_bound: int = Field(10000, ge=1, description="most windows waiting for inference, "
                             "and the most the broker may send unacknowledged: the MQTT "
                             "Receive Maximum, which 64 MiB of JSON windows also caps")
    max_adapter_bytes: int = Field(16 * MiB, ge=1024, description="largest adapter file")


class Adapters(_Section):
    """[adapters]: where new adapters come from and what they must prove."""

    require_signed: StrictBool = Field(True, description="refuse adapters without a valid "
                                       "Ed25519 signature by a trusted key")
    trusted_keys: list[ConfigPath] = Field(default_factory=list, description="Ed25519 public "
                                           "key files trusted to sign adapters")
    watch_dir: ConfigPath | None = Field(None, description="directory watched for dropped "
                                         "adapter files; unset = MQTT only")
    memory_budget_mb: float = Field(256, gt=0, description="MiB that loaded adapters may hold")
    keep_versions: int = Field(5, ge=1, le=10000, description="accepted versions kept per "
                               "adapter name (the newest); older ones that no line uses or "
                               "could roll back to are deleted from state_dir")
    watch_interval_s: float = Field(0.5, ge=0.05, le=60, description="seconds between looks "
                                    "at watch_dir; a file is taken once it held still for one")
    policy: CardPolicy = Field(default_factory=CardPolicy, description="licences served and "
                               "card fields required (edge/card_policy.py, docs/CARDS.md)")


class OutboxSettings(_Section):
    """[outbox]: results and errors kept in `<device.state_dir>/outbox.sqlite3` until the
    broker acknowledges them, and the window of recent sensor message ids (dedupe)."""

    max_messages: int = Field(100_000, ge=100, description="most messages waiting for the "
                              "broker's acknowledgement (>= 100); then when_full applies")
    when_full: Literal["stop_consuming", "drop_oldest"] = Field(
        "stop_consuming", description="stop_consuming: the worker pauses, so sensor messages "
        "wait unacknowledged (past limits.queue_bound they get a 'queue full' error); "
        "drop_oldest: the oldest waiting messages are deleted, counted as outbox_dropped")
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: each batch is fsynced before its sensor messages are "
        "acknowledged, nothing is lost on power loss; normal: no fsync, the last batches may "
        "be lost on power loss (never on a crash of the process)")
    dedupe_window: int = Field(10_000, ge=0, description="sensor message ids (per line) "
                               "remembered across restarts, so a message delivered twice is "
                               "computed once; 0 = no dedupe")


class MetricsSettings(_Section):
    """[metrics]: Prometheus `/metrics` and `/healthz` over HTTP (edge/metrics/, docs/MQTT.md)."""

    enabled: StrictBool = Field(False, description="serve /metrics and /healthz")
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; "
                      "loopback by default (the endpoints have no authentication)")
    port: int = Field(9840, ge=0, le=65535, description="TCP port of both endpoints; 0 = any "
                      "free port (tests), logged at start")


class WorkersSettings(_Section):
    """[workers]: gateway processes sharing the sensor subscription (docs/WORKERS.md)."""

    count: int = Field(1, ge=1, le=64, description="worker processes; more than 1 shares the "
                       "sensor topics among them (MQTT v5 shared subscription), one per core "
                       "at most is useful; `edge-runtime run --workers` overrides")


class DriftLimits(_Section):
    """[drift.thresholds.<indicator>]: the levels at which an indicator says warn and drift."""

    warn: float = Field(ge=0, description="at or above: the evaluation says warn")
    drift: float = Field(ge=0, description="at or above: the evaluation says drift")

    @model_validator(mode="after")
    def _ordered(self) -> DriftLimits:
        if self.drift < self.warn:
            raise _conflict("drift", self.drift, "drift must be >= warn")
        return self


def _limits(name: str, what: str):
    default = DEFAULT_THRESHOLDS[name]
    return Field(default_factory=lambda: DriftLimits(warn=default.warn, drift=default.drift),
                 description=f"{what}; default warn {default.warn}, drift {default.drift}")


class DriftThresholds(_Section):
    """[drift.thresholds]: warn / drift per indicator (edge/drift/monitor.py)."""

    input_psi: DriftLimits = _limits("input_psi", "bias-corrected PSI of the raw windows' "
                                     "per-channel mean and std, the largest over channels")
    class_psi: DriftLimits = _limits("class_psi", "bias-corrected PSI of the predicted class "
                                     "mix")
    score_psi: DriftLimits = _limits("score_psi", "bias-corrected PSI of the top score")
    score_drop: DriftLimits = _limits("score_drop", "the profile's mean top score minus the "
                                      "rolling window's")
    ood_share: DriftLimits = _limits("ood_share", "share of windows whose penultimate "
                                     "features lie beyond the profile's Mahalanobis threshold")


class CaptureConfig(_Section):
    """[drift.capture]: windows kept as evidence in `<state_dir>/capture/` (edge/drift/
    capture.py)."""

    enabled: StrictBool = Field(True, description="keep out-of-distribution and low-confidence "
                                "windows of watched lines; false = none")
    max_bytes: int = Field(64 * MiB, ge=65536, description="size cap of the store in bytes "
                           "(>= 65536); past it the oldest records are removed")
    reasons: list[Literal["ood", "outlier", "low_score", "drifting"]] = Field(
        default_factory=lambda: ["ood", "outlier", "low_score", "drifting"],
        description="why a window is kept: ood (beyond the profile's Mahalanobis threshold), "
        "outlier, low_score, drifting")
    low_score: float = Field(0.5, ge=0, le=1, description="a window whose top score is below "
                             "this is kept (low_score); 0 = never")
    drifting_share: float = Field(0.1, gt=0, le=1, description="share of a warn / drift "
                                  "line's windows kept (drifting), evenly spaced")
    outlier_margin: float = Field(1.5, ge=0, le=100, description="a window whose mean or std "
                                  "of a channel lies beyond the profile's 10%..90% range by "
                                  "this many times its width is kept (outlier)")
    ood_margin: float = Field(2.0, ge=0, le=100, description="a window whose Mahalanobis "
                              "distance exceeds the profile's threshold this many times is "
                              "kept (ood)")
    per_minute: int = Field(120, ge=1, le=1_000_000, description="most windows kept per line "
                            "and minute (a token bucket, full at start)")
    queue: int = Field(256, ge=1, le=100_000, description="windows waiting for the writer "
                       "thread; past it captures are dropped and counted")


class DriftSettings(_Section):
    """[drift]: each line's windows compared with its model's training profile."""

    enabled: StrictBool = Field(True, description="watch lines whose model carries a drift "
                                "profile; false = no monitoring, no drift topics")
    window: int = Field(50, ge=8, le=100_000, description="rolling windows per line compared "
                        "with the profile (8..100000)")
    every: int = Field(10, ge=1, le=100_000, description="windows between two evaluations")
    min_windows: int = Field(50, ge=1, le=100_000, description="windows a line must have "
                             "seen before its first evaluation")
    confirm: int = Field(2, ge=1, le=1000, description="evaluations in a row that must agree "
                         "before the state changes (hysteresis)")
    publish_s: float = Field(10.0, ge=0.0, le=86_400.0, description="seconds between two "
                             "drift messages of a line whose state did not change (a change "
                             "is published at once)")
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds,
                                        description="warn / drift levels per indicator")
    lines: list[LineName] = Field(default_factory=list, description="lines to watch; empty = "
                                  "every line")
    capture: CaptureConfig = Field(default_factory=CaptureConfig,
                                   description="evidence kept on the gateway")

    def monitor_settings(self) -> MonitorSettings:
        """What each line's DriftMonitor runs with."""
        limits = {name: Threshold(warn=getattr(self.thresholds, name).warn,
                               drift=getattr(self.thresholds, name).drift)
                  for name in DriftThresholds.model_fields}
        return MonitorSettings(window=self.window, every=self.every,
                               min_windows=self.min_windows, confirm=self.confirm,
                               thresholds=limits)

    def watches(self, line: str) -> bool:
        return self.enabled and (not self.lines or line in self.lines)


class Export(_Section):
    """[export]: read by `edge-export --target FILE`; the runtime checks the keys a file
    sets against its bundle (edge/engine_config.py)."""

    opset: int = Field(17, ge=13, le=21, description="ONNX opset (13..21)")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp32 or fp16 weights")
    batch: Literal["dynamic"] | int = Field("dynamic", description="batch dimension: "
                                            "\"dynamic\" or a fixed size >= 1")
    max_rank: int = Field(8, ge=1, le=256, description="rank adapter slots are padded to")
    atol: float | None = Field(None, gt=0, description="export parity tolerance; unset = "
                               "the exporter's default")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="torch -> ONNX exporter: dynamo (opset >= 18), torchscript, or "
        "auto (torchscript for the reference model, dynamo for --base models); export only")

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> Any:
        if value == "dynamic" or (type(value) is int and value >= 1):
            return value
        raise PydanticCustomError("batch", "should be \"dynamic\" or an integer >= 1")


class Config(_Section):
    """A whole firmware config file; `source` is the file it came from."""

    device: Device = Field(description="this gateway")
    broker: Broker = Field(default_factory=Broker, description="MQTT broker")
    topics: Topics = Field(default_factory=Topics, description="MQTT topics")
    batching: Batching = Field(default_factory=Batching, description="batching")
    limits: Limits = Field(default_factory=Limits, description="input limits")
    adapters: Adapters = Field(default_factory=Adapters, description="adapter intake")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings,
                                   description="delivery guarantees")
    drift: DriftSettings = Field(default_factory=DriftSettings, description="drift watch")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings,
                                     description="Prometheus endpoint")
    export: Export = Field(default_factory=Export, description="workstation export settings")
    sparkplug: SparkplugSettings = Field(default_factory=SparkplugSettings,
                                         description="Sparkplug B edge node")
    workers: WorkersSettings = Field(default_factory=WorkersSettings,
                                     description="worker processes")
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        self.broker.client_id = self.broker.client_id or f"edge-{self.device.id}"
        if self.workers.count > 1 and self.sparkplug.enabled:
            raise _conflict("sparkplug.enabled", True, "a Sparkplug edge node is one "
                            "session with one seq counter: set workers.count = 1 to use it")
        return self

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from (None when built in Python)."""
        return self._source

    @property
    def topic_layout(self) -> TopicLayout:
        """This gateway's topics (`<prefix>/<device.id>/...`, `<prefix>/<line>/...`)."""
        return TopicLayout(self.topics.prefix, self.device.id)


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation like `TlsSettings`, `list[Provider]`,
    `dict[str, LineSettings]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_inner_model, get_args(annotation))), None)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = Config
    skip = False  # the next loc part is a list index or a dict key
    for part in loc[:-1]:
        if skip:
            skip = False
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        skip = get_origin(field.annotation) in (list, dict)
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problem_lines(source: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc, value, msg = tuple(err["loc"]), err.get("input"), err["msg"]
        ctx = err.get("ctx") or {}
        if err["type"] == "config_conflict":
            loc, value = loc + tuple(ctx["key"].split(".")), ctx["value"]
        if err["type"] == "extra_forbidden":
            if loc[-1] in _SECRET_KEYS:
                msg = (f"credentials are never stored in the config; use {loc[-1]}_env (an "
                       f"environment variable name) or {loc[-1]}_file (a file path)")
                value = "..."  # never echo a secret
            else:
                msg = "unknown key; allowed keys here: " + ", ".join(_allowed_keys(loc))
        missing = err["type"] == "missing" or (value is None and "key" in ctx)
        shown = "(missing)" if missing else repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        lines.append(f"{source}: {_key_path(loc)}: {shown}: {msg}")
    return lines


def _load(path: str | Path) -> tuple[Config | None, list[str]]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path}: no such file"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read: {exc}"]
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{path}: TOML syntax error: {exc}"]
    try:
        cfg = Config.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        return None, _problem_lines(str(path), exc)
    cfg._source = path.resolve()
    return cfg, []


def load_config(path: str | Path) -> Config:
    """Read and validate a firmware config.

    Raises ConfigError with one line per problem, `<file>: <key path>: <value>: <allowed>`;
    the lines are also on the exception's `problems` attribute.
    """
    cfg, problems = _load(path)
    if cfg is None:
        err = ConfigError("\n".join(problems))
        err.problems = problems
        raise err
    return cfg


def check_config(path: str | Path) -> list[str]:
    """Every problem line for the config at `path`; empty when it is valid."""
    return _load(path)[1]


def resolve_credentials(cfg: Config | Broker) -> tuple[str | None, str | None]:
    """(username, password) read from the environment variables or files the config names."""
    broker = cfg.broker if isinstance(cfg, Config) else cfg
    where = f"{cfg.source}: " if isinstance(cfg, Config) and cfg.source else ""
    out: list[str | None] = []
    for what in ("username", "password"):
        env, file = getattr(broker, f"{what}_env"), getattr(broker, f"{what}_file")
        if env:
            if env not in os.environ:
                raise ConfigError(f"{where}broker.{what}_env: {env!r}: environment variable "
                                  "is not set")
            out.append(os.environ[env])
        elif file:
            try:
                out.append(Path(file).read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as exc:
                raise ConfigError(f"{where}broker.{what}_file: {str(file)!r}: cannot read "
                                  f"({exc.strerror or exc})") from None
        else:
            out.append(None)
    return out[0], out[1]


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, ...]]:
    """(key path, default, description) for every key, in file order (docs/CONFIG.md)."""
    rows = []
    for name, field in model.model_fields.items():
        key, sub = prefix + name, _inner_model(field.annotation)
        if sub is field.annotation:  # a section table: describe its keys instead
            rows += describe_fields(sub, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "required" if default is PydanticUndefined else "unset" if default is None \
            else json.dumps(to_jsonable_python(default))
        rows.append((key, shown, field.description or ""))
        if sub is not None:  # list[Provider] or dict[str, LineSettings]: one row per key
            list_ = get_origin(field.annotation) is list
            rows += describe_fields(sub, key + ("[]." if list_ else ".<line>."))
    return rows
