"""cube-master: the Cube cluster brain.

    cube-master [--listen 127.0.0.1:50051] [--etcd-endpoints 127.0.0.1:2379] [--leader-ttl-s 10] ...

Every flag has a CUBE_MASTER_* environment variable (and the shared ones CUBE_ETCD_ENDPOINTS,
CUBE_ETCD_PREFIX, CUBE_DEFAULT_TEMPLATE; `cube-master --help` lists them). Run several for a standby: they
elect a leader through etcd.
"""

from __future__ import annotations

import asyncio

from services.master import log as mlog
from services.master.app import serve
from services.master.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings.load(argv)
    mlog.setup(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
