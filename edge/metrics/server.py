"""The HTTP side of [metrics]: `/metrics` and `/healthz` on one port, off the inference path.

    server = MetricsServer.bind(host, port, app)   # OSError when the port is taken
    server.port; server.close()

A scrape storm must not stall inference (every Python thread shares the GIL with the
worker), so the work is bounded: one accepting thread keeps connections whose request has not
arrived in a waiting room (a selector, MAX_WAITING of them, each dropped after TIMEOUT_S), so
silent clients hold no thread; WORKERS threads answer the requests that did arrive (never a
thread per connection), and past MAX_IN_FLIGHT of those a new one gets a canned 503 from the
accepting thread; the text of /metrics is built at most once per CACHE_S (ScrapeCache),
however many ask.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

WORKERS = 2  # threads answering requests
MAX_IN_FLIGHT = 8  # requests being answered or waiting for a worker
MAX_WAITING = 64  # connections accepted whose request has not arrived yet
TIMEOUT_S = 5.0  # a client that sends nothing (or stalls mid-request) for this long is dropped
POLL_S = 0.25  # how often the accepting thread looks at its deadlines and close()
CACHE_S = 0.5  # scrapes closer together than this get the same text
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n")

Health = Callable[[], tuple[bool, dict]]


class ScrapeCache:
    """The registry's text, rebuilt at most once per `max_age` seconds."""

    def __init__(self, registry: CollectorRegistry, max_age: float = CACHE_S) -> None:
        self.registry, self.max_age = registry, max_age
        self._lock = threading.Lock()
        self._text, self._built = b"", float("-inf")

    def text(self) -> bytes:
        with self._lock:  # a second scrape waits for the first one's text, then reuses it
            now = time.monotonic()
            if now - self._built >= self.max_age:
                self._text, self._built = generate_latest(self.registry), now
            return self._text


def make_app(cache: ScrapeCache, health: Health) -> Callable:
    """The WSGI app: GET /metrics (Prometheus text), GET /healthz (200 or 503, JSON)."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        try:
            status, ctype, body = answer(environ.get("PATH_INFO", ""), method)
        except Exception:  # a bug in a collector: logged (rate limited), not wsgiref's stderr
            log.exception("metrics: %s failed", environ.get("PATH_INFO"))
            status, ctype, body = "500 Internal Server Error", "text/plain", b"see the log\n"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]

    def answer(path: str, method: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, cache.text()
        if path == "/healthz":
            ready, doc = health()
            return ("200 OK" if ready else "503 Service Unavailable", "application/json",
                    json.dumps(doc).encode() + b"\n")
        return "404 Not Found", "text/plain", b"try /metrics or /healthz\n"

    return app


class _Quiet(WSGIRequestHandler):
    """No access log; a client that stalls mid-request times out."""

    timeout = TIMEOUT_S

    def log_message(self, format: str, *args) -> None:
        pass


class _PoolServer(WSGIServer):
    """wsgiref's server (the request parsing, the WSGI environ) around a loop of our own:
    `run` accepts, holds each connection in a waiting room until its request arrives, then
    hands it to the pool (see the module docstring)."""

    request_queue_size = 64

    def __init__(self, address: tuple, family: int) -> None:
        self.address_family = family
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="edge-metrics")
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._closing = threading.Event()
        super().__init__(address, _Quiet)  # binds: OSError when the port is taken

    def run(self) -> None:
        """Until close(): accept, wait for a request to arrive, dispatch; drop stalled ones."""
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        waiting: dict[socket.socket, tuple[float, object]] = {}  # conn -> (deadline, address)
        try:
            while not self._closing.is_set():
                for key, _ in sel.select(POLL_S):
                    if key.fileobj is self.socket:
                        self._accept(sel, waiting)
                    else:
                        sel.unregister(key.fileobj)
                        self._dispatch(key.fileobj, waiting.pop(key.fileobj)[1])
                now = time.monotonic()
                for conn in [c for c, (deadline, _) in waiting.items() if deadline < now]:
                    sel.unregister(conn)
                    del waiting[conn]
                    self.shutdown_request(conn)
        finally:
            for conn in waiting:
                self.shutdown_request(conn)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, waiting: dict) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError:
            return
        if len(waiting) >= MAX_WAITING:
            return self._refuse(conn)
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
        waiting[conn] = (time.monotonic() + TIMEOUT_S, address)

    def _dispatch(self, conn: socket.socket, address) -> None:
        conn.setblocking(True)
        if not self._slots.acquire(blocking=False):
            return self._refuse(conn)
        self._pool.submit(self._answer, conn, address)

    def _refuse(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(0.1)
            conn.sendall(BUSY)
        except OSError:
            pass
        self.shutdown_request(conn)

    def _answer(self, conn: socket.socket, address) -> None:
        try:
            self.finish_request(conn, address)
        except Exception as exc:  # a client that went away mid-answer: nothing to fix here
            log.debug("metrics request from %s failed: %s", address, exc)
        finally:
            self.shutdown_request(conn)
            self._slots.release()

    def close(self) -> None:
        self._closing.set()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class MetricsServer:
    """The listening socket and its accepting thread."""

    def __init__(self, server: _PoolServer) -> None:
        self._server = server
        self.host, self.port = server.server_address[:2]
        self._thread = threading.Thread(target=server.run, name="edge-metrics-accept",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def bind(cls, host: str, port: int, app: Callable) -> MetricsServer:
        """Listen on host:port (port 0: any free one) and serve `app`. Raises OSError when
        the address cannot be had (in use, not an address of this machine)."""
        family, address = _address(host, port)
        server = _PoolServer(address, family)
        server.set_app(app)
        return cls(server)

    def close(self) -> None:
        self._server.close()
        self._thread.join(2.0)
        self._server.server_close()


def _address(host: str, port: int) -> tuple[int, tuple]:
    """(address family, socket address) for `host` (IPv4 or IPv6, a name or a literal)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr
