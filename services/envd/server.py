"""Wires the agent together: sockets, root entry, the two aiohttp apps, startup and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from cube_common.envd import ENVD_VERSION

from . import preload, rootfs, users
from .connect import Code, ConnectError, ConnectRouter, error_response
from .files_http import FilesHttp, json_error
from .filesystem_service import FilesystemService
from .identity import Identity
from .interpreter import identity_hook
from .interpreter.api import InterpreterApi
from .interpreter.contexts import ContextRegistry
from .interpreter.execute import prime_contexts
from .interpreter.kernels import BOOT_LANGUAGES, KernelLaunch
from .interpreter.snippets import valid_env
from .process_service import ProcessService
from .processes import ProcessTable
from .settings import Settings

log = logging.getLogger("envd.server")

# How long in-flight requests (open watch streams, say) get to finish at shutdown.
SHUTDOWN_GRACE_S = 2.0
# Paths of the envd port that authenticate themselves (header or URL signature) or need none.
_SELF_AUTHENTICATED = {"/health", "/files"}


def bind(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
    socks = []
    errors = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(1024)
            s.setblocking(False)
            socks.append(s)
        except OSError as e:
            s.close()
            errors.append(f"{host}:{port}: {e}")
    if not socks:
        raise OSError(f"cannot listen on port {port}: {'; '.join(errors)}")
    for err in errors:
        log.warning("listen address skipped", extra={"error": err})
    return socks


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity = Identity(default_user=settings.default_user)
        self.processes = ProcessTable()
        self.filesystem = FilesystemService(self.identity)
        self.router = ConnectRouter()
        ProcessService(self.identity, self.processes).register(self.router)
        self.filesystem.register(self.router)
        self.files = FilesHttp(self.identity)
        self.registry: ContextRegistry | None = None
        self._runners: list[web.AppRunner] = []
        self._background: set[asyncio.Task] = set()

    # -- envd app -----------------------------------------------------------------------------

    def envd_app(self) -> web.Application:
        @web.middleware
        async def guard(request: web.Request, handler):
            path = request.path
            if path not in _SELF_AUTHENTICATED and not self.identity.token_ok(
                    request.headers.get("X-Access-Token")):
                if self.router.is_connect_path(path):
                    return error_response(ConnectError(Code.UNAUTHENTICATED, "missing or invalid access token"))
                return json_error(401, "missing or invalid access token")
            try:
                return await handler(request)
            except web.HTTPNotFound:
                if path.count("/") == 2 and "." in path.split("/")[1]:
                    return error_response(ConnectError(Code.UNIMPLEMENTED, f"unknown procedure {path}"))
                return json_error(404, f"no route for {request.method} {path}")
            except web.HTTPMethodNotAllowed:
                return json_error(405, f"method {request.method} not allowed on {path}")

        app = web.Application(middlewares=[guard], client_max_size=64 * 1024 * 1024)
        self.router.install(app)
        self.files.install(app)
        return app

    def _write_kernel_identity(self) -> None:
        ident = self.identity
        identity_hook.write(self.settings.runtime_dir, valid_env(ident.env_vars), ident.generation,
                            ident.reseed_generation)

    def _prime_after_init(self) -> None:
        if self.registry is None:
            return
        task = asyncio.ensure_future(prime_contexts(self.registry, warm=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle ----------------------------------------------------------------------------

    def _prepare_root(self) -> KernelLaunch:
        s = self.settings
        users.ensure_user(s.default_user)
        os.makedirs(s.runtime_dir, mode=0o755, exist_ok=True)
        os.makedirs(os.path.join(s.runtime_dir, "kernels"), mode=0o755, exist_ok=True)
        return KernelLaunch(kernel_python=s.kernel_python, runtime_dir=s.runtime_dir, deno=s.deno, r=s.r_binary,
                            java=s.java, java_kernel_jar=s.java_kernel_jar)

    async def serve(self, envd_socks: list[socket.socket], interp_socks: list[socket.socket]) -> None:
        launch = self._prepare_root()
        runner = web.AppRunner(self.envd_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        self._runners.append(runner)
        for s in envd_socks:
            await web.SockSite(runner, s).start()
        if self.settings.interpreter:
            self.registry = ContextRegistry(self.identity, launch)
            # In this order: kernels' hooks read the file; the primer may run cells at once.
            self.identity.listeners.append(self._write_kernel_identity)
            self.identity.listeners.append(self._prime_after_init)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            InterpreterApi(self.identity, self.registry).install(app)
            irunner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=SHUTDOWN_GRACE_S)
            await irunner.setup()
            self._runners.append(irunner)
            if self.settings.default_contexts:
                # E2B's two (where the root can run them): a template snapshot is taken once they
                # answer, so that no clone pays their start (guest_agent.wait_default_kernels,
                # which starts the other languages' for the default template). Before the port
                # opens, so that its first GET /contexts lists them.
                self.registry.start_defaults([lang for lang in self.registry.available_languages()
                                              if lang in BOOT_LANGUAGES])
            for s in interp_socks:
                await web.SockSite(irunner, s).start()
        log.info("envd serving", extra={
            "version": ENVD_VERSION, "envd_port": self.settings.envd_port,
            "interpreter_port": self.settings.interpreter_port if self.settings.interpreter else None,
            "root": self.settings.root, "pid": os.getpid(),
        })
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("envd stopping")
        # End what open streams are waiting on first, so the servers can close promptly.
        await self.processes.shutdown()
        self.filesystem.close()
        if self.registry is not None:
            await self.registry.shutdown()
        for r in self._runners:
            await r.cleanup()
        log.info("envd stopped")


def run(settings: Settings) -> None:
    preload.load_everything()
    envd_socks = bind(settings.hosts, settings.envd_port)
    interp_socks = bind(settings.hosts, settings.interpreter_port) if settings.interpreter else []
    rootfs.enter_root(settings.root, tmpfs_tmp=settings.tmpfs_tmp)
    agent = Agent(settings)
    asyncio.run(agent.serve(envd_socks, interp_socks))
