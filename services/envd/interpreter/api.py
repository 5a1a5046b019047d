"""HTTP routes of the code-interpreter port: /execute (NDJSON stream), /contexts, /health."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from ..identity import Identity
from . import messages as out
from .access import require_token
from .contexts import ContextNotFound, ContextRegistry
from .execute import Execution, prime_contexts
from .kernels import KernelStartError, Language, LanguageUnavailable, UnsupportedLanguage

log = logging.getLogger("envd.interpreter")

# The reference server pings idle /execute streams every 5 s; proxies' idle timeouts rely on it.
KEEPALIVE_S = 5.0
DISCONNECT_POLL_S = 0.5


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)


class InterpreterApi:
    def __init__(self, identity: Identity, registry: ContextRegistry) -> None:
        self.identity = identity
        self.registry = registry

    def install(self, app: web.Application) -> None:
        """The routes, behind the port's one access check (access.py): no route is served
        without it."""
        app.middlewares.append(require_token(self.identity))
        app.router.add_get("/health", self.health)
        app.router.add_post("/execute", self.execute)
        app.router.add_get("/contexts", self.list_contexts)
        app.router.add_post("/contexts", self.create_context)
        app.router.add_post("/contexts/{id}/restart", self.restart_context)
        app.router.add_delete("/contexts/{id}", self.delete_context)
        app.router.add_post("/warmup", self.warmup)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response("OK")

    async def warmup(self, request: web.Request) -> web.Response:
        """Cube's own (not E2B's): run a throwaway cell in each default kernel, no history, output
        dropped, and answer when done. The host's warm pool calls it before pooling a clone so that
        a sandbox's first cell finds its code paths translated (see execute.py, priming)."""
        await prime_contexts(self.registry, warm=True)
        return web.Response(status=204)

    async def _json_body(self, request: web.Request) -> dict:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"invalid JSON body: {e}") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    async def list_contexts(self, request: web.Request) -> web.Response:
        return web.json_response([c.to_json() for c in self.registry.list()])

    async def create_context(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            language = Language.parse(body.get("language"))
        except UnsupportedLanguage as e:
            return _text(400, f"unsupported language '{e}'")
        cwd = body.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            return _text(400, "cwd must be a string")
        try:
            ctx = await self.registry.create(language, cwd)
        except LanguageUnavailable as e:
            return _text(400, str(e))
        except KernelStartError as e:
            return _text(500, f"failed to start the kernel: {e}")
        return web.json_response(ctx.to_json())

    async def restart_context(self, request: web.Request) -> web.Response:
        try:
            ctx = self.registry.get(request.match_info["id"])
        except ContextNotFound:
            return _text(404, f"Context {request.match_info['id']} not found")
        try:
            async with ctx.lock:
                await self.registry.restart(ctx)
        except KernelStartError as e:
            return _text(500, f"failed to restart the kernel: {e}")
        return web.json_response(None)

    async def delete_context(self, request: web.Request) -> web.Response:
        try:
            await self.registry.remove(request.match_info["id"])
        except ContextNotFound:
            return _text(404, f"Context {request.match_info['id']} not found")
        return web.json_response(None)

    async def execute(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        code = body.get("code")
        if not isinstance(code, str):
            return _text(400, "'code' must be a string")
        env_vars = body.get("env_vars")
        if env_vars is not None and (not isinstance(env_vars, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())):
            return _text(400, "'env_vars' must map strings to strings")
        context_id = body.get("context_id")
        language = body.get("language")
        if context_id and language:
            return _text(400, "give either context_id or language, not both")
        try:
            if context_id:
                ctx = self.registry.get(context_id)
            else:
                ctx = await self.registry.default(Language.parse(language))
        except ContextNotFound:
            return _text(404, f"Context {context_id} not found")
        except UnsupportedLanguage as e:
            return _text(400, f"unsupported language '{e}'")
        except LanguageUnavailable as e:
            return _text(400, str(e))

        execution = Execution(self.registry, ctx, code, env_vars)
        execution.start()
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/x-ndjson"
        resp.headers["X-Accel-Buffering"] = "no"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        try:
            while True:
                try:
                    line = await asyncio.wait_for(execution.lines.get(), DISCONNECT_POLL_S)
                except TimeoutError as err:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        raise ConnectionResetError("client went away") from err
                    if loop.time() - last_write >= KEEPALIVE_S:
                        await resp.write(out.keepalive().encode())
                        last_write = loop.time()
                    continue
                if line is None:
                    break
                await resp.write(line.encode())
                last_write = loop.time()
        except (ConnectionError, asyncio.CancelledError):
            execution.interrupt()
            raise
        try:
            await resp.write_eof()
        except ConnectionError:
            pass  # the client read end_of_execution and went: nothing is lost
        return resp
