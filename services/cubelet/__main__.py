"""`cube-cubelet`: the node agent (gRPC). Sandboxes keep running across its restarts."""
from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from cube_common import jsonlog, mtls
from sdk.gen.cube.v1 import cubelet_pb2_grpc
from vmm_core import VmmSettings, accel

from .registration import NodeRegistration
from .sandboxes import SandboxManager
from .server import CubeletService
from .settings import CubeletSettings
from .templates import TemplateStore
from .vs_client import VsClient

log = logging.getLogger("cubelet")

CALLERS = (mtls.Role.MASTER, mtls.Role.OPERATOR)


async def serve(settings: CubeletSettings) -> None:
    vmm = VmmSettings.from_env()
    tls = mtls.files(settings.mtls_dir, mtls.Role.CUBELET)
    vs = VsClient(settings.vs_address, tls)
    templates = TemplateStore(settings, vmm, vs)
    sandboxes = SandboxManager(settings, vmm, vs, templates)
    await sandboxes.start()
    service = CubeletService(settings, sandboxes, templates, accel.resolve(vmm.accel).value)
    # Under mutual TLS only masters (and operators: deploy.bootstrap builds the first template
    # here) may call a node.
    gates = [mtls.RoleGate(CALLERS)] if tls is not None else []
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)], interceptors=gates)
    cubelet_pb2_grpc.add_CubeletServicer_to_server(service, server)
    if mtls.add_port(server, settings.listen, tls) == 0:
        raise SystemExit(f"cannot listen on {settings.listen}")
    await server.start()
    registration = NodeRegistration(settings, service.node_status)
    templates.on_change = registration.poke
    await registration.start()
    log.info("cubelet serving", extra={"listen": settings.listen, "node_id": settings.node_id,
                                       "mtls": str(tls.dir) if tls else None})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("cubelet stopping; sandboxes keep running")
    await registration.stop()
    await server.stop(grace=5)
    await sandboxes.stop()
    await vs.close()


def main(argv: list[str] | None = None) -> None:
    settings = CubeletSettings.load(argv)
    jsonlog.setup("cube-cubelet", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
