"""The typed operator client of the master's gRPC API (``cube.v1.Master``).

    from sdk.client import AsyncCubeClient, CubeClient

    async with AsyncCubeClient() as cube:              # the core: asyncio, grpclib
        async for sb in cube.list_sandboxes(metadata={"user": "alice"}):
            print(sb.sandbox_id, sb.phase.name)

    with CubeClient("10.0.0.5:50051") as cube:         # the same methods, blocking
        cube.create_team("acme")
        key, secret = cube.create_api_key("ci", team="acme")

It is built on the generated betterproto stub (``sdk.typed.cube.v1.MasterStub``, ``make protos``)
over a grpclib channel. Invariants:

- Results are the generated betterproto dataclasses; requests are built here from plain arguments
  (or, for a template build, a ``BuildTemplateRequest``).
- Every failure of a call raises ``CubeError`` whose ``code`` is a ``grpclib.const.Status`` (member
  names are gRPC's: ``NOT_FOUND``, ``UNAVAILABLE``...): the server's status as sent, UNAVAILABLE when
  the master cannot be reached or the connection drops, DEADLINE_EXCEEDED when the deadline ends.
- Every unary call has a deadline: ``timeout_s``, or at least ``SLOW_TIMEOUT_S`` for the calls that
  wait on a node (create, pause, connect, template delete). A build watch has none: it lasts as
  long as the build.
- Calls carry no caller: the master takes them as an operator's (admin, every team's records;
  services/master/caller.py). What an operator creates is public (templates) or the local team's
  (sandboxes).
- The address is the argument, else ``$CUBE_MASTER_ADDR``, else ``cube_common.defaults.MASTER_ADDR``:
  the port the master listens on by default, from the same constant.
- The operator's certificate (mutual TLS, cube_common/mtls.py) is the ``tls_dir`` argument, else
  ``$CUBE_TLS_DIR`` (either empty: plaintext), else this node's ``$CUBE_STATE_DIR/pki/operator`` when it
  exists and can be read (what ``make up`` issues); with none, the client speaks plaintext. With
  one, it presents that certificate and accepts only a server holding a master certificate.
- A grpclib ``Channel`` belongs to the event loop it was created in. ``AsyncCubeClient`` creates its
  channel on the first call, in the running loop, and refuses to be used from another loop.
  ``CubeClient`` owns a private loop running in its own thread and runs every call there, so it
  works from any thread, whether or not the caller has a loop of its own; ``close()`` (or leaving
  the ``with`` block) closes the channel, stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from cube_common import mtls
from cube_common.addresses import split_host_port
from cube_common.defaults import MASTER_ADDR, MASTER_PORT, STATE_DIR
from sdk.typed.cube import v1 as pb

__all__ = ["AsyncCubeClient", "CubeClient", "CubeError", "Status", "master_address", "operator_tls"]

DEFAULT_TIMEOUT_S = 30.0
# Creating, pausing, connecting (resuming) a sandbox and deleting a template wait for a node to
# restore or snapshot VMs, which can take minutes on a loaded node under TCG.
SLOW_TIMEOUT_S = 150.0

# The states an operator filters on; the master counts PAUSING and RESUMING as PAUSED. Lost: its
# node's registration is gone (unreachable until the node is back).
_STATES = {"running": pb.SandboxPhase.RUNNING, "paused": pb.SandboxPhase.PAUSED, "lost": pb.SandboxPhase.LOST}

T = TypeVar("T")
P = ParamSpec("P")


class CubeError(Exception):
    """A failed call: ``code`` is the gRPC status (``code.name`` as in gRPC), ``message`` its detail."""

    def __init__(self, code: Status, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def master_address(address: str | None = None) -> str:
    """The master to talk to: ``address``, else ``$CUBE_MASTER_ADDR``, else the default."""
    return address or os.environ.get("CUBE_MASTER_ADDR") or MASTER_ADDR


def operator_tls(tls_dir: str | os.PathLike[str] | None = None) -> mtls.TlsFiles | None:
    """The operator certificate to present; see the module docstring. An empty ``tls_dir`` or
    ``$CUBE_TLS_DIR`` means plaintext."""
    named = os.fspath(tls_dir) if tls_dir is not None else os.environ.get("CUBE_TLS_DIR")
    if named is not None:
        return mtls.files(Path(named), mtls.Role.OPERATOR) if named.strip() else None
    local = Path(os.environ.get("CUBE_STATE_DIR") or STATE_DIR) / "pki" / mtls.Role.OPERATOR.value
    try:
        return mtls.files(local, mtls.Role.OPERATOR)
    except mtls.TlsError:
        return None  # no local node, or not ours to read: plaintext


def _host_port(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (the default master port)."""
    try:
        return split_host_port(address, MASTER_PORT)
    except ValueError as e:
        raise ValueError(f"invalid master address {address!r}: {e}") from None


def _masters(address: str) -> list[tuple[str, int]]:
    """Every master an address names: one, or several comma-separated, also in gRPC's target form
    (``ipv4:10.0.0.1:50051,10.0.0.2:50051``) that the services take."""
    text = address.strip()
    for scheme in ("ipv4:", "ipv6:", "dns:"):
        text = text.removeprefix(scheme)
    out = [_host_port(a) for a in text.split(",") if a.strip()]
    if not out:
        raise ValueError(f"invalid master address {address!r}: no address")
    return out


@contextlib.contextmanager
def _as_cube_error(address: str, tls: bool) -> Iterator[None]:
    """Turn what grpclib and the socket layer raise into CubeError. The order matters:
    TimeoutError is an OSError."""
    try:
        yield
    except GRPCError as e:
        raise CubeError(e.status, e.message or "") from e
    except TimeoutError as e:  # asyncio's, from grpclib's deadline
        raise CubeError(Status.DEADLINE_EXCEEDED, f"no answer from the master at {address} in time") from e
    except (OSError, StreamTerminatedError) as e:
        why = str(e) or type(e).__name__
        if not tls:
            why += " (if the master uses mutual TLS, set CUBE_TLS_DIR to an operator certificate directory)"
        raise CubeError(Status.UNAVAILABLE, f"cannot reach the master at {address}: {why}") from e


class AsyncCubeClient:
    """The master's operator API for asyncio code; see the module docstring."""

    def __init__(self, address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 tls_dir: str | os.PathLike[str] | None = None):
        self.address = master_address(address)
        self.timeout_s = timeout_s
        self.tls = operator_tls(tls_dir)  # missing or unsafe files fail here, not on first use
        self._ssl = mtls.client_ssl_context(self.tls) if self.tls else None
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])
        self._masters = _masters(self.address)  # a bad address fails here, not on first use
        self._at = 0  # the master in use; a refused connection moves to the next
        self._channel: Channel | None = None
        self._master: pb.MasterStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncCubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._master = self._loop = None

    @property
    def _stub(self) -> pb.MasterStub:
        loop = asyncio.get_running_loop()
        if self._master is None:
            # Binds itself to the running loop. Under TLS it checks the master's name, whatever
            # address it dials.
            host, port = self._masters[self._at]
            self._channel = Channel(host, port, ssl=self._ssl, config=Configuration(
                ssl_target_name_override=mtls.server_name(mtls.Role.MASTER)) if self._ssl else None)
            self._master = pb.MasterStub(self._channel)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("an AsyncCubeClient is bound to the event loop of its first call; "
                               "use one client per loop (or CubeClient from threads)")
        return self._master

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: object, timeout_s: float | None = None) -> T:
        for tried in range(1, len(self._masters) + 1):
            try:
                with _as_cube_error(self.address, self.tls is not None):
                    return await rpc(request, timeout=timeout_s or self.timeout_s)
            except CubeError as e:
                # Only a refused connection moves on: the call never reached that master, so
                # asking the next one cannot run it twice.
                if tried == len(self._masters) or not isinstance(e.__cause__, ConnectionRefusedError):
                    raise
            self.close()
            self._at = (self._at + 1) % len(self._masters)
            rpc = getattr(self._stub, rpc.__name__)
        raise AssertionError("unreachable")

    def _slow(self) -> float:
        return max(self.timeout_s, SLOW_TIMEOUT_S)

    # ---- sandboxes ----

    async def list_sandboxes(self, metadata: dict[str, str] | None = None, states: tuple[str, ...] = (),
                             template: str = "", page_size: int = 100) -> AsyncGenerator[pb.Sandbox, None]:
        """Every matching sandbox, newest first, fetched page by page. ``states``: ``running``,
        ``paused`` and/or ``lost`` (none: all three); ``metadata``: every pair must match."""
        try:
            phases = [pb.SandboxPhase(_STATES[s]) for s in states]
        except KeyError as e:
            raise ValueError(f"unknown sandbox state {e.args[0]!r} (want one of {', '.join(_STATES)})") from None
        token = ""
        while True:
            page = await self._call(self._stub.list_sandbox_records, pb.ListSandboxRecordsRequest(
                metadata=metadata or {}, phases=phases, limit=page_size, page_token=token, template=template))
            for sb in page.sandboxes:
                yield sb
            token = page.next_page_token
            if not token:
                return

    async def get_sandbox(self, sandbox_id: str) -> pb.Sandbox:
        return await self._call(self._stub.get_sandbox, pb.GetSandboxRequest(sandbox_id=sandbox_id))

    async def create_sandbox(self, template: str, timeout_s: int = 0, metadata: dict[str, str] | None = None,
                             env_vars: dict[str, str] | None = None, auto_pause: bool = False) -> pb.Sandbox:
        return await self._call(self._stub.create_sandbox, pb.CreateSandboxRequest(
            template=template, timeout_s=timeout_s, metadata=metadata or {}, env_vars=env_vars or {},
            auto_pause=auto_pause, client_id="operator"), self._slow())

    async def kill_sandbox(self, sandbox_id: str) -> bool:
        resp = await self._call(self._stub.kill_sandbox_record, pb.KillSandboxRecordRequest(sandbox_id=sandbox_id))
        return resp.killed

    async def set_timeout(self, sandbox_id: str, timeout_s: int) -> pb.Sandbox:
        return await self._call(self._stub.set_sandbox_timeout,
                                pb.SetSandboxTimeoutRequest(sandbox_id=sandbox_id, timeout_s=timeout_s))

    async def pause_sandbox(self, sandbox_id: str) -> pb.Sandbox:
        return await self._call(self._stub.pause_sandbox_record, pb.PauseSandboxRecordRequest(sandbox_id=sandbox_id),
                                self._slow())

    async def connect_sandbox(self, sandbox_id: str, timeout_s: int = 0,
                              node_id: str = "") -> pb.ConnectSandboxResponse:
        """Resume the sandbox if it is paused (on ``node_id``, its state moved there, when named:
        operators only); the answer carries it and whether it was resumed."""
        return await self._call(self._stub.connect_sandbox, pb.ConnectSandboxRequest(
            sandbox_id=sandbox_id, timeout_s=timeout_s, node_id=node_id), self._slow())

    async def sandbox_logs(self, sandbox_id: str, limit: int = 1000) -> list[pb.LogLine]:
        resp = await self._call(self._stub.get_sandbox_logs, pb.SandboxLogsRequest(sandbox_id=sandbox_id, limit=limit))
        return resp.lines

    # ---- templates ----

    async def list_templates(self) -> list[pb.Template]:
        return (await self._call(self._stub.list_template_records, pb.ListTemplateRecordsRequest())).templates

    async def get_template(self, template: str) -> pb.Template:
        """By id or alias."""
        return await self._call(self._stub.get_template, pb.GetTemplateRequest(template=template))

    async def delete_template(self, template: str, force: bool = False) -> bool:
        """``force``: kill the sandboxes that use it first."""
        resp = await self._call(self._stub.delete_template_record,
                                pb.DeleteTemplateRecordRequest(template=template, force=force), self._slow())
        return resp.deleted

    async def set_template_alias(self, alias: str, template_id: str) -> pb.TemplateAlias:
        return await self._call(self._stub.set_template_alias, pb.TemplateAlias(alias=alias, template_id=template_id))

    # ---- template tags (E2B's `name:tag`) ----

    async def assign_template_tags(self, target: str, tags: list[str]) -> list[pb.TemplateTag]:
        """Point ``tags`` at the build ``target`` names: `name` (or `name:default`) is the
        template's current build, `name:tag` the build that tag names."""
        req = pb.AssignTemplateTagsRequest(target=target, tags=tags)
        return (await self._call(self._stub.assign_template_tags, req)).tags

    async def remove_template_tags(self, name: str, tags: list[str]) -> list[str]:
        """Remove tags from a template (``default`` stays); returns those it had."""
        req = pb.RemoveTemplateTagsRequest(name=name, tags=tags)
        return (await self._call(self._stub.remove_template_tags, req)).removed

    async def list_template_tags(self, template: str) -> list[pb.TemplateTag]:
        """A template's tags: ``default`` (its current build) first, then by name; ``current``
        is false for a tag whose build a rebuild replaced."""
        req = pb.ListTemplateTagsRequest(template=template)
        return (await self._call(self._stub.list_template_tags, req)).tags

    # ---- template builds ----

    async def create_template_build(self, build: pb.BuildTemplateRequest, aliases: list[str] | None = None,
                                    node_id: str = "") -> pb.TemplateBuild:
        """Start building a template (``build.template_id`` empty: a new id); returns the job."""
        return await self._call(self._stub.create_template_build, pb.CreateTemplateBuildRequest(
            build=build, aliases=aliases or [], node_id=node_id))

    async def get_template_build(self, job_id: str) -> pb.TemplateBuild:
        return await self._call(self._stub.get_template_build, pb.GetTemplateBuildRequest(job_id=job_id))

    async def list_template_builds(self, template_id: str = "") -> list[pb.TemplateBuild]:
        resp = await self._call(self._stub.list_template_builds, pb.ListTemplateBuildsRequest(template_id=template_id))
        return resp.builds

    async def watch_template_build(self, job_id: str) -> AsyncGenerator[pb.TemplateBuildEvent, None]:
        """The build's events, past then live, until READY or FAILED (no deadline)."""
        with _as_cube_error(self.address, self.tls is not None):
            async for ev in self._stub.watch_template_build(pb.WatchTemplateBuildRequest(job_id=job_id)):
                yield ev

    # ---- nodes ----

    async def list_nodes(self) -> list[pb.Node]:
        """The registered nodes and the lost ones the master still knows, by id."""
        return (await self._call(self._stub.list_nodes, pb.ListNodesRequest())).nodes

    async def drain_node(self, node_id: str, reason: str = "") -> pb.Node:
        """No new sandboxes on the node; what runs there stays, and its paused ones resume on other
        nodes (their state moved there)."""
        return await self._call(self._stub.drain_node, pb.DrainNodeRequest(node_id=node_id, reason=reason))

    async def undrain_node(self, node_id: str) -> pb.Node:
        return await self._call(self._stub.undrain_node, pb.UndrainNodeRequest(node_id=node_id))

    async def remove_node(self, node_id: str, force: bool = False) -> pb.RemoveNodeResponse:
        """Forget the node. FAILED_PRECONDITION while sandboxes are on it, unless ``force`` (they
        become lost)."""
        return await self._call(self._stub.remove_node, pb.RemoveNodeRequest(node_id=node_id, force=force))

    # ---- teams ----

    async def create_team(self, team_id: str) -> pb.Team:
        return await self._call(self._stub.create_team, pb.CreateTeamRequest(team_id=team_id))

    async def list_teams(self) -> list[pb.Team]:
        """Every team with its quota and current usage."""
        return (await self._call(self._stub.list_teams, pb.ListTeamsRequest())).teams

    async def set_team_quota(self, team_id: str, max_running: int | None = None, max_vcpus: int | None = None,
                             max_memory_mb: int | None = None, max_paused: int | None = None) -> pb.Team:
        """Change the limits given (None: keep it; 0: unlimited); returns the team as it is now."""
        req = pb.SetTeamQuotaRequest(team_id=team_id, max_running=max_running, max_vcpus=max_vcpus,
                                     max_memory_mb=max_memory_mb, max_paused=max_paused)
        return await self._call(self._stub.set_team_quota, req)

    # ---- API keys ----

    async def create_api_key(self, name: str = "", team: str = "", admin: bool = False) -> tuple[pb.ApiKey, str]:
        """The key's record and the key itself, which the master does not keep (only its hash).
        ``team``: an existing team (empty: the local team); ``admin``: the key may also manage
        public templates and sees every team's records."""
        role = pb.ApiKeyRole(pb.ApiKeyRole.ADMIN if admin else pb.ApiKeyRole.USER)
        resp = await self._call(self._stub.create_api_key, pb.CreateApiKeyRequest(name=name, team_id=team, role=role))
        return resp.api_key, resp.key

    async def list_api_keys(self) -> list[pb.ApiKey]:
        return (await self._call(self._stub.list_api_keys, pb.ListApiKeysRequest())).api_keys

    async def revoke_api_key(self, key_id: str) -> bool:
        return (await self._call(self._stub.revoke_api_key, pb.RevokeApiKeyRequest(key_id=key_id))).revoked

    # ---- cluster ----

    async def cluster_status(self) -> pb.ClusterStatus:
        """The leader and the master that answered."""
        return await self._call(self._stub.get_cluster_status, pb.GetClusterStatusRequest())


# ---- the blocking client ------------------------------------------------------------------------

_END = object()


async def _next(items: AsyncGenerator[T, None]) -> T | object:
    # The end of the iterator comes back as a sentinel: a StopAsyncIteration is better not sent
    # through a Future.
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(items: AsyncGenerator[T, None]) -> None:
    await items.aclose()


def _blocking(method: Callable[Concatenate[AsyncCubeClient, P], Coroutine[Any, Any, T]]
              ) -> Callable[Concatenate[CubeClient, P], T]:
    """``AsyncCubeClient.method`` as a blocking method of CubeClient (same arguments, same result)."""
    @functools.wraps(method)
    def call(self: CubeClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._aio, *args, **kwargs))
    return call


def _blocking_iter(method: Callable[Concatenate[AsyncCubeClient, P], AsyncGenerator[T, None]]
                   ) -> Callable[Concatenate[CubeClient, P], Generator[T, None, None]]:
    """An async-generator method as a blocking generator: each item is fetched in the client's loop."""
    @functools.wraps(method)
    def call(self: CubeClient, *args: P.args, **kwargs: P.kwargs) -> Generator[T, None, None]:
        items = method(self._aio, *args, **kwargs)
        try:
            while (item := self._run(_next(items))) is not _END:
                yield cast(T, item)
        finally:
            # Stopped early (break, an exception): end the call (a watch's stream) in the loop too.
            if self._open.alive:
                self._run(_aclose(items))
    return call


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, aio: AsyncCubeClient) -> None:
    """Close the channel, then stop the loop and its thread: on close(), or when a client nobody
    closed is collected or the interpreter exits."""
    if threading.current_thread() is thread:
        loop.stop()  # dropped by code running in the loop itself: nothing can be waited for here
        return
    if thread.is_alive():
        asyncio.run_coroutine_threadsafe(_end_calls(aio), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    loop.close()


async def _end_calls(aio: AsyncCubeClient) -> None:
    # Calls still running (in other threads, or an abandoned generator's) end as cancelled.
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    aio.close()
    await asyncio.get_running_loop().shutdown_asyncgens()
    await asyncio.sleep(0)  # the transport finishes closing before the loop stops


class CubeClient:
    """The blocking twin of AsyncCubeClient: the same methods with the same arguments and results
    (generators instead of async generators). Safe to share between threads."""

    def __init__(self, address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 tls_dir: str | os.PathLike[str] | None = None):
        self._aio = AsyncCubeClient(address, timeout_s, tls_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cube-client", daemon=True)
        self._thread.start()
        # Runs once: on close(), or when an unclosed client is collected or the interpreter exits.
        self._open = weakref.finalize(self, _shut_down, self._loop, self._thread, self._aio)

    @property
    def address(self) -> str:
        return self._aio.address

    @property
    def timeout_s(self) -> float:
        return self._aio.timeout_s

    def __enter__(self) -> CubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, stop the loop and its thread. Idempotent."""
        self._open()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._open.alive:
            coro.close()  # never to be awaited: say so quietly, not with a RuntimeWarning
            raise RuntimeError("the CubeClient is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a CubeClient cannot be called from its own loop; use AsyncCubeClient there")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt while waiting: the call stops as well
            raise

    list_sandboxes = _blocking_iter(AsyncCubeClient.list_sandboxes)
    get_sandbox = _blocking(AsyncCubeClient.get_sandbox)
    create_sandbox = _blocking(AsyncCubeClient.create_sandbox)
    kill_sandbox = _blocking(AsyncCubeClient.kill_sandbox)
    set_timeout = _blocking(AsyncCubeClient.set_timeout)
    pause_sandbox = _blocking(AsyncCubeClient.pause_sandbox)
    connect_sandbox = _blocking(AsyncCubeClient.connect_sandbox)
    sandbox_logs = _blocking(AsyncCubeClient.sandbox_logs)
    list_templates = _blocking(AsyncCubeClient.list_templates)
    get_template = _blocking(AsyncCubeClient.get_template)
    delete_template = _blocking(AsyncCubeClient.delete_template)
    set_template_alias = _blocking(AsyncCubeClient.set_template_alias)
    assign_template_tags = _blocking(AsyncCubeClient.assign_template_tags)
    remove_template_tags = _blocking(AsyncCubeClient.remove_template_tags)
    list_template_tags = _blocking(AsyncCubeClient.list_template_tags)
    create_template_build = _blocking(AsyncCubeClient.create_template_build)
    get_template_build = _blocking(AsyncCubeClient.get_template_build)
    list_template_builds = _blocking(AsyncCubeClient.list_template_builds)
    watch_template_build = _blocking_iter(AsyncCubeClient.watch_template_build)
    list_nodes = _blocking(AsyncCubeClient.list_nodes)
    drain_node = _blocking(AsyncCubeClient.drain_node)
    undrain_node = _blocking(AsyncCubeClient.undrain_node)
    remove_node = _blocking(AsyncCubeClient.remove_node)
    create_team = _blocking(AsyncCubeClient.create_team)
    list_teams = _blocking(AsyncCubeClient.list_teams)
    set_team_quota = _blocking(AsyncCubeClient.set_team_quota)
    create_api_key = _blocking(AsyncCubeClient.create_api_key)
    list_api_keys = _blocking(AsyncCubeClient.list_api_keys)
    revoke_api_key = _blocking(AsyncCubeClient.revoke_api_key)
    cluster_status = _blocking(AsyncCubeClient.cluster_status)
