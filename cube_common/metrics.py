"""Prometheus figures of a Cube service: the registry, the ``/metrics`` listener, gRPC server
instrumentation, and gauges computed when scraped.

    listener = metrics.serve(settings.metrics_listen, loop=asyncio.get_running_loop())
    server = grpc.aio.server(interceptors=[metrics.GrpcServerMetrics(), *gates])
    handle = metrics.add_source(families, refresh=read_peer)     # both run at every scrape
    ...
    handle.remove(); listener.close()

Every service names its own figures in its ``metrics.py``; what several share is here (gRPC
servers) or next to its one owner (etcd calls: cube_common/etcd.py).

Invariants:
- One registry per process: prometheus_client's default, which also carries its ``process_`` and
  ``python_`` collectors. Module-level figures register when their module is imported; several
  instances of a service in one process (tests) share them.
- Every figure of ours is named ``cube_...`` with Prometheus' conventions (base units in the name:
  ``_seconds``, ``_bytes``; counters end in ``_total``), and its labels are bounded: methods,
  routes (templates, never raw paths), status codes, phases, states, templates, nodes. The one
  per-sandbox figure (the datapath's drops, which the cubelet reports) is computed at scrape time
  from the sandboxes running then, so a gone sandbox's series go with it.
- The listener answers ``GET /metrics`` (Prometheus' text format 0.0.4) and nothing else: it
  changes nothing and carries no secret (no token, key, team name or sandbox metadata), so it needs
  no credential, which is what Prometheus scrapes bring. It listens on loopback unless its setting
  names another address (each service's ``metrics_listen``); an address it cannot bind stops the
  service at start-up like any other listener's. An empty setting means no listener.
- Scrape-time sources run in the service's event loop when the listener is given one, so they may
  read the loop's state without locks; a source that fails is logged and left out of that scrape,
  never failing it. A source's ``refresh`` (a coroutine: state another process holds) is awaited
  in that loop first, all of them at once and each within ``REFRESH_TIMEOUT_S``; one that fails
  or is late leaves its source on what it read before.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import grpc
from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cube_common.addresses import split_host_port
from cube_common.mtls import rewrap_handler

log = logging.getLogger("cube.metrics")

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus reads; Envoy's stats are appended as is

# Buckets, in seconds. Calls: etcd, gRPC, HTTP (milliseconds to a create's tens of seconds).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0)
# A sandbox coming up: a pooled clone's tens of ms to a cold boot's tens of seconds under TCG.
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
# Template builds and their phases: a snapshot's fraction of a second to an hour.
BUILD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

Source = Callable[[], Iterable[Metric]]
Refresh = Callable[[], Awaitable[None]]
REFRESH_TIMEOUT_S = 3.0

# A `_created` series per counter and histogram would double what Prometheus stores for nothing
# its queries use (rate() copes with resets on its own).
disable_created_metrics()


# ---- scrape-time sources -------------------------------------------------------------------------

class _Sources(Collector):
    """Families computed at every scrape by the sources services add (their state: sandboxes by
    state, pool depth, node capacity ...). Families of the same name from several sources (several
    instances in one process) are merged into one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[int, Source] = {}
        self._refreshes: dict[int, Refresh] = {}
        self._next = 0

    def add(self, source: Source, refresh: Refresh | None = None) -> int:
        with self._lock:
            self._next += 1
            self._sources[self._next] = source
            if refresh is not None:
                self._refreshes[self._next] = refresh
            return self._next

    def remove(self, key: int) -> None:
        with self._lock:
            self._sources.pop(key, None)
            self._refreshes.pop(key, None)

    async def refresh(self) -> None:
        with self._lock:
            refreshes = list(self._refreshes.values())

        async def one(refresh: Refresh) -> None:
            try:
                await asyncio.wait_for(refresh(), REFRESH_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - a peer away: this scrape shows what was read before
                log.warning("a metrics refresh failed", extra={"error": f"{type(e).__name__}: {e}"})

        await asyncio.gather(*(one(r) for r in refreshes))

    def describe(self) -> list[Metric]:
        return []  # names vary with the sources: the registry must not check them at register time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources.values())
        merged: dict[str, Metric] = {}
        for source in sources:
            try:
                families = list(source())
            except Exception:  # noqa: BLE001 - one broken figure must not take the scrape down
                log.exception("a metrics source failed; left out of this scrape")
                continue
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


_SOURCES = _Sources()
REGISTRY.register(_SOURCES)


class SourceHandle:
    """A source added with ``add_source``; ``remove()`` takes its figures out of later scrapes."""

    def __init__(self, key: int) -> None:
        self._key = key

    def remove(self) -> None:
        _SOURCES.remove(self._key)


def add_source(source: Source, refresh: Refresh | None = None) -> SourceHandle:
    """Read ``source()`` (prometheus_client metric families) at every scrape until removed, after
    awaiting ``refresh()`` when the listener runs scrapes in a loop (see the module docstring)."""
    return SourceHandle(_SOURCES.add(source, refresh))


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Every figure of this process in Prometheus' text format."""
    return generate_latest(registry)


# ---- the listener --------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "cube-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        if urlsplit(self.path).path != PATH:
            self._reply(404, b"this listener serves /metrics only\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.listener.scrape()
        except Exception as e:  # noqa: BLE001 - the service's loop is stuck or stopping: say so
            log.warning("metrics scrape failed", extra={"error": f"{type(e).__name__}: {e}"})
            self._reply(503, f"metrics unavailable: {type(e).__name__}\n".encode(), "text/plain; charset=utf-8")
            return
        self._reply(200, body, CONTENT_TYPE)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is no news


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    # Not http.server.HTTPServer: its bind looks up the host's FQDN, which can hang without DNS.
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, host: str, port: int, listener: MetricsListener) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = listener
        super().__init__((host, port), _Handler)


class MetricsListener:
    """``GET /metrics`` on ``address`` (``host:port``), served from a thread of its own.

    ``loop``: the service's event loop; every scrape is computed there (see the module docstring).
    ``extra``: called (in the listener's thread) before each scrape; what it returns is appended to
    the page (the proxy's Envoy stats, already in the text format)."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop | None = None,
                 extra: Callable[[], bytes] | None = None, registry: CollectorRegistry = REGISTRY,
                 timeout_s: float = 10.0) -> None:
        self.address = address
        self.loop = loop
        self.extra = extra
        self.registry = registry
        self.timeout_s = timeout_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsListener:
        host, port = split_host_port(self.address)
        try:
            self._server = _Server(host, port, self)
        except OSError as e:
            raise OSError(e.errno, f"metrics_listen={self.address!r}: cannot listen there: {e.strerror}") from e
        # A short poll: close() waits for the loop to notice (a test closes many listeners).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics listening", extra={"metrics_listen": self.address, "port": self.port})
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def scrape(self) -> bytes:
        tail = self.extra() if self.extra is not None else b""
        if self.loop is None:
            body = render(self.registry)
        else:
            async def in_loop() -> bytes:
                await _SOURCES.refresh()
                return render(self.registry)
            body = asyncio.run_coroutine_threadsafe(in_loop(), self.loop).result(self.timeout_s)
        return body + tail

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def serve(address: str, loop: asyncio.AbstractEventLoop | None = None,
          extra: Callable[[], bytes] | None = None) -> MetricsListener | None:
    """A started listener on ``address``, or None when the setting is empty (no listener)."""
    if not address:
        return None
    return MetricsListener(address, loop=loop, extra=extra).start()


# ---- gRPC servers ---------------------------------------------------------------------------------

GRPC_HANDLED = Counter("cube_grpc_server_handled_total", "gRPC calls this server finished, by method and status "
                       "code", ["service", "method", "code"])
GRPC_SECONDS = Histogram("cube_grpc_server_handling_seconds", "How long this server took over a gRPC call (a "
                         "streaming call: the whole stream)", ["service", "method"], buckets=CALL_BUCKETS)


def _split_method(full: str) -> tuple[str, str]:
    """``/cube.v1.Master/CreateSandbox`` -> (``cube.v1.Master``, ``CreateSandbox``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def _code(context: Any, fallback: str) -> str:
    """The status the call ended with: what the handler set or aborted with, else ``fallback``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return fallback if code is None else str(code)


def _observe(service: str, method: str, code: str, t0: float) -> None:
    GRPC_HANDLED.labels(service, method, code).inc()
    GRPC_SECONDS.labels(service, method).observe(time.monotonic() - t0)


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every call an asyncio gRPC server handles (first in the interceptor list,
    so that the calls a RoleGate refuses count too). Only methods the server implements are
    counted: the method label stays within the service's proto."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        service, method = _split_method(details.method)

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, code = time.monotonic(), "UNKNOWN"
                try:
                    out = await fn(request, context)
                    code = _code(context, "OK")
                    return out
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    _observe(service, method, code, t0)
            return call

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, code = time.monotonic(), "UNKNOWN"
                try:
                    out = fn(request, context)
                    if inspect.isasyncgen(out):
                        async for item in out:
                            yield item
                    else:
                        await out
                    code = _code(context, "OK")
                except (asyncio.CancelledError, GeneratorExit):
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    _observe(service, method, code, t0)
            return call

        return rewrap_handler(handler, unary, streaming)


class SyncGrpcServerMetrics(grpc.ServerInterceptor):
    """``GrpcServerMetrics`` for a thread-pool gRPC server (CubeVS)."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, method = _split_method(details.method)

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                t0, code = time.monotonic(), "UNKNOWN"
                try:
                    out = fn(request, context)
                    code = _code(context, "OK")
                    return out
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    _observe(service, method, code, t0)
            return call

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                t0, code = time.monotonic(), "UNKNOWN"
                try:
                    yield from fn(request, context)
                    code = _code(context, "OK")
                except GeneratorExit:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    _observe(service, method, code, t0)
            return call

        return rewrap_handler(handler, unary, streaming)
