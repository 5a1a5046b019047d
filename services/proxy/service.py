"""CubeProxy as one process: etcd route watch → xDS resources → ADS → the Envoy child, plus the
applied-revision publisher that lets the master wait for routes (cube_common.route_ack), and the
closing of Envoy's connections to guests whose routes are gone once Envoy serves that
(severance.py).

Internal mutual TLS is all or nothing: with ``mtls_dir`` the ADS server, the master client and the
etcd client all use the proxy's certificate, and Envoy presents ``envoy_mtls_dir``'s. Both
directories are read and their roles checked before anything starts, so a wrong or unreadable
directory stops the proxy with a message instead of leaving an Envoy that never gets its config.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from cube_common import mtls
from cube_common.etcd import EtcdClient
from cube_common.mtls import Role
from cube_common.route_ack import AppliedRevisionPublisher

from . import xds
from .ads import AdsServer
from .envoy import EnvoyProcess
from .metrics import ProxyMetrics
from .resume import Resumer
from .routes import RouteTable, RouteWatcher
from .settings import Endpoint, ProxySettings
from .severance import GoneGuest, Severance, abort_connections
from .tls import TlsFiles, ensure_certificates

log = logging.getLogger("cube.proxy")


def bindable(ep: Endpoint) -> bool:
    """Whether this host has the address at all (e.g. no ::1 inside some containers)."""
    family = socket.AF_INET6 if ep.is_ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(ep.host, 0, family, socket.SOCK_STREAM)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(infos[0][4])
        return True
    except OSError:
        return False


class ProxyService:
    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self.tls: TlsFiles | None = None  # public: the HTTPS listeners' (tls.py)
        self.mtls: mtls.TlsFiles | None = None  # the proxy's cluster identity (internal hops)
        self.etcd: EtcdClient | None = None
        self.ads: AdsServer | None = None
        self.envoy: EnvoyProcess | None = None
        self.watcher: RouteWatcher | None = None
        self.publisher: AppliedRevisionPublisher | None = None
        self.resumer: Resumer | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.severance = Severance()
        self._severing: set[asyncio.Task] = set()
        self._sever_refused = False
        self._https: list[Endpoint] = []
        self._http: list[Endpoint] = []
        self.metrics = ProxyMetrics(settings)

    def _usable(self, eps) -> list[Endpoint]:
        out = []
        for ep in eps:
            if bindable(ep):
                out.append(ep)
            else:
                log.warning("listen address not available on this host; skipped", extra={"address": str(ep)})
        return out

    async def start(self) -> None:
        s = self.settings
        s.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._https = self._usable(s.https_listeners)
        self._http = self._usable(s.http_listeners)
        if not self._https and not self._http:
            raise RuntimeError("none of the listen addresses exists on this host")
        self.mtls = mtls.files(s.mtls_dir, Role.PROXY)
        mtls.files(s.envoy_mtls_dir, Role.ENVOY)  # Envoy reads it; checked here
        if self._https:
            self.tls = ensure_certificates(s.tls_dir, s.domain)
        self.etcd = EtcdClient(s.etcd_endpoints, timeout_s=10.0, tls=self.mtls)
        self.publisher = AppliedRevisionPublisher(self.etcd, s.keys, s.proxy_id, s.lease_ttl)
        self.ads = AdsServer(on_routes_applied=self._routes_applied, on_streams_changed=self._streams_changed)
        sock = s.runtime_dir / "ads.sock"
        sock.unlink(missing_ok=True)
        await self.ads.start(f"unix:{sock}", self.mtls)
        if s.master_addr:
            self.resumer = Resumer(s, self.mtls)
            await self.resumer.start()
        self.watcher = RouteWatcher(self.etcd, s.keys, s.node_id, self._on_routes)
        self.envoy = EnvoyProcess(s, sock)
        self._builder = xds.ResourceBuilder(s, self.tls, self._https, self._http)
        for coro in (self.watcher.run(), self._push_loop(), self.publisher.run(), self.envoy.run()):
            self._tasks.append(asyncio.ensure_future(coro))
        self.metrics.register()
        log.info("CubeProxy started", extra={
            "proxy_id": s.proxy_id, "node_id": s.node_id, "domain": s.domain,
            "https": [str(e) for e in self._https], "http": [str(e) for e in self._http],
            "ca": str(self.tls.ca_cert) if self.tls else None, "etcd": list(s.etcd_endpoints),
            "mtls": str(self.mtls.identity()) if self.mtls else None})

    def _streams_changed(self, n: int) -> None:
        self.metrics.streams_changed(n)
        if n == 0 and self.publisher is not None:
            self.publisher.withdraw()

    def _on_routes(self, table: RouteTable) -> None:
        self.metrics.routes_read(table)
        self.severance.routes_changed(table)
        self._changed.set()

    def _routes_applied(self, revision: int) -> None:
        """Envoy ACKed the routes of `revision`: publish it, then close the connections to the
        guests those routes dropped (severance.py; not before, or a client's health probe could
        still reach the old route)."""
        self.metrics.routes_applied(revision)
        if self.publisher is not None:
            self.publisher.applied(revision)
        gone = self.severance.due(revision)
        proc = self.envoy.proc if self.envoy is not None else None
        if gone and proc is not None and proc.returncode is None:
            task = asyncio.ensure_future(self._sever(gone, proc.pid))
            self._severing.add(task)
            task.add_done_callback(self._severing.discard)

    async def _sever(self, gone: list[GoneGuest], envoy_pid: int) -> None:
        for g in gone:
            try:
                closed = await asyncio.to_thread(abort_connections, g.address, envoy_pid)
            except OSError as e:
                if not self._sever_refused:
                    self._sever_refused = True
                    log.warning("cannot close connections to gone sandboxes (needs CAP_NET_ADMIN and "
                                "CONFIG_INET_DIAG_DESTROY); their streams end at the idle timeout",
                                extra={"sandbox_id": g.sandbox_id, "error": str(e)})
                return
            if closed:
                log.info("closed connections to a gone sandbox", extra={
                    "sandbox_id": g.sandbox_id, "address": g.address, "connections": closed})

    async def _push_loop(self) -> None:
        watcher, ads = self.watcher, self.ads
        if watcher is None or ads is None:
            raise RuntimeError("the push loop runs only after start()")
        while True:
            await self._changed.wait()
            self._changed.clear()
            table = watcher.table
            try:
                resources = self._builder.build(table)
            except Exception:  # a bug, not bad input (routes.py validated it): keep serving the last state
                log.exception("cannot build Envoy resources", extra={"revision": table.revision})
                continue
            ads.set_resources(resources, table.revision)

    async def wait(self) -> None:
        """Until a component fails for good (they retry internally, so normally forever)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if (exc := t.exception()) is not None:
                raise exc

    async def stop(self) -> None:
        self.metrics.unregister()
        for t in self._severing:
            t.cancel()
        if self.envoy is not None:
            await self.envoy.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.close()
        if self.resumer is not None:
            await self.resumer.stop()
        if self.ads is not None:
            await self.ads.stop()
        if self.etcd is not None:
            try:
                await asyncio.wait_for(self.etcd.close(), 3)
            except Exception:
                pass
        log.info("CubeProxy stopped")
