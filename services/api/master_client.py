"""The API's gRPC client for the master: one channel, per-call deadlines."""

from __future__ import annotations

import grpc

from sdk.gen.cube.v1 import master_pb2_grpc
from services.api.settings import Settings


class MasterClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        # Fail fast while the master is down (503 at once) instead of queueing calls.
        self.channel = grpc.aio.insecure_channel(settings.master_addr, options=[
            ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self.stub = master_pb2_grpc.MasterStub(self.channel)

    async def call(self, method: str, request, slow: bool = False):
        fn = getattr(self.stub, method)
        return await fn(request, timeout=self.settings.create_timeout_s if slow else self.settings.call_timeout_s)

    async def close(self) -> None:
        await self.channel.close(grace=None)  # the stub lacks the default (None: cancel calls at once)
