"""gRPC service ``cube.v1.Master``: translates protos to the modules' calls and their errors to
status codes. No logic of its own."""

from __future__ import annotations

import functools

import grpc

from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import master_pb2 as P, master_pb2_grpc
from services.master import errors
from services.master.apikeys import ApiKeys
from services.master.builds import Builds
from services.master.leader import Election
from services.master.log import get_logger
from services.master.sandboxes import Sandboxes
from services.master.store import Conflict
from services.master.templates import Templates

log = get_logger("server")

_CODES = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (EtcdUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Conflict, grpc.StatusCode.ABORTED),
)


async def _abort(context: grpc.aio.ServicerContext, e: Exception, rpc: str) -> None:
    for cls, code in _CODES:
        if isinstance(e, cls):
            msg = str(e) if not isinstance(e, EtcdUnavailable) else f"cluster state unavailable: {e}"
            await context.abort(code, msg)
    log.exception("internal error", extra={"rpc": rpc})
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def _rpc(fn):
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await fn(self, request, context)
        except Exception as e:
            await _abort(context, e, fn.__name__)
    return wrapper


def _stream(fn):
    """_rpc for server-streaming methods (async generators)."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as e:
            await _abort(context, e, fn.__name__)
    return wrapper


class MasterService(master_pb2_grpc.MasterServicer):
    def __init__(self, sandboxes: Sandboxes, templates: Templates, apikeys: ApiKeys, election: Election,
                 builds: Builds):
        self.sb = sandboxes
        self.tpl = templates
        self.builds = builds
        self.keys = apikeys
        self.election = election
        self.store = sandboxes.store

    # ---- sandboxes ----
    @_rpc
    async def CreateSandbox(self, request, context):
        return await self.sb.create(request)

    @_rpc
    async def GetSandbox(self, request, context):
        return await self.sb.get(request.sandbox_id)

    @_rpc
    async def ListSandboxRecords(self, request, context):
        return await self.sb.list(request)

    @_rpc
    async def KillSandboxRecord(self, request, context):
        return P.KillSandboxRecordResponse(killed=await self.sb.kill(request.sandbox_id))

    @_rpc
    async def SetSandboxTimeout(self, request, context):
        return await self.sb.set_timeout(request.sandbox_id, request.timeout_s, request.extend_only)

    @_rpc
    async def PauseSandboxRecord(self, request, context):
        return await self.sb.pause(request.sandbox_id)

    @_rpc
    async def ConnectSandbox(self, request, context):
        rec, resumed = await self.sb.connect(request.sandbox_id, request.timeout_s)
        return P.ConnectSandboxResponse(sandbox=rec, resumed=resumed)

    @_rpc
    async def GetSandboxMetrics(self, request, context):
        return await self.sb.metrics(request)

    @_rpc
    async def GetSandboxLogs(self, request, context):
        return await self.sb.logs(request)

    @_rpc
    async def UpdateSandboxNetwork(self, request, context):
        return await self.sb.update_network(request.sandbox_id, request.network)

    # ---- templates ----
    @_rpc
    async def ListTemplateRecords(self, request, context):
        return P.ListTemplateRecordsResponse(templates=await self.tpl.list())

    @_rpc
    async def GetTemplate(self, request, context):
        return await self.tpl.get(request.template)

    @_rpc
    async def DeleteTemplateRecord(self, request, context):
        tpl, _ = await self.tpl.resolve(request.template)
        in_use = await self.sb.users_of(tpl.template_id)
        kill = self.sb.kill if request.force else None
        return P.DeleteTemplateRecordResponse(deleted=await self.tpl.delete(tpl.template_id, in_use, kill))

    @_rpc
    async def PutTemplate(self, request, context):
        return await self.tpl.put(request.template)

    @_rpc
    async def SetTemplateAlias(self, request, context):
        return await self.tpl.set_alias(request)

    @_rpc
    async def ResolveTemplateAlias(self, request, context):
        return await self.tpl.resolve_alias(request.alias)

    # ---- template builds ----
    @_rpc
    async def CreateTemplateBuild(self, request, context):
        return await self.builds.create(request)

    @_rpc
    async def GetTemplateBuild(self, request, context):
        return await self.builds.get(request.job_id)

    @_rpc
    async def ListTemplateBuilds(self, request, context):
        return P.ListTemplateBuildsResponse(builds=await self.builds.list(request.template_id))

    @_stream
    async def WatchTemplateBuild(self, request, context):
        async for ev in self.builds.watch(request.job_id):
            yield ev

    # ---- nodes ----
    @_rpc
    async def ListNodes(self, request, context):
        records = [v.value for v in await self.store.list_sandboxes()]
        out = []
        for n in sorted(await self.store.list_nodes(), key=lambda n: n.node_id):
            mine = [r for r in records if r.node_id == n.node_id]
            out.append(P.Node(status=n,
                              sandboxes_running=sum(r.phase == P.SANDBOX_PHASE_RUNNING for r in mine),
                              sandboxes_paused=sum(r.phase == P.SANDBOX_PHASE_PAUSED for r in mine)))
        return P.ListNodesResponse(nodes=out)

    # ---- API keys ----
    @_rpc
    async def CreateApiKey(self, request, context):
        rec, key = await self.keys.create(request.name)
        return P.CreateApiKeyResponse(api_key=rec, key=key)

    @_rpc
    async def ListApiKeys(self, request, context):
        return P.ListApiKeysResponse(api_keys=await self.keys.list())

    @_rpc
    async def RevokeApiKey(self, request, context):
        return P.RevokeApiKeyResponse(revoked=await self.keys.revoke(request.key_id))

    @_rpc
    async def ValidateApiKey(self, request, context):
        return await self.keys.validate(request.key)

    # ---- cluster ----
    @_rpc
    async def GetClusterStatus(self, request, context):
        leader = await self.election.current()
        return P.ClusterStatus(leader=leader, self=self.election.identity, is_leader=self.election.is_leader)
