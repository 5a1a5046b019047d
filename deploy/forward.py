"""A TCP forwarder: what a load balancer in front of a cluster's edge proxy does, on one machine.

    python -m deploy.forward --listen 127.0.0.1:443 --listen [::1]:443 --to 10.78.0.11:443

The one-machine cluster (deploy/cluster.py) serves sandboxes from the edge proxy of its first
host, inside that host's network namespace. SDK clients on this machine resolve
``<port>-<id>.<domain>`` (a name under ``.localhost``) to loopback, so this forwards loopback's
port to the edge proxy, bytes untouched (TLS ends at the proxy, as behind a TCP load balancer).

Invariants: it listens only where told (loopback by default, as every Cube listener); each
connection holds at most two bounded buffers (``CHUNK``), so a slow side stalls the other rather than
growing memory; when either side closes or fails, both are closed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from cube_common.addresses import split_host_port

CHUNK = 64 << 10
log = logging.getLogger("deploy.forward")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _serve(target: tuple[str, int], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        upstream_r, upstream_w = await asyncio.wait_for(asyncio.open_connection(*target), 10)
    except (OSError, TimeoutError) as e:
        log.warning("upstream unreachable: %s", e)
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
    finally:
        for w in (client_w, upstream_w):
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def run(listens: list[tuple[str, int]], target: tuple[str, int]) -> None:
    servers = [await asyncio.start_server(lambda r, w: _serve(target, r, w), host, port, reuse_address=True)
               for host, port in listens]
    log.info("forwarding %s to %s:%d", ", ".join(f"{h}:{p}" for h, p in listens), *target)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m deploy.forward")
    ap.add_argument("--listen", action="append", required=True, help="host:port to listen on (repeatable)")
    ap.add_argument("--to", required=True, help="host:port to forward to")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run([split_host_port(x) for x in a.listen], split_host_port(a.to)))


if __name__ == "__main__":
    main()
