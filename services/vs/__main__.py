"""cube-vs: run CubeVS on this node.

    cube-vs [--listen unix:///run/cube/vs.sock] [--pool-cidr 198.19.0.0/16] [--uplinks eth0] ...
    cube-vs teardown   # remove everything CubeVS put in the kernel (taps, programs, pins)

Every flag has a CUBE_VS_* environment variable (`cube-vs --help` lists them). Stopping the service (SIGTERM)
leaves the datapath in place: running sandboxes keep their network and the next start re-adopts
it. ``teardown`` is for uninstalling.
"""

from __future__ import annotations

import argparse
import signal
import threading

from cube_common import metrics, mtls
from services.vs import log as vslog, metrics as vs_metrics
from services.vs.network import NodeNetwork
from services.vs.server import serve
from services.vs.settings import Settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cube-vs", description=Settings.DESCRIPTION)
    ap.add_argument("command", nargs="?", default="serve", choices=("serve", "teardown"))
    args = Settings.parser(ap).parse_args(argv)
    settings = Settings.from_namespace(args)
    vslog.setup(settings.log_level)
    log = vslog.get_logger("main")

    node = NodeNetwork(settings)
    node.start()
    if args.command == "teardown":
        node.teardown()
        log.info("teardown complete")
        return

    server = serve(node, settings.listen, tls=mtls.files(settings.mtls_dir, mtls.Role.VS))
    # No event loop here: the figures read the network under its own lock, from the listener's thread.
    vs_metrics.register(node)
    listener = metrics.serve(settings.metrics_listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping; the datapath stays for the next start")
    server.stop(grace=5).wait()
    if listener is not None:
        listener.close()
    node.stop()


if __name__ == "__main__":
    main()
