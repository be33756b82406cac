"""Which worker a gateway process is, and the config it runs with.

With `[workers] count = N > 1`, `edge-runtime run` starts a supervisor
(edge/workers/supervisor.py) and N worker processes, each a whole `Service` with its own MQTT
connection, onnxruntime session and outbox. The sensor topics are one MQTT v5 shared
subscription (`$share/<group>/<filter>`), so the broker gives each window to one worker:

    worker 0 (leader)    client id as configured; the outbox in device.state_dir; the
                         control plane (adapter uploads, commands, watch folder), the
                         retained status and its last will, the drift watch and capture
    worker i > 0         client id `<client_id>-w<i>`; the outbox in
                         `<state_dir>/workers/<i>/`; follows the leader's routing
                         (edge/workers/route_sync.py)

Each worker keeps its own persistent session, so a window a killed worker had not answered
comes back to that same worker when the supervisor restarts it, and its own dedupe window
and outbox make the answer exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

SHARE_PREFIX = "$share/"
WORKERS_DIR = "workers"


@dataclass(frozen=True)
class WorkerRole:
    """Worker `index` of `count`; `retiring`: a worker of an earlier, larger count that only
    answers what its broker session still holds, then ends that session."""

    index: int
    count: int
    retiring: bool = False

    @property
    def leader(self) -> bool:
        return self.index == 0 and not self.retiring


def worker_dir(state_dir: Path, index: int) -> Path:
    """Where worker `index` keeps its lock (and, past worker 0, its outbox)."""
    return Path(state_dir) / WORKERS_DIR / str(index)


def share_group(cfg: Config) -> str:
    """The shared-subscription group: one per gateway (device.id is unique in the fleet, and
    a shared name has no '/', '+' or '#')."""
    return f"edge-{cfg.device.id}"


def shared_filter(cfg: Config, topic_filter: str) -> str:
    """`$share/<group>/<filter>`; a filter the config already shares is kept as it is."""
    if topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    return f"{SHARE_PREFIX}{share_group(cfg)}/{topic_filter}"


def sensor_filters(cfg: Config, role: WorkerRole | None) -> tuple[list[str], list[str]]:
    """(filters to subscribe, filters to unsubscribe at each connect). A persistent session
    keeps the subscriptions of an earlier run: after a change of worker count the other form
    of each filter would deliver windows twice (plain and shared) or to nobody."""
    plain = list(cfg.topics.inputs)
    shared = [shared_filter(cfg, f) for f in plain]
    if role is None:
        return plain, [s for s in shared if s not in plain]
    if role.retiring:  # what the session holds still arrives; nothing new is taken
        return [], sorted(set(plain) | set(shared))
    return shared, [p for p in plain if p not in shared]


def client_id(cfg: Config, role: WorkerRole | None) -> str:
    """Worker 0 keeps the configured id (its session continues a one-process runtime's)."""
    base = cfg.broker.client_id
    return base if role is None or role.index == 0 else f"{base}-w{role.index}"


def worker_config(cfg: Config, role: WorkerRole | None) -> Config:
    """`cfg` as worker `role` runs it: its own client id and metrics port (metrics.port + i;
    0 stays 0, any free port). The shared state (adapters, lines, revocations) stays."""
    if role is None or role.index == 0:
        return cfg
    metrics = cfg.metrics
    if metrics.port:
        metrics = metrics.model_copy(update={"port": metrics.port + role.index})
    copy = cfg.model_copy(update={
        "broker": cfg.broker.model_copy(update={"client_id": client_id(cfg, role)}),
        "metrics": metrics})
    copy._source = cfg.source
    return copy


def with_workers(cfg: Config, count: int | None) -> Config:
    """`cfg` with `edge-runtime run --workers COUNT` applied (None: as configured); the same
    checks as the file's `[workers] count`."""
    if count is None or count == cfg.workers.count:
        return cfg
    if not 1 <= count <= 64:
        raise ConfigError(f"--workers {count}: must be 1..64")
    if count > 1 and cfg.sparkplug.enabled:
        raise ConfigError(f"--workers {count}: a Sparkplug edge node is one session with one "
                          "seq counter; set sparkplug.enabled = false or run one worker")
    copy = cfg.model_copy(update={"workers": cfg.workers.model_copy(update={"count": count})})
    copy._source = cfg.source
    return copy
