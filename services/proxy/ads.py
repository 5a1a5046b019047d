"""The ADS server: state-of-the-world xDS over one gRPC stream per Envoy (v3, aggregated).

Protocol as implemented (envoy api/envoy/service/discovery/v3 semantics):

* Every resource type (clusters, listeners, the route configuration) has a version string
  `<boot>-<n>`; `n` grows only when the type's content changes, and `<boot>` is new per process so
  a restarted control plane never reuses a version Envoy already holds. A new stream always gets
  the full current state, which is what removes stale routes after a reconnect.
* Each response carries a fresh nonce. A request whose `response_nonce` is the last one sent for
  its type answers that response: ACK without `error_detail`, NACK with it (logged with Envoy's
  reason; Envoy keeps its previous config). Requests carrying an older nonce are ignored.
* At most one response per type is in flight on a stream; changes made meanwhile are coalesced
  into the next one, so a burst of etcd events costs one push.
* Clusters go first: a route configuration is sent only once the current clusters were answered,
  so no route ever points at a cluster Envoy does not have yet.
* When Envoy ACKs a route configuration, `on_routes_applied(revision)` is called with the etcd
  revision of the route table that configuration was built from (the basis of ack.py).

Who may connect: with the proxy's cluster TLS directory (`start(address, tls)`) the server speaks
mutual TLS only and serves only peers with an envoy certificate of the cluster CA (a peer without
a certificate fails the handshake; another role gets PERMISSION_DENIED before any handler runs).
Routes carry traffic tokens, so nothing else may read them. Without it, plaintext, which is safe
only because the address is a unix socket in the proxy's private runtime directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from cube_common import mtls
from cube_common.mtls import Role

from . import xds

log = logging.getLogger("cube.proxy.ads")

# Order matters: clusters before anything that names them.
TYPE_ORDER = (xds.CLUSTER_TYPE, xds.LISTENER_TYPE, xds.ROUTE_TYPE)
SHORT = {xds.CLUSTER_TYPE: "CDS", xds.LISTENER_TYPE: "LDS", xds.ROUTE_TYPE: "RDS"}


@dataclass
class _TypeState:
    version: str
    resources: dict[str, any_pb2.Any]  # serialised when published: builders may reuse messages
    digest: bytes


@dataclass
class _Snapshot:
    types: dict[str, _TypeState]
    route_revision: int


@dataclass(eq=False)
class _Stream:
    peer: str
    # type URL → requested names (empty set = wildcard), as last said by Envoy
    subscribed: dict[str, frozenset[str]] = field(default_factory=dict)
    sent_version: dict[str, str] = field(default_factory=dict)
    sent_names: dict[str, frozenset[str]] = field(default_factory=dict)
    pending_nonce: dict[str, str] = field(default_factory=dict)  # in flight, unanswered
    acked_version: dict[str, str] = field(default_factory=dict)
    route_revision_in_flight: int = 0
    reported_revision: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    node_id: str = ""


def _pack_one(m: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url="type.googleapis.com/" + m.DESCRIPTOR.full_name,
                       value=m.SerializeToString(deterministic=True))


def _digest(packed: dict[str, any_pb2.Any]) -> bytes:
    return hashlib.sha256(b"".join(name.encode() + b"\0" + a.value + b"\0"
                                   for name, a in sorted(packed.items()))).digest()


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, on_routes_applied: Callable[[int], None] | None = None,
                 on_streams_changed: Callable[[int], None] | None = None):
        self._boot = os.urandom(4).hex()
        self._counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._snapshot: _Snapshot | None = None
        self._streams: set[_Stream] = set()
        self._on_routes_applied = on_routes_applied or (lambda rev: None)
        self._on_streams_changed = on_streams_changed or (lambda n: None)
        self._server: grpc.aio.Server | None = None
        self._packed: dict[str, dict[str, tuple[Message, any_pb2.Any]]] = {}

    def _pack(self, type_url: str, resources: dict[str, Message]) -> dict[str, any_pb2.Any]:
        """Serialise now. Listener and cluster messages are immutable once built (the builder
        reuses the same objects), so their bytes are cached by identity; the route configuration
        is edited in place between builds and is always serialised afresh."""
        if type_url == xds.ROUTE_TYPE:
            return {name: _pack_one(m) for name, m in resources.items()}
        cache = self._packed.setdefault(type_url, {})
        out, fresh = {}, {}
        for name, m in resources.items():
            hit = cache.get(name)
            a = hit[1] if hit is not None and hit[0] is m else _pack_one(m)
            out[name] = a
            fresh[name] = (m, a)
        self._packed[type_url] = fresh
        return out

    # -- state ---------------------------------------------------------------------------------

    def set_resources(self, resources: xds.Resources, route_revision: int) -> None:
        """Publish a new desired state (cheap when a type did not change)."""
        old = self._snapshot.types if self._snapshot else {}
        types = {}
        for type_url, res in resources.by_type().items():
            packed = self._pack(type_url, res)
            digest = _digest(packed)
            prev = old.get(type_url)
            if prev is not None and prev.digest == digest:
                types[type_url] = prev
            else:
                types[type_url] = _TypeState(f"{self._boot}-{next(self._counter)}", packed, digest)
        self._snapshot = _Snapshot(types, route_revision)
        for s in self._streams:
            s.wake.set()

    @property
    def connected_streams(self) -> int:
        return len(self._streams)

    # -- gRPC ----------------------------------------------------------------------------------

    async def start(self, address: str, tls: mtls.TlsFiles | None = None) -> None:
        """`address`: a gRPC target such as `unix:/path/ads.sock` or `127.0.0.1:18000`; `tls`: the
        proxy's cluster TLS directory (None: plaintext), see the module docstring."""
        gate = [mtls.RoleGate({Role.ENVOY})] if tls is not None else []
        self._server = grpc.aio.server(options=[("grpc.max_send_message_length", 256 << 20)],
                                       interceptors=gate)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        mtls.add_port(self._server, address, tls)
        await self._server.start()
        log.info("ADS server listening", extra={"address": address, "mtls": tls is not None})

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None

    async def StreamAggregatedResources(self, request_iterator, context):
        identity = mtls.peer_identity(context)  # None on plaintext
        stream = _Stream(peer=str(identity) if identity else context.peer())
        self._streams.add(stream)
        self._on_streams_changed(len(self._streams))
        reader = asyncio.ensure_future(self._read(stream, request_iterator))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if reader.done():
                    break
                for response in self._due(stream):
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)
            self._on_streams_changed(len(self._streams))
            log.info("Envoy stream closed", extra={"peer": stream.peer, "envoy_node": stream.node_id})

    async def DeltaAggregatedResources(self, request_iterator, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "CubeProxy serves state-of-the-world ADS only")

    async def _read(self, stream: _Stream, requests) -> None:
        try:
            async for req in requests:
                self._on_request(stream, req)
                stream.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream broke; the writer notices through `done()`
            log.info("Envoy stream read ended", extra={"error": repr(e)})
        finally:
            stream.wake.set()

    def _on_request(self, stream: _Stream, req: discovery_pb2.DiscoveryRequest) -> None:
        t = req.type_url
        if t not in SHORT:
            log.warning("request for an unknown resource type", extra={"type_url": t})
            return
        if req.node.id:
            if not stream.node_id:
                log.info("Envoy connected", extra={"peer": stream.peer, "envoy_node": req.node.id})
            stream.node_id = req.node.id
        names = frozenset(req.resource_names)
        pending = stream.pending_nonce.get(t)
        if req.response_nonce:
            if req.response_nonce != pending:
                return  # answers an older response; a newer one is in flight
            del stream.pending_nonce[t]
            if req.HasField("error_detail"):
                log.error("Envoy rejected a config (NACK)", extra={
                    "type": SHORT[t], "version": stream.sent_version.get(t), "error": req.error_detail.message[-4000:]})
                # Forget what we sent so the same content is not re-sent forever in a loop;
                # it is sent again only when the desired state changes.
            else:
                stream.acked_version[t] = req.version_info
                if t == xds.ROUTE_TYPE:
                    self._report(stream, stream.route_revision_in_flight)
        stream.subscribed[t] = names

    def _report(self, stream: _Stream, revision: int) -> None:
        if revision > stream.reported_revision:
            stream.reported_revision = revision
            self._on_routes_applied(revision)

    def _due(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        snap = self._snapshot
        if snap is None:
            return []
        out = []
        for t in TYPE_ORDER:
            if t not in stream.subscribed or t in stream.pending_nonce:
                continue
            state = snap.types[t]
            names = stream.subscribed[t]
            if stream.sent_version.get(t) == state.version and stream.sent_names.get(t) == names:
                if t == xds.ROUTE_TYPE and stream.acked_version.get(t) == state.version:
                    # Same routes at a newer revision (an identical put, a skipped record):
                    # what Envoy serves already reflects it.
                    self._report(stream, snap.route_revision)
                continue
            if t != xds.CLUSTER_TYPE and xds.CLUSTER_TYPE in stream.subscribed and (
                    xds.CLUSTER_TYPE in stream.pending_nonce
                    or stream.sent_version.get(xds.CLUSTER_TYPE) != snap.types[xds.CLUSTER_TYPE].version):
                continue  # clusters first; woken again when they are answered
            selected = state.resources if not names else {n: m for n, m in state.resources.items() if n in names}
            nonce = str(next(self._nonces))
            out.append(discovery_pb2.DiscoveryResponse(
                version_info=state.version, type_url=t, nonce=nonce,
                resources=[a for _, a in sorted(selected.items())]))
            stream.pending_nonce[t] = nonce
            stream.sent_version[t] = state.version
            stream.sent_names[t] = names
            if t == xds.ROUTE_TYPE:
                stream.route_revision_in_flight = snap.route_revision
            log.debug("sent", extra={"type": SHORT[t], "version": state.version, "resources": len(selected)})
        return out
