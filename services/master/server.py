"""gRPC service ``cube.v1.Master``: translates protos to the modules' calls and their errors to
status codes. No logic of its own, except which calls are admin-only.

Every method gets the call's caller (caller.py resolves it from the peer's certificate and the
metadata, once, in ``_rpc``) instead of the servicer context, and hands it to the module it calls.
"""

from __future__ import annotations

import asyncio
import functools

import grpc

from cube_common.etcd import EtcdUnavailable
from cube_common.teams import OPERATOR
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P, master_pb2_grpc
from services.master import errors
from services.master.apikeys import ApiKeys
from services.master.builds import Builds
from services.master.caller import Policy, require_admin
from services.master.leader import Election
from services.master.log import get_logger
from services.master.node_admin import NodeAdministration
from services.master.quotas import Quotas
from services.master.sandboxes import Sandboxes
from services.master.snapshots import Snapshots
from services.master.store import Conflict
from services.master.tags import Tags
from services.master.teams import Teams
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
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (EtcdUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Conflict, grpc.StatusCode.ABORTED),
)


def status_of(e: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status and message a domain error answers with; None for an unexpected error."""
    if isinstance(e, errors.NodeAnswered):
        return e.code, str(e)
    for cls, code in _CODES:
        if isinstance(e, cls):
            return code, str(e) if not isinstance(e, EtcdUnavailable) else f"cluster state unavailable: {e}"
    return None


async def _abort(context: grpc.aio.ServicerContext, e: Exception, rpc: str) -> None:
    if (status := status_of(e)) is not None:
        await context.abort(*status)
    log.exception("internal error", extra={"rpc": rpc})
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def _rpc(fn):
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await fn(self, request, self.callers.resolve(context, fn.__name__))
        except Exception as e:
            await _abort(context, e, fn.__name__)
    return wrapper


def _stream(fn):
    """_rpc for server-streaming methods (async generators)."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in fn(self, request, self.callers.resolve(context, fn.__name__)):
                yield item
        except Exception as e:
            await _abort(context, e, fn.__name__)
    return wrapper


class MasterService(master_pb2_grpc.MasterServicer):
    def __init__(self, sandboxes: Sandboxes, templates: Templates, apikeys: ApiKeys, election: Election,
                 builds: Builds, teams: Teams, quotas: Quotas, callers: Policy,
                 node_admin: NodeAdministration | None = None, snapshots: Snapshots | None = None,
                 tags: Tags | None = None):
        self.callers = callers
        self.sb = sandboxes
        self.tpl = templates
        self.builds = builds
        self.keys = apikeys
        self.teams = teams
        self.quotas = quotas
        self.election = election
        self.store = sandboxes.store
        self.node_admin = node_admin or NodeAdministration(self.store)
        self.snapshots = snapshots or Snapshots(sandboxes, templates)
        self.tags = tags or Tags(self.store, templates)

    # ---- sandboxes ----
    @_rpc
    async def CreateSandbox(self, request, caller):
        return await self.sb.create(request, caller)

    @_rpc
    async def GetSandbox(self, request, caller):
        return await self.sb.get(request.sandbox_id, caller)

    @_rpc
    async def ListSandboxRecords(self, request, caller):
        return await self.sb.list(request, caller)

    @_rpc
    async def KillSandboxRecord(self, request, caller):
        return P.KillSandboxRecordResponse(killed=await self.sb.kill(request.sandbox_id, caller))

    @_rpc
    async def SetSandboxTimeout(self, request, caller):
        return await self.sb.set_timeout(request.sandbox_id, caller, request.timeout_s, request.extend_only)

    @_rpc
    async def PauseSandboxRecord(self, request, caller):
        return await self.sb.pause(request.sandbox_id, caller, filesystem_only=request.filesystem_only,
                                   require_healthy_guest=request.require_healthy_guest)

    @_rpc
    async def SnapshotSandbox(self, request, caller):
        return await self.snapshots.create(request.sandbox_id, caller, request.name,
                                           filesystem_only=request.filesystem_only)

    @_rpc
    async def ForkSandbox(self, request, caller):
        results = []
        for r in await self.snapshots.fork(request.sandbox_id, caller, request.count, request.timeout_s):
            if isinstance(r, P.Sandbox):
                results.append(P.ForkResult(sandbox=r))
                continue
            code, message = status_of(r) or (grpc.StatusCode.INTERNAL, f"internal error: {type(r).__name__}")
            results.append(P.ForkResult(error_code=code.name, error_message=message))
        return P.ForkSandboxResponse(results=results)

    @_rpc
    async def ConnectSandbox(self, request, caller):
        rec, resumed = await self.sb.connect(request.sandbox_id, caller, request.timeout_s, request.node_id,
                                             reboot=request.reboot)
        return P.ConnectSandboxResponse(sandbox=rec, resumed=resumed)

    @_rpc
    async def GetSandboxMetrics(self, request, caller):
        return await self.sb.metrics(request, caller)

    @_rpc
    async def GetSandboxLogs(self, request, caller):
        return await self.sb.logs(request, caller)

    @_rpc
    async def UpdateSandboxNetwork(self, request, caller):
        return await self.sb.update_network(request.sandbox_id, caller, request.network)

    # ---- templates ----
    @_rpc
    async def ListTemplateRecords(self, request, caller):
        return P.ListTemplateRecordsResponse(templates=await self.tpl.list(caller))

    @_rpc
    async def GetTemplate(self, request, caller):
        return await self.tpl.get(request.template, caller)

    @_rpc
    async def DeleteTemplateRecord(self, request, caller):
        tpl = await self.tpl.managed(request.template, caller)
        in_use = await self.sb.users_of(tpl.template_id)

        async def kill(sid: str) -> bool:
            # Whoever may delete the template may end what runs from it, whichever team's it is.
            return await self.sb.kill(sid, OPERATOR, reason="template deleted")
        deleted = await self.tpl.delete(tpl, in_use, kill if request.force else None)
        return P.DeleteTemplateRecordResponse(deleted=deleted)

    @_rpc
    async def PutTemplate(self, request, caller):
        require_admin(caller, "registering a template")
        return await self.tpl.put(request.template, caller)

    @_rpc
    async def SetTemplateAlias(self, request, caller):
        return await self.tpl.set_alias(request, caller)

    @_rpc
    async def ResolveTemplateAlias(self, request, caller):
        return await self.tpl.resolve_alias(request.alias, caller)

    # ---- template tags ----
    @_rpc
    async def AssignTemplateTags(self, request, caller):
        return P.AssignTemplateTagsResponse(tags=await self.tags.assign(request.target, list(request.tags), caller))

    @_rpc
    async def RemoveTemplateTags(self, request, caller):
        return P.RemoveTemplateTagsResponse(removed=await self.tags.remove(request.name, list(request.tags), caller))

    @_rpc
    async def ListTemplateTags(self, request, caller):
        tpl, tags = await self.tags.list(request.template, caller)
        return P.ListTemplateTagsResponse(template_id=tpl.template_id, tags=tags)

    # ---- template builds ----
    @_rpc
    async def CreateTemplateBuild(self, request, caller):
        return await self.builds.create(request, caller)

    @_rpc
    async def StartTemplateBuild(self, request, caller):
        return await self.builds.start(request, caller)

    @_rpc
    async def GetTemplateBuild(self, request, caller):
        return await self.builds.get(request.job_id, caller)

    @_rpc
    async def ListTemplateBuilds(self, request, caller):
        return P.ListTemplateBuildsResponse(builds=await self.builds.list(caller, request.template_id))

    @_stream
    async def WatchTemplateBuild(self, request, caller):
        async for ev in self.builds.watch(request.job_id, caller):
            yield ev

    # ---- nodes ----
    @_rpc
    async def ListNodes(self, request, caller):
        require_admin(caller, "listing nodes")
        return P.ListNodesResponse(nodes=await self.node_admin.views())

    @_rpc
    async def DrainNode(self, request, caller):
        require_admin(caller, "draining a node")
        return await self.node_admin.drain(request.node_id, request.reason)

    @_rpc
    async def UndrainNode(self, request, caller):
        require_admin(caller, "undraining a node")
        return await self.node_admin.undrain(request.node_id)

    @_rpc
    async def RemoveNode(self, request, caller):
        require_admin(caller, "removing a node")
        return await self.node_admin.remove(request.node_id, request.force)

    # ---- teams ----
    @_rpc
    async def CreateTeam(self, request, caller):
        require_admin(caller, "creating a team")
        return await self.teams.create(request.team_id)

    @_rpc
    async def ListTeams(self, request, caller):
        require_admin(caller, "listing teams")
        return P.ListTeamsResponse(teams=await self.quotas.with_usage(await self.teams.list()))

    @_rpc
    async def SetTeamQuota(self, request, caller):
        require_admin(caller, "setting a team's quota")
        return await self.quotas.set_quota(request)

    # ---- API keys ----
    @_rpc
    async def CreateApiKey(self, request, caller):
        require_admin(caller, "creating an API key")
        rec, key = await self.keys.create(request.name, request.team_id, request.role)
        return P.CreateApiKeyResponse(api_key=rec, key=key)

    @_rpc
    async def ListApiKeys(self, request, caller):
        require_admin(caller, "listing API keys")
        return P.ListApiKeysResponse(api_keys=await self.keys.list())

    @_rpc
    async def RevokeApiKey(self, request, caller):
        require_admin(caller, "revoking an API key")
        return P.RevokeApiKeyResponse(revoked=await self.keys.revoke(request.key_id))

    @_rpc
    async def ValidateApiKey(self, request, caller):
        # cube-api asks as itself (no caller); a team's caller has no business probing keys.
        require_admin(caller, "validating an API key")
        return await self.keys.validate(request.key)

    # ---- volumes ----
    @_rpc
    async def CreateVolume(self, request, caller):
        return await self.sb.volumes.create(request.name, caller)

    @_rpc
    async def GetVolume(self, request, caller):
        return await self.sb.volumes.get(request.volume_id, caller)

    @_rpc
    async def ListVolumes(self, request, caller):
        return P.ListVolumesResponse(volumes=await self.sb.volumes.list(caller))

    @_rpc
    async def DeleteVolume(self, request, caller):
        return C.DeleteVolumeResponse(deleted=await self.sb.volumes.delete(request.volume_id, caller))

    # Content calls: the volume's token authorises them, whoever the caller is (caller.py lets the
    # API make them as itself).
    @_rpc
    async def VolumeContent(self, request, caller):
        return await self.sb.volumes.content(request)

    @_stream
    async def ReadVolumeFile(self, request, caller):
        async for chunk in self.sb.volumes.read_file(request):
            yield chunk

    @_rpc
    async def WriteVolumeFile(self, request_iterator, caller):
        return await self.sb.volumes.write_file(request_iterator)

    # ---- cluster ----
    @_rpc
    async def GetClusterStatus(self, request, caller):
        leader, masters = await asyncio.gather(self.election.current(), self.store.list_masters())
        return P.ClusterStatus(leader=leader, self=self.election.identity, is_leader=self.election.is_leader,
                               masters=masters)
