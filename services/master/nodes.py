"""gRPC clients for the cubelets, one channel per node address, with per-call deadlines.

A node's address comes from its NodeStatus (written by the cubelet at <prefix>/nodes/<id>).
Status codes from the node are translated to the master's errors here, so callers deal with one
vocabulary.
"""

from __future__ import annotations

import grpc

from cube_common import mtls
from sdk.gen.cube.v1 import cubelet_pb2, cubelet_pb2_grpc
from services.master import errors
from services.master.log import get_logger

log = get_logger("nodes")

_MAP = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Exhausted,
    grpc.StatusCode.UNAVAILABLE: errors.NodeUnreachable,
}


def node_error(e: grpc.RpcError, node_id: str) -> errors.MasterError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    detail = e.details() if hasattr(e, "details") else str(e)
    cls = _MAP.get(code, errors.Unavailable)
    return cls(f"node {node_id}: {detail or code.name}")


class NodeClients:
    def __init__(self, rpc_timeout_s: float = 10.0, tls: mtls.TlsFiles | None = None):
        self.rpc_timeout_s = rpc_timeout_s
        self.tls = tls  # mutual TLS to every cubelet, checking it holds a cubelet certificate
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> cubelet_pb2_grpc.CubeletStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = mtls.aio_channel(address, self.tls, mtls.Role.CUBELET, options=[("grpc.enable_retries", 0)])
            self._channels[address] = ch
        return cubelet_pb2_grpc.CubeletStub(ch)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close(grace=None)  # at once (grpc's default; its stub wants it named)
        self._channels.clear()

    async def call(self, node: cubelet_pb2.NodeStatus, method: str, request, timeout: float | None = None):
        """Call ``Cubelet.<method>`` on ``node``; node errors become master errors."""
        fn = getattr(self.stub(node.address), method)
        try:
            return await fn(request, timeout=timeout or self.rpc_timeout_s)
        except grpc.RpcError as e:
            raise node_error(e, node.node_id) from e
