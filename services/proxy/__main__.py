"""`python -m services.proxy` / `cube-proxy`: run CubeProxy in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

# Spawning Envoy forks while gRPC threads run; gRPC's fork handlers are not wanted (exec follows).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from cube_common import metrics
from cube_common.mtls import TlsError

from . import log as proxy_log
from .service import ProxyService
from .settings import ProxySettings


async def _run(settings: ProxySettings) -> int:
    service = ProxyService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Envoy's stats are read in the listener's thread, not in this loop: a slow admin holds no route.
    listener = metrics.serve(settings.metrics_listen, loop=loop, extra=service.metrics.envoy_stats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        waiter = asyncio.ensure_future(service.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if waiter.done() and (exc := waiter.exception()) is not None:
            raise exc
        waiter.cancel()
        stopper.cancel()
        return code
    finally:
        await service.stop()
        if listener is not None:
            listener.close()


def main(argv: list[str] | None = None) -> None:
    settings = ProxySettings.load(argv)
    proxy_log.setup(settings.log_level, proxy_id=settings.proxy_id)
    try:
        code = asyncio.run(_run(settings))
    except TlsError as e:  # a bad TLS directory is the operator's to fix: say which, no traceback
        print(f"cube-proxy: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
