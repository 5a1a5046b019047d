"""The cubelet's client of CubeVS (same node, gRPC over a unix socket).

Invariant: a release never overtakes an allocation of the same id. A create cancelled while its
Allocate is in flight (its master died, its client left) tears down at once, but CubeVS may still
be finishing that Allocate: a Release sent meanwhile finds nothing, the allocation lands after it,
and a tap and an address outlive the sandbox with nothing left to free them (found by the master
kill -9 crash test). So every Allocate runs shielded from its caller's cancellation, and
``release`` first waits for an Allocate of the same id that is still running.
"""
from __future__ import annotations

import asyncio
import builtins

import grpc

from cube_common import mtls
from sdk.gen.cube.v1 import network_pb2, vs_pb2, vs_pb2_grpc
from vmm_core import NetworkAttachment


def vm_attachment(net: vs_pb2.SandboxNetwork) -> NetworkAttachment:
    """The VM's side of a CubeVS allocation: its tap, and the guest MAC CubeVS expects (vmm_core's
    default when CubeVS names none)."""
    return NetworkAttachment(net.tap, net.guest.mac or NetworkAttachment.mac)


class VsClient:
    ALLOCATE_TIMEOUT_S = 30.0

    def __init__(self, address: str, tls: mtls.TlsFiles | None = None) -> None:
        # With TLS the cubelet proves it is one, and checks it reached a holder of a vs certificate.
        self._channel = mtls.aio_channel(address, tls, mtls.Role.VS)
        self._stub = vs_pb2_grpc.CubeVSStub(self._channel)
        self._allocating: dict[str, asyncio.Task[vs_pb2.AllocateResponse]] = {}

    async def allocate(self, vs_id: str, policy: network_pb2.NetworkPolicy) -> vs_pb2.SandboxNetwork:
        call = asyncio.ensure_future(self._stub.Allocate(vs_pb2.AllocateRequest(sandbox_id=vs_id, policy=policy),
                                                         timeout=self.ALLOCATE_TIMEOUT_S))
        self._allocating[vs_id] = call
        call.add_done_callback(lambda done: self._forget_allocation(vs_id, done))
        resp = await asyncio.shield(call)
        return resp.network

    def _forget_allocation(self, vs_id: str, done: asyncio.Task) -> None:
        if self._allocating.get(vs_id) is done:
            del self._allocating[vs_id]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited (caller cancelled) is not logged as lost

    async def update_policy(self, vs_id: str, policy: network_pb2.NetworkPolicy) -> vs_pb2.SandboxNetwork:
        resp = await self._stub.UpdatePolicy(vs_pb2.UpdatePolicyRequest(sandbox_id=vs_id, policy=policy), timeout=30)
        return resp.network

    async def release(self, vs_id: str) -> bool:
        """False when the sandbox had no network (already released): release is idempotent."""
        pending = self._allocating.get(vs_id)
        if pending is not None:
            # Its outcome does not matter here, only that CubeVS is done with it (bounded by its deadline).
            await asyncio.wait({pending}, timeout=self.ALLOCATE_TIMEOUT_S + 5)
        try:
            await self._stub.Release(vs_pb2.ReleaseRequest(sandbox_id=vs_id), timeout=30)
            return True
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    async def list(self) -> list[vs_pb2.SandboxNetwork]:
        return list((await self._stub.List(vs_pb2.ListRequest(), timeout=30)).networks)

    # After `list` above, `list` in this class's annotations names that method: use builtins.list.
    async def reconcile(self, live: builtins.list[str]) -> vs_pb2.ReconcileResponse:
        return await self._stub.Reconcile(vs_pb2.ReconcileRequest(live_sandbox_ids=live), timeout=60)

    async def stats(self, vs_ids: builtins.list[str]) -> dict[str, vs_pb2.SandboxStats]:
        resp = await self._stub.Stats(vs_pb2.StatsRequest(sandbox_ids=vs_ids), timeout=30)
        return {s.sandbox_id: s for s in resp.stats}

    async def status(self) -> vs_pb2.StatusResponse:
        return await self._stub.Status(vs_pb2.StatusRequest(), timeout=30)

    async def close(self) -> None:
        await self._channel.close(grace=None)  # the stub lacks the default (None: cancel calls at once)
