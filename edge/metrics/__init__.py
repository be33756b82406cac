"""[metrics]: Prometheus `/metrics` and a `/healthz` for the service (docs/MQTT.md).

    metrics = Metrics.open(cfg, service)     # None when metrics.enabled is false
    metrics.warmed()                         # after the warm-up: /healthz may say ready
    metrics.answered(items, routes, secs)    # the worker, after each onnxruntime run
    metrics.close()

Its own CollectorRegistry (several services may share one process, as in the tests), with
prometheus_client's process, platform and GC collectors beside the gateway's own
(edge/metrics/collector.py), served by edge/metrics/server.py on a thread pool of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from ..errors import ConfigError
from .collector import GatewayCollector, Source
from .recorder import Recorder
from .server import MetricsServer, ScrapeCache, make_app

log = logging.getLogger(__name__)

__all__ = ["Metrics"]


class Metrics:
    """The registry, the worker's recorder and the HTTP server of one service."""

    def __init__(self, source: Source, server_for) -> None:
        self.source = source
        self.recorder = Recorder()
        self._warm = threading.Event()
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(GatewayCollector(source, self.recorder, self.ready))
        self.server: MetricsServer = server_for(make_app(ScrapeCache(self.registry),
                                                         self.health))

    @classmethod
    def open(cls, cfg, source: Source) -> Metrics | None:
        """Listen on metrics.host:port; None when metrics.enabled is false. A port that is
        taken (or an address not of this machine) is a ConfigError naming the key: the
        service refuses to start rather than run without the health check it was told to
        serve."""
        settings = cfg.metrics
        if not settings.enabled:
            return None

        def bind(app) -> MetricsServer:
            try:
                return MetricsServer.bind(settings.host, settings.port, app)
            except OSError as exc:
                where = f"{cfg.source}: " if cfg.source else ""
                reason = exc.strerror or str(exc)
                raise ConfigError(f"{where}metrics.port: {settings.port}: cannot listen on "
                                  f"{_shown(settings.host)}:{settings.port} ({reason}); set a "
                                  "free port in [metrics] or stop what holds it") from None

        metrics = cls(source, bind)
        server = metrics.server
        log.info("metrics: http://%s:%d/metrics and /healthz", _shown(server.host), server.port)
        if not _loopback(settings.host):
            log.warning("metrics.host = %s: /metrics and /healthz are reachable from the "
                        "network, without authentication", settings.host)
        return metrics

    def warmed(self) -> None:
        self._warm.set()

    def answered(self, items: Sequence[Any], routes: Sequence[Any], inference_s: float) -> None:
        self.recorder.answered(items, routes, inference_s)

    def health(self) -> tuple[bool, dict]:
        """(ready, {"ready", "connected", "subscribed", "warmed_up", "missing": [...]})."""
        link = self.source.link
        parts = {"connected": link.connected.is_set(), "subscribed": link.subscribed.is_set(),
                 "warmed_up": self._warm.is_set()}
        ready = all(parts.values())
        return ready, {"ready": ready, **parts,
                       "missing": [name for name, ok in parts.items() if not ok]}

    def ready(self) -> bool:
        return self.health()[0]

    def close(self) -> None:
        self.server.close()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host
