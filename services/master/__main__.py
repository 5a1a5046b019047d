"""cube-master: the Cube cluster brain.

    cube-master [--listen 0.0.0.0:7070] [--etcd-endpoints 127.0.0.1:2379] [--leader-ttl-s 10] ...

Every flag has a CUBE_MASTER_* environment variable (and the shared ones CUBE_ETCD_ENDPOINTS,
CUBE_ETCD_PREFIX, CUBE_DEFAULT_TEMPLATE; see settings.py). Run several for a standby: they
elect a leader through etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.master import log as mlog
from services.master.app import serve
from services.master.settings import add_arguments, from_args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cube-master", description="Cube cluster master (gRPC)")
    add_arguments(ap)
    settings = from_args(ap.parse_args(argv))
    mlog.setup(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
