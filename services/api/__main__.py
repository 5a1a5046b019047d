"""cube-api: the E2B-compatible REST API.

    cube-api [--host 127.0.0.1] [--port 3000] [--master-addr 127.0.0.1:50051] [--domain cube.localhost] [--auth true]

Every flag has an environment variable (CUBE_API_*, and the shared CUBE_MASTER_ADDR, CUBE_DOMAIN,
CUBE_AUTH); `cube-api --help` lists them all. Point the SDKs at it with
E2B_API_URL=http://<host>:3000 and any E2B_API_KEY (or, with auth on, one from
`cubemastercli apikey create`). It listens on loopback unless told otherwise, and with auth off it
refuses any other address unless given --insecure-public (cube_common/listen.py).
"""

from __future__ import annotations

from cube_common import metrics
from services.api import log as alog
from services.api.app import create_app
from services.api.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings.load(argv)
    alog.setup(settings.log_level)
    app = create_app(settings, name="cube_api")
    # Its figures are counters updated from Sanic's loop: the listener's thread reads them as they are.
    metrics.serve(settings.metrics_listen)
    app.run(host=settings.host, port=settings.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
