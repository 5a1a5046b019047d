"""The Sanic application: settings, the master client, auth, error shape, routes (the REST API and
the web console's page, routes/console.py)."""

from __future__ import annotations

import itertools
import math
import time

from sanic import Sanic

from services.api import auth, errors, metrics
from services.api.log import get_logger
from services.api.master_client import MasterClient
from services.api.routes import build_files, console, meta, nodes, sandboxes, tags, templates, volumes
from services.api.settings import Settings

log = get_logger("app")
_names = itertools.count()


def create_app(settings: Settings, name: str | None = None) -> Sanic:
    app = Sanic(name or f"cube_api_{next(_names)}")
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.KEEP_ALIVE_TIMEOUT = 75  # the SDK keeps connections for up to 300 s
    # Sanic's own 60 s response timeout would cut a slow create with a body that is not E2B's
    # (and before the master's deadline): our deadlines (create_timeout_s, call_timeout_s) answer
    # in E2B's shape, so Sanic's must come after them.
    app.config.RESPONSE_TIMEOUT = math.ceil(max(settings.create_timeout_s, settings.call_timeout_s)) + 30
    app.ctx.settings = settings
    app.blueprint(sandboxes.bp)
    app.blueprint(templates.bp)
    app.blueprint(build_files.bp)
    app.blueprint(tags.bp)
    app.blueprint(meta.bp)
    app.blueprint(nodes.bp)
    app.blueprint(console.bp)
    app.blueprint(volumes.bp)
    app.error_handler.add(Exception, errors.handle_exception)

    @app.before_server_start
    async def connect_master(app):
        app.ctx.master = MasterClient(settings)

    @app.after_server_stop
    async def close_master(app):
        await app.ctx.master.close()

    @app.on_request
    async def _auth(request):
        request.ctx.t0 = time.monotonic()
        await auth.authenticate(request)

    @app.on_response
    async def _log(request, response):
        sid = (request.match_info or {}).get("raw_id")
        t0 = getattr(request.ctx, "t0", time.monotonic())
        metrics.observe(request, response, t0)
        extra = {"method": request.method, "path": request.path, "status": response.status,
                 "ms": round((time.monotonic() - t0) * 1000, 1)}
        if sid:
            extra["sandbox_id"] = sid.split("-", 1)[0]
        log.info("request", extra=extra)

    return app
