"""Sandbox routes: etcd records (`<prefix>/routes/<sandbox_id>`, proto3 JSON of cube.v1.SandboxRoute)
turned into a typed, validated route table that follows etcd (list, then watch from the list's
revision; list again after a compaction or a lost connection).

A record that does not parse or validate is logged and skipped: one bad record must never stop
the proxy or the other sandboxes' routes (Envoy rejects a whole RouteConfiguration if one part of
it is invalid, so everything that reaches xds.py has been checked here).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import json_format

from cube_common import host_mask, https_ports
from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from sdk.gen.cube.v1 import route_pb2

from .settings import Endpoint

log = logging.getLogger("cube.proxy.routes")

# E2B sandbox ids are [a-z0-9]; we also accept '_' , '-' and upper case through headers. The same
# rule is enforced on requests by the Lua filter (xds.py), and it keeps ids safe to paste into
# JSON and Envoy header values.
SANDBOX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,512}$")  # visible ASCII: an exact header-value match
NODE_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


class RouteState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"


class MalformedRoute(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    sandbox_id: str
    state: RouteState
    # Local sandboxes: where to connect, and the source address to bind ("" = don't bind).
    host_address: str = ""
    proxy_source_address: str = ""
    # Sandboxes on another node: that node's proxy (plain HTTP listener).
    remote: Endpoint | None = None
    node_id: str = ""
    traffic_access_token: str = ""
    auto_resume: bool = False  # paused, and traffic should resume it (route.proto)
    # The Host its ports but envd's get, `${PORT}` still in it (cube_common/host_mask.py); "": none.
    mask_request_host: str = ""
    # Guest ports reached over TLS, sorted (cube_common/https_ports.py); the owning node's only.
    https_ports: tuple[int, ...] = ()
    # Not part of a route's identity: an identical put at a newer revision is the same route.
    mod_revision: int = field(default=0, compare=False)

    @property
    def is_local(self) -> bool:
        return self.remote is None


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise MalformedRoute(f"{what} {text!r} is not an IP address") from None


def parse_route(key: str, value: bytes, prefix: str, local_node_id: str, mod_revision: int = 0) -> Route:
    """One etcd record to a Route, or MalformedRoute saying why not."""
    key_id = key[len(prefix):]
    try:
        msg = json_format.Parse(value.decode("utf-8"), route_pb2.SandboxRoute(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as e:
        raise MalformedRoute(f"not a SandboxRoute JSON record: {e}") from None
    sid = msg.sandbox_id or key_id
    if not SANDBOX_ID_RE.match(sid):
        raise MalformedRoute(f"sandbox id {sid!r} is not valid")
    if sid != key_id:
        raise MalformedRoute(f"record for {sid!r} stored under key {key!r}")
    if msg.state == route_pb2.ROUTE_STATE_PAUSED:
        state = RouteState.PAUSED
    elif msg.state in (route_pb2.ROUTE_STATE_RUNNING, route_pb2.ROUTE_STATE_UNSPECIFIED):
        state = RouteState.RUNNING  # proto3 JSON drops a zero enum: an unset state means running
    else:
        raise MalformedRoute(f"unknown state {msg.state}")
    token = msg.traffic_access_token
    if token and not TOKEN_RE.match(token):
        raise MalformedRoute("traffic access token has characters that cannot travel in a header")
    try:
        mask = host_mask.check(msg.mask_request_host)
    except host_mask.InvalidHostMask as e:
        raise MalformedRoute(str(e)) from None
    try:
        tls_ports = tuple(https_ports.check(msg.https_ports))
    except https_ports.InvalidHttpsPorts as e:
        raise MalformedRoute(str(e)) from None
    route = functools.partial(Route, sandbox_id=sid, state=state, node_id=msg.node_id, traffic_access_token=token,
                              auto_resume=state is RouteState.PAUSED and msg.auto_resume,
                              mask_request_host=mask, https_ports=tls_ports, mod_revision=mod_revision)
    if not msg.node_id or msg.node_id == local_node_id:
        if not msg.host_address:
            if state is RouteState.PAUSED:
                return route()
            raise MalformedRoute("running local sandbox without host_address")
        src = _ip(msg.proxy_source_address, "proxy_source_address") if msg.proxy_source_address else ""
        return route(host_address=_ip(msg.host_address, "host_address"), proxy_source_address=src)
    try:
        remote = Endpoint.parse(msg.node_proxy_address)
    except ValueError:
        raise MalformedRoute(f"node_proxy_address {msg.node_proxy_address!r} is not host:port") from None
    if not NODE_HOST_RE.match(remote.host) and not remote.is_ipv6:
        raise MalformedRoute(f"node_proxy_address host {remote.host!r} is not valid")
    return route(remote=remote)


@dataclass
class RouteTable:
    """The routes as of etcd `revision` (the list revision, or the last event applied)."""

    routes: dict[str, Route] = field(default_factory=dict)
    revision: int = 0


class RouteWatcher:
    """Keeps `table` equal to etcd's route prefix; calls `on_change` after every change.

    `on_change` is called synchronously from the watch task, so it must only note the change
    (the ADS server coalesces bursts into one push).
    """

    def __init__(self, etcd: EtcdClient, keys: Keys, local_node_id: str,
                 on_change: Callable[[RouteTable], None], retry_delay: float = 0.5):
        self._etcd = etcd
        self._prefix = keys.routes().decode()
        self._node = local_node_id
        self._on_change = on_change
        self._retry_delay = retry_delay
        self.table = RouteTable()
        self.synced = asyncio.Event()  # set after the first full list

    def _parse(self, kv) -> Route | None:
        key = kv.key.decode("utf-8", "replace")
        sid = key[len(self._prefix):]
        try:
            return parse_route(key, kv.value, self._prefix, self._node, kv.mod_revision)
        except MalformedRoute as e:
            log.warning("skipping malformed route record", extra={"sandbox_id": sid, "key": key, "error": str(e)})
            return None

    async def _list(self) -> int:
        rng = await self._etcd.get_prefix(self._prefix.encode())
        routes = {}
        for kv in rng:
            route = self._parse(kv)
            if route is not None:
                routes[route.sandbox_id] = route
        self.table = RouteTable(routes, rng.header.revision)
        log.info("route table listed", extra={"routes": len(routes), "revision": rng.header.revision})
        self._on_change(self.table)
        self.synced.set()
        return rng.header.revision

    def _apply(self, event) -> None:
        key = event.kv.key.decode("utf-8", "replace")
        sid = key[len(self._prefix):]
        routes = dict(self.table.routes)  # copy: snapshots handed out earlier stay immutable
        if event.kind == "PUT":
            route = self._parse(event.kv)
            if route is None:
                # A malformed update replaces nothing: the sandbox keeps no stale route either.
                routes.pop(sid, None)
            else:
                routes[sid] = route
                log.info("route updated", extra={"sandbox_id": sid, "revision": event.kv.mod_revision,
                                                   "state": route.state.value})
        else:
            routes.pop(sid, None)
            log.info("route deleted", extra={"sandbox_id": sid, "revision": event.kv.mod_revision})
        self.table = RouteTable(routes, max(self.table.revision, event.kv.mod_revision))
        self._on_change(self.table)

    async def run(self) -> None:
        while True:
            try:
                revision = await self._list()
                async with self._etcd.using() as client:
                    watch = await client.watch_prefix(self._prefix.encode(), start_revision=revision + 1)
                    try:
                        async for event in watch:
                            self._apply(event)
                    finally:
                        try:
                            await asyncio.wait_for(watch.cancel(), 2)
                        except Exception:  # noqa: BLE001 - best effort on a failing channel
                            pass
                log.warning("route watch ended; listing again")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # compaction, lost connection, etcd restart: list again
                log.warning("route watch failed; listing again", extra={"error": repr(e)})
                await asyncio.sleep(self._retry_delay)
