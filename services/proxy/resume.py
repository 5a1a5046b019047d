"""Auto-resume: traffic for a paused sandbox created with autoResume wakes it up.

Envoy sends such a request here (the paused route's action, see xds.py), with the sandbox named
in `x-cube-sandbox` by the request-normalising Lua filter (which drops any copy a client sent).
The resumer asks the master to resume the sandbox with its own timeout (ConnectSandbox, the call
the SDK's connect makes: it returns once every proxy serves the running route), then answers 307
to the very same URL. The route's internal-redirect policy makes Envoy
follow that 307 itself: it routes the request again, now to the running sandbox, and replays the
buffered request, so the client sees one ordinary response. Concurrent requests for one sandbox
each ask; the master resumes it once and the others find it running.

Failures come back in the shape the SDK reads (errors.py): an unknown sandbox is "was not found",
and anything else that keeps it paused is a 502 saying why.

With the proxy's cluster TLS directory the master is reached over mutual TLS: the proxy presents
its proxy certificate (the master lets that role make only these two calls) and accepts only a
server proving the master's name. The resumer's own listener is plain HTTP on loopback: only the
local Envoy calls it (settings.py keeps it there).
"""
from __future__ import annotations

import logging

import grpc
from aiohttp import web

from cube_common import mtls
from cube_common.mtls import Role
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc

from . import errors
from .routes import SANDBOX_ID_RE
from .settings import ProxySettings
from .xds import SANDBOX_HEADER

log = logging.getLogger("cube.proxy.resume")


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, text=errors.dumps(body), content_type="application/json")


class Resumer:
    def __init__(self, settings: ProxySettings, tls: mtls.TlsFiles | None = None) -> None:
        self.settings = settings
        self.tls = tls  # the proxy's cluster TLS directory; None: plaintext to the master
        self._channel: grpc.aio.Channel | None = None
        self._stub: master_pb2_grpc.MasterStub | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        s = self.settings
        self._channel = mtls.aio_channel(s.master_addr, self.tls, Role.MASTER, options=[("grpc.enable_retries", 0)])
        self._stub = master_pb2_grpc.MasterStub(self._channel)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.resumer.host, s.resumer.port).start()
        log.info("resumer listening", extra={"address": str(s.resumer), "master": s.master_addr})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(grace=None)  # at once (grpc's default; its stub wants it named)

    async def handle(self, request: web.Request) -> web.Response:
        sid = request.headers.get(SANDBOX_HEADER, "")
        if not SANDBOX_ID_RE.match(sid):
            return _json(400, errors.client_error(400, "not an auto-resume request"))
        assert self._stub is not None
        timeout = self.settings.resume_timeout
        try:
            rec = await self._stub.GetSandbox(master_pb2.GetSandboxRequest(sandbox_id=sid), timeout=10)
            if not rec.auto_resume:  # the route said so, but the record is the authority
                return _json(502, errors.paused(sid))
            await self._stub.ConnectSandbox(
                master_pb2.ConnectSandboxRequest(sandbox_id=sid, timeout_s=rec.timeout_s), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return _json(502, errors.not_found(sid))
            log.warning("auto-resume failed", extra={"sandbox_id": sid, "error": e.details() or e.code().name})
            return _json(502, {**errors.paused(sid), "message": f"{errors.paused_message(sid)} and could not be "
                                                                f"resumed: {e.details() or e.code().name}"})
        log.info("auto-resumed on traffic", extra={"sandbox_id": sid})
        scheme = request.headers.get("x-forwarded-proto", "http")
        return web.Response(status=307, headers={"Location": f"{scheme}://{request.host}{request.raw_path}"})
