"""The API's gRPC client for the master: one channel, per-call deadlines, and the caller.

This is the one place the API names, on a call, the team it acts for: every call made for a
request carries the authenticated caller as gRPC metadata (cube_common.teams: ``cube-team``,
``cube-role``), which the master scopes the call by. A call without a caller is the API acting
as itself (validating a key); only auth.py makes one. Under mutual TLS the master checks that the
API's certificate allows what the call claims (services/master/caller.py).
"""

from __future__ import annotations

from cube_common import mtls
from cube_common.teams import ROLE_METADATA, TEAM_METADATA, Caller
from sdk.gen.cube.v1 import master_pb2_grpc
from services.api.settings import Settings


def caller_metadata(caller: Caller | None) -> tuple[tuple[str, str], ...]:
    if caller is None:
        return ()
    return ((TEAM_METADATA, caller.team_id), (ROLE_METADATA, caller.role))


class MasterClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        # Fail fast while the master is down (503 at once) instead of queueing calls.
        tls = mtls.files(settings.mtls_dir, mtls.Role.API)
        self.channel = mtls.aio_channel(settings.master_addr, tls, mtls.Role.MASTER, options=[
            ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self.stub = master_pb2_grpc.MasterStub(self.channel)

    async def call(self, method: str, request, caller: Caller | None, slow: bool = False):
        fn = getattr(self.stub, method)
        return await fn(request, timeout=self.settings.create_timeout_s if slow else self.settings.call_timeout_s,
                        metadata=caller_metadata(caller))

    def stream(self, method: str, caller: Caller | None, timeout: float, request=None):
        """A streaming call, not awaited: a server stream (``request`` given; ``read()`` it) or a
        client stream (no ``request``; ``write()`` then ``done_writing()``, then await it). The
        caller drives it and must cancel it when it gives up."""
        fn = getattr(self.stub, method)
        if request is None:
            return fn(timeout=timeout, metadata=caller_metadata(caller))
        return fn(request, timeout=timeout, metadata=caller_metadata(caller))

    async def close(self) -> None:
        await self.channel.close(grace=None)  # the stub lacks the default (None: cancel calls at once)
