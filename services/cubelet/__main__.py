"""`cube-cubelet`: the node agent (gRPC). Sandboxes keep running across its restarts."""
from __future__ import annotations

import asyncio
import logging
import signal

from cube_common import jsonlog, metrics, mtls
from vmm_core import VmmSettings, accel, accounting

from .metrics import CubeletMetrics
from .paused_pull import PausedStatePuller
from .prefetch import Prefetcher
from .pull import EtcdPeers, TemplatePuller
from .registration import NodeRegistration
from .sandboxes import SandboxManager
from .server import CubeletService, grpc_server
from .settings import CubeletSettings
from .templates import TemplateStore
from .vs_client import VsClient

log = logging.getLogger("cubelet")


async def serve(settings: CubeletSettings) -> None:
    vmm = VmmSettings.from_env()
    tls = mtls.files(settings.mtls_dir, mtls.Role.CUBELET)
    vs = VsClient(settings.vs_address, tls)
    templates = TemplateStore(settings, vmm, vs)
    sandboxes = SandboxManager(settings, vmm, vs, templates)
    peers = EtcdPeers(settings, tls)
    puller = TemplatePuller(settings, templates, tls, peers=peers)
    sandboxes.pull_template = puller.pull  # a create for a template this node lacks pulls it first
    prefetcher = Prefetcher(settings, templates, puller, peers)  # ... and every template comes ahead of creates
    sandboxes.arrivals = PausedStatePuller(settings, vmm, tls)  # a resume of a sandbox paused elsewhere pulls it
    await sandboxes.start()
    service = CubeletService(settings, sandboxes, templates, accel.resolve(vmm.accel).value)
    figures = CubeletMetrics(service).register()
    try:
        server = grpc_server(service, settings.listen, tls)
        listener = metrics.serve(settings.metrics_listen, loop=asyncio.get_running_loop())
    except OSError as e:
        raise SystemExit(str(e)) from None
    await server.start()
    registration = NodeRegistration(settings, service.node_status)
    templates.on_change = registration.poke
    await registration.start()
    await prefetcher.start()
    log.info("cubelet serving", extra={"listen": settings.listen, "node_id": settings.node_id,
                                       "mtls": str(tls.dir) if tls else None, "mem_merge": vmm.mem_merge})
    ksm = accounting.ksm_state()
    if vmm.mem_merge and not (ksm and ksm.running):
        log.warning("CUBE_MEM_MERGE is on but the host's KSM is not running: nothing is merged "
                    "(echo 1 > /sys/kernel/mm/ksm/run)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("cubelet stopping; sandboxes keep running")
    await prefetcher.stop()
    await registration.stop()
    await server.stop(grace=5)
    if listener is not None:
        listener.close()
    figures.unregister()
    await puller.close()
    await sandboxes.stop()
    await vs.close()


def main(argv: list[str] | None = None) -> None:
    settings = CubeletSettings.load(argv)
    jsonlog.setup("cube-cubelet", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
