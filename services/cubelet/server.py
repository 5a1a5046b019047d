"""The Cubelet gRPC service (cube.v1.Cubelet): translates calls to the node's managers.

Who may call (under mutual TLS, by certificate role): masters and operators (deploy's bootstrap
builds the first template here) call the node; other nodes' cubelets only fetch templates and
paused sandboxes' saved state (``PEER_METHODS``, transfer.py), and nothing else."""
from __future__ import annotations

import logging

import grpc

from cube_common import metrics, mtls
from cube_common.mtls import Role, peer_identity
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc

from . import capacity, registration
from .sandboxes import SandboxError, SandboxManager, disk_free, disk_refusal
from .settings import CubeletSettings
from .templates import TemplateError, TemplateStore, operator_build
from .transfer import ArtifactSource, PausedSource, TransferError
from .volumes import VolumeError

log = logging.getLogger("cubelet.server")

CALLERS = (Role.MASTER, Role.OPERATOR)
PEER_METHODS = dict.fromkeys(("GetTemplateManifest", "FetchTemplateArtifact", "GetPausedManifest",
                              "FetchPausedArtifact"), (Role.CUBELET,))


async def _abort(context: grpc.aio.ServicerContext, e: Exception) -> None:
    code = getattr(grpc.StatusCode, getattr(e, "code", "INTERNAL"), grpc.StatusCode.INTERNAL)
    await context.abort(code, str(e))


class CubeletService(cubelet_pb2_grpc.CubeletServicer):
    def __init__(self, settings: CubeletSettings, sandboxes: SandboxManager, templates: TemplateStore,
                 accel_name: str) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.templates = templates
        self.accel_name = accel_name
        self.artifacts = ArtifactSource(templates)
        self.paused = PausedSource(sandboxes)

    async def RunSandbox(self, request, context):
        try:
            return await self.sandboxes.run(request)
        except SandboxError as e:
            await _abort(context, e)

    async def KillSandbox(self, request, context):
        return pb.KillSandboxResponse(killed=await self.sandboxes.kill(request.sandbox_id))

    async def PauseSandbox(self, request, context):
        try:
            return await self.sandboxes.pause(request.sandbox_id, filesystem_only=request.filesystem_only,
                                              require_healthy_guest=request.require_healthy_guest)
        except SandboxError as e:
            await _abort(context, e)

    async def ResumeSandbox(self, request, context):
        try:
            return await self.sandboxes.resume(request)
        except SandboxError as e:
            await _abort(context, e)

    async def GetSandbox(self, request, context):
        try:
            return self.sandboxes.get(request.sandbox_id)
        except SandboxError as e:
            await _abort(context, e)

    async def ListSandboxes(self, request, context):
        return pb.ListSandboxesResponse(sandboxes=self.sandboxes.list())

    async def UpdateNetwork(self, request, context):
        try:
            return await self.sandboxes.update_network(request.sandbox_id, request.network)
        except SandboxError as e:
            await _abort(context, e)
        except grpc.aio.AioRpcError as e:  # CubeVS rejected the policy (malformed CIDR, too many rules)
            await context.abort(e.code(), e.details())

    async def SandboxMetrics(self, request, context):
        try:
            return pb.SandboxMetricsResponse(metrics=self.sandboxes.metrics(request.sandbox_id))
        except SandboxError as e:
            await _abort(context, e)

    async def SandboxLogs(self, request, context):
        try:
            return pb.SandboxLogsResponse(lines=self.sandboxes.logs(request.sandbox_id, request.limit))
        except SandboxError as e:
            await _abort(context, e)

    async def SnapshotSandbox(self, request, context):
        try:
            return await self.sandboxes.snapshot(request.sandbox_id, request.template_id,
                                                 filesystem_only=request.filesystem_only)
        except SandboxError as e:
            await _abort(context, e)

    async def BuildTemplate(self, request, context):
        why = disk_refusal(self.settings, "template builds")
        if why:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        peer = peer_identity(context)
        operator = operator_build(context.invocation_metadata(), peer.role if peer else None)
        try:
            async for event in self.templates.build(request, operator=operator):
                yield event
        except TemplateError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def ListTemplates(self, request, context):
        return pb.ListTemplatesResponse(templates=[t.info for t in self.templates.list()])

    async def DeleteTemplate(self, request, context):
        users = [s.sandbox_id for s in self.sandboxes.list() if s.template_id == request.template_id]
        if users and not request.force:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"template {request.template_id} is used by {len(users)} sandbox(es): "
                                f"{', '.join(users[:5])}; use force to kill them and delete it")
        try:
            self.templates.check_no_snapshots(request.template_id)  # before its sandboxes are killed
        except TemplateError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        for sid in users:
            await self.sandboxes.kill(sid)
        try:
            deleted = self.templates.delete(request.template_id)
        except TemplateError as e:  # a snapshot of it appeared meanwhile
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return pb.DeleteTemplateResponse(deleted=deleted)

    async def GetTemplateManifest(self, request, context):
        try:
            return await self.artifacts.manifest(request.template_id, peer=_peer(context))
        except TransferError as e:
            await _abort(context, e)

    async def FetchTemplateArtifact(self, request, context):
        try:
            async for chunk in self.artifacts.chunks(request, peer=_peer(context)):
                yield chunk
        except TransferError as e:
            await _abort(context, e)

    async def GetPausedManifest(self, request, context):
        try:
            return await self.paused.manifest(request.sandbox_id, peer=_peer(context))
        except TransferError as e:
            await _abort(context, e)

    async def FetchPausedArtifact(self, request, context):
        try:
            async for chunk in self.paused.chunks(request, peer=_peer(context)):
                yield chunk
        except TransferError as e:
            await _abort(context, e)

    async def GetNode(self, request, context):
        return self.node_status()

    # ---- volumes (volumes.py) -----------------------------------------------------------------

    async def CreateVolume(self, request, context):
        try:
            return await self.sandboxes.volumes.create(request)
        except VolumeError as e:
            await _abort(context, e)

    async def DeleteVolume(self, request, context):
        try:
            return pb.DeleteVolumeResponse(deleted=await self.sandboxes.volumes.delete(request))
        except VolumeError as e:
            await _abort(context, e)

    async def VolumeContent(self, request, context):
        try:
            return await self.sandboxes.volumes.content(request)
        except VolumeError as e:
            await _abort(context, e)

    async def ReadVolumeFile(self, request, context):
        try:
            async for chunk in self.sandboxes.volumes.read_file(request):
                yield chunk
        except VolumeError as e:
            await _abort(context, e)

    async def WriteVolumeFile(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("request"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the request")
            return None

        async def data():
            eof = first.eof
            if first.data:
                yield first.data
            async for msg in request_iterator:
                if eof:
                    raise VolumeError("INVALID_ARGUMENT", "a volume file write goes on after its last message")
                if msg.data:
                    yield msg.data
                eof = msg.eof
            if not eof:  # the uploader went away: a cut file is never written
                raise VolumeError("CANCELLED", "the upload ended before its last message: nothing was written")

        try:
            return await self.sandboxes.volumes.write_file(first.request, data())
        except VolumeError as e:
            await _abort(context, e)

    def node_status(self) -> pb.NodeStatus:
        host = capacity.Host(*registration.host_memory(), registration.vcpus())
        running, paused = self.sandboxes.counts()
        room = self.sandboxes.headroom(host)
        return pb.NodeStatus(
            node_id=self.settings.node_id, address=self.settings.advertise_address,
            proxy_address=self.settings.proxy_address, vcpus_total=host.cores,
            memory_total_bytes=host.memory_total, memory_available_bytes=host.memory_available,
            sandboxes_running=running,
            sandboxes_paused=paused, templates=[t.template_id for t in self.templates.list()],
            accel=self.accel_name, max_sandboxes=self.settings.max_sandboxes,
            sandboxes_can_take=room.can_take, sandbox_memory_estimate_bytes=room.memory_per_sandbox,
            disk_free_bytes=disk_free(self.settings), disk_watermark_bytes=self.settings.min_free_disk_mb << 20)


def _peer(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, for logs: the certificate's identity, else the transport address."""
    who = peer_identity(context)
    return str(who) if who is not None else context.peer()


def grpc_server(service: CubeletService, listen: str, tls: mtls.TlsFiles | None) -> grpc.aio.Server:
    """The node's gRPC server for ``service`` on ``listen`` (not started): mutual TLS with the role
    rules above when there is ``tls``, else plaintext (loopback only: settings.validate)."""
    gates = [mtls.RoleGate(CALLERS, methods=PEER_METHODS)] if tls is not None else []
    # Figures first, so that the calls a gate refuses count too.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)],
                             interceptors=[metrics.GrpcServerMetrics(), *gates])
    cubelet_pb2_grpc.add_CubeletServicer_to_server(service, server)
    if mtls.add_port(server, listen, tls) == 0:
        raise OSError(f"cannot listen on {listen}")
    return server
