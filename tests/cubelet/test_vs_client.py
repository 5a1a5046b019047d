"""The cubelet's CubeVS client never lets a release overtake an allocation of the same id.

A unit test of the client's ordering: the server here is a stand-in that only records the order
in which Allocate finishes and Release arrives (the datapath itself is tested in tests/vs).
"""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
import pytest

from sdk.gen.cube.v1 import vs_pb2, vs_pb2_grpc
from services.cubelet.vs_client import VsClient


class SlowAllocations(vs_pb2_grpc.CubeVSServicer):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.allocated: set[str] = set()

    async def Allocate(self, request, context):
        await asyncio.sleep(0.5)  # CubeVS creating the tap, attaching programs
        self.allocated.add(request.sandbox_id)
        self.events.append(f"allocated {request.sandbox_id}")
        return vs_pb2.AllocateResponse(network=vs_pb2.SandboxNetwork(sandbox_id=request.sandbox_id))

    async def Release(self, request, context):
        self.events.append(f"release {request.sandbox_id}")
        if request.sandbox_id not in self.allocated:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such sandbox")
        self.allocated.discard(request.sandbox_id)
        return vs_pb2.ReleaseResponse()


@pytest.fixture
async def vs():
    sock = Path(tempfile.mkdtemp(prefix="cube-vs-client-")) / "vs.sock"
    servicer = SlowAllocations()
    server = grpc.aio.server()
    vs_pb2_grpc.add_CubeVSServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    client = VsClient(f"unix://{sock}")
    try:
        yield client, servicer
    finally:
        await client.close()
        await server.stop(None)


async def test_release_waits_for_a_cancelled_allocation(vs):
    client, servicer = vs
    create = asyncio.ensure_future(client.allocate("sbx1", vs_pb2.AllocateRequest().policy))
    await asyncio.sleep(0.1)
    create.cancel()  # the create's caller went away mid-Allocate
    with pytest.raises(asyncio.CancelledError):
        await create
    assert await client.release("sbx1") is True  # it waited, then released what was allocated
    assert servicer.events == ["allocated sbx1", "release sbx1"] and not servicer.allocated


async def test_release_without_an_allocation_is_idempotent(vs):
    client, _servicer = vs
    assert await client.release("nothing") is False
    net = await client.allocate("sbx2", vs_pb2.AllocateRequest().policy)
    assert net.sandbox_id == "sbx2"
    assert await client.release("sbx2") is True and await client.release("sbx2") is False
