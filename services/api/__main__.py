"""cube-api: the E2B-compatible REST API.

    cube-api [--port 3000] [--master-addr 127.0.0.1:7070] [--domain cube.localhost] [--auth true]

Every flag has an environment variable (CUBE_API_*, and the shared CUBE_MASTER_ADDR, CUBE_DOMAIN,
CUBE_AUTH). Point the SDKs at it with E2B_API_URL=http://<host>:3000 and any E2B_API_KEY (or, with
auth on, one from `cubemastercli apikey create`).
"""

from __future__ import annotations

import argparse
import sys

from services.api import log as alog
from services.api.app import create_app
from services.api.settings import add_arguments, from_args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cube-api", description="Cube E2B-compatible API")
    add_arguments(ap)
    settings = from_args(ap.parse_args(argv))
    alog.setup(settings.log_level)
    app = create_app(settings, name="cube_api")
    app.run(host=settings.host, port=settings.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    sys.exit(main())
