"""gRPC service ``cube.v1.CubeVS``: translates protos to the node network's dataclasses and its
errors to status codes. No logic of its own."""

from __future__ import annotations

import functools
from concurrent import futures

import grpc

from cube_common import metrics, mtls
from sdk.gen.cube.v1 import network_pb2, vs_pb2, vs_pb2_grpc
from services.vs.counters import SandboxCounters
from services.vs.guest import GuestNetwork
from services.vs.log import get_logger
from services.vs.network import AlreadyExists, Exhausted, InvalidArgument, NodeNetwork, NotFound, SandboxNetwork
from services.vs.policy import NetworkPolicy, PolicyError

log = get_logger("server")


def policy_from_proto(p: network_pb2.NetworkPolicy | None) -> NetworkPolicy:
    if p is None:
        return NetworkPolicy()
    return NetworkPolicy(
        allow_internet_access=p.allow_internet_access if p.HasField("allow_internet_access") else True,
        allow_out=tuple(p.allow_out), deny_out=tuple(p.deny_out),
        exposed_ports=tuple(int(x) for x in p.exposed_ports), expose_all_ports=p.expose_all_ports,
    )


def policy_to_proto(p: NetworkPolicy) -> network_pb2.NetworkPolicy:
    return network_pb2.NetworkPolicy(
        allow_internet_access=p.allow_internet_access, allow_out=list(p.allow_out), deny_out=list(p.deny_out),
        exposed_ports=list(p.exposed_ports), expose_all_ports=p.expose_all_ports)


def guest_from_proto(g: network_pb2.GuestNetwork | None) -> GuestNetwork:
    d = GuestNetwork()
    if g is None:
        return d
    return GuestNetwork(ip=g.ip or d.ip, prefix_len=g.prefix_len or d.prefix_len,
                        gateway_ip=g.gateway_ip or d.gateway_ip, mac=(g.mac or d.mac).lower(),
                        gateway_mac=(g.gateway_mac or d.gateway_mac).lower())


def guest_to_proto(g: GuestNetwork) -> network_pb2.GuestNetwork:
    return network_pb2.GuestNetwork(ip=g.ip, prefix_len=g.prefix_len, gateway_ip=g.gateway_ip, mac=g.mac,
                                    gateway_mac=g.gateway_mac)


def network_to_proto(n: SandboxNetwork) -> vs_pb2.SandboxNetwork:
    return vs_pb2.SandboxNetwork(
        sandbox_id=n.sandbox_id, tap=n.tap, host_address=str(n.address), proxy_address=str(n.proxy_address),
        guest=guest_to_proto(n.guest), policy=policy_to_proto(n.policy), created_unix_ms=int(n.created_at * 1000))


def stats_to_proto(sid: str, c: SandboxCounters) -> vs_pb2.SandboxStats:
    return vs_pb2.SandboxStats(sandbox_id=sid, egress_bytes=c.egress_bytes, egress_packets=c.egress_packets,
                               ingress_bytes=c.ingress_bytes, ingress_packets=c.ingress_packets, drops=c.drops)


_CODES = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyError, grpc.StatusCode.INVALID_ARGUMENT),
    (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def _rpc(fn):
    """Map our exceptions to status codes; anything else is INTERNAL and logged."""

    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except Exception as e:
            for cls, code in _CODES:
                if isinstance(e, cls):
                    context.abort(code, str(e))
            log.exception("rpc failed", extra={"rpc": fn.__name__,
                                               "sandbox_id": getattr(request, "sandbox_id", None)})
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return wrapper


class CubeVSServicer(vs_pb2_grpc.CubeVSServicer):
    def __init__(self, node: NodeNetwork):
        self.node = node

    @_rpc
    def Allocate(self, request, context):
        n = self.node.allocate(request.sandbox_id,
                               policy_from_proto(request.policy if request.HasField("policy") else None),
                               guest_from_proto(request.guest if request.HasField("guest") else None))
        return vs_pb2.AllocateResponse(network=network_to_proto(n), warm=n.warm)

    @_rpc
    def UpdatePolicy(self, request, context):
        if not request.HasField("policy"):
            raise InvalidArgument("policy is required")
        return vs_pb2.UpdatePolicyResponse(
            network=network_to_proto(self.node.update_policy(request.sandbox_id, policy_from_proto(request.policy))))

    @_rpc
    def Release(self, request, context):
        self.node.release(request.sandbox_id)
        return vs_pb2.ReleaseResponse()

    @_rpc
    def Get(self, request, context):
        return vs_pb2.GetResponse(network=network_to_proto(self.node.get(request.sandbox_id)))

    @_rpc
    def List(self, request, context):
        return vs_pb2.ListResponse(networks=[network_to_proto(n) for n in self.node.list()])

    @_rpc
    def Stats(self, request, context):
        return vs_pb2.StatsResponse(stats=[stats_to_proto(s, c) for s, c in self.node.stats(list(request.sandbox_ids))])

    @_rpc
    def Reconcile(self, request, context):
        r = self.node.reconcile(None if request.cleanup_only else list(request.live_sandbox_ids))
        return vs_pb2.ReconcileResponse(released=r.released, missing=r.missing, removed_taps=r.removed_taps,
                                        removed_entries=r.removed_entries)

    @_rpc
    def Status(self, request, context):
        s = self.node.status()
        return vs_pb2.StatusResponse(**s)


# Who may call CubeVS under mutual TLS: its node's cubelet, and operators (deploy.cleanup, tools).
CALLERS = (mtls.Role.CUBELET, mtls.Role.OPERATOR)


def serve(node: NodeNetwork, listen: str, max_workers: int = 8, tls: mtls.TlsFiles | None = None) -> grpc.Server:
    """Start a gRPC server for ``node`` on ``listen`` (e.g. "unix:///run/cube/vs.sock"): with mutual
    TLS and only ``CALLERS`` served when there is ``tls``, else plaintext."""
    gates: list[grpc.ServerInterceptor] = [mtls.SyncRoleGate(CALLERS)] if tls is not None else []
    # Figures first, so that the calls a gate refuses count too.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vs-rpc"),
                         interceptors=[metrics.SyncGrpcServerMetrics(), *gates])
    vs_pb2_grpc.add_CubeVSServicer_to_server(CubeVSServicer(node), server)
    if listen.startswith("unix://"):
        import os
        path = listen[len("unix://"):]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
    port = mtls.add_port(server, listen, tls)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    log.info("serving", extra={"listen": listen, "mtls": str(tls.dir) if tls else None})
    return server
