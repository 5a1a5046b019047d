"""Volumes (E2B's persistent storage): records at <prefix>/volumes/<volume_id>, with a per-team
name index at <prefix>/volume-names/<team_id>/<name> (cube_common.keys).

A volume is an ext4 image on one node (cube_common.volumes states the rules every service shares).
The master keeps its record, chooses its node, hands its token out and relays the content calls
to that node.

Invariants:
- A volume and its name index entry are written and deleted in one transaction, so a name is
  unique within its team (ALREADY_EXISTS) and never points at nothing.
- A create writes its record first (a reservation: ``size_bytes`` 0, ``created_at`` the time it
  was made) and only then asks the node; the record is completed (the node's size) when the node
  answers, and a failed create removes what the node made and then the record. A reservation is
  never shown (get, list, content calls answer NOT_FOUND); one older than the node's deadline
  plus grace was left by a master that died (or an undo that could not reach the node): the
  reconciler, or the next create of its name, cleans it (the node's image first, then the record).
- A team's count and bytes are checked under its admission guard (store.TeamGuard: the team record
  compared and rewritten), so concurrent creates on any number of masters never pass the limits.
- Who sees a volume: its team; an operator (no caller team) sees every team's and creates in the
  local team. Another team's volume answers NOT_FOUND exactly as an unknown one.
- ``mounted_by`` names the one sandbox that mounts it, claimed in the transaction that creates
  the sandbox's record and cleared in the one that deletes it (store.py). A ``mounted_by`` whose
  sandbox record is gone is stale: treated as free (and cleared where the call writes anyway).
- Content calls are authorised by the volume's token alone (hmac.compare_digest), never by a
  team; the token is never sent to the node, the volume's team is. The node's answer (status code
  and message) reaches the client unchanged, and file bytes stream through chunk by chunk.
"""

from __future__ import annotations

import asyncio
import builtins
import hmac
import secrets
import string
import time
from collections.abc import AsyncIterator, Iterable

import grpc

from cube_common import volumes as rules
from cube_common.teams import LOCAL_TEAM, Caller
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master import errors
from services.master.clock import secs, ts
from services.master.log import get_logger
from services.master.nodes import NodeClients
from services.master.settings import Settings
from services.master.store import CAS_RETRIES, Conflict, Store, TeamGuard, Versioned
from services.master.teams import owner

log = get_logger("volumes")

MiB = 1 << 20
ID_ALPHABET = string.ascii_lowercase + string.digits


def new_volume_id() -> str:
    """[a-z0-9]{20}, as cube_common.volumes.ID_RE wants."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(20))


def _copy(vol: P.Volume) -> P.Volume:
    out = P.Volume()
    out.CopyFrom(vol)
    return out


def pending(vol: P.Volume) -> bool:
    """A reservation whose node has not confirmed the image yet."""
    return vol.size_bytes == 0


def _not_found(ref: str) -> errors.NotFound:
    return errors.NotFound(f"volume '{ref}' not found")


def mounted_message(vol: P.Volume) -> str:
    return f"volume {vol.name} is mounted by sandbox {vol.mounted_by}"


class Volumes:
    def __init__(self, store: Store, nodes: NodeClients, settings: Settings):
        self.store = store
        self.nodes = nodes
        self.settings = settings
        self._locks: dict[str, asyncio.Lock] = {}  # per team: creates of one master queue, not conflict

    # ---- reading ------------------------------------------------------------------------------

    @staticmethod
    def _visible(vol: P.Volume, caller: Caller) -> bool:
        return not caller.team_id or vol.team_id == caller.team_id

    async def record(self, ref: str, caller: Caller) -> Versioned[P.Volume]:
        """A complete volume the caller may see, by id or by name within the caller's team."""
        if ref and rules.ID_RE.fullmatch(ref):
            v = await self.store.get_volume(ref)
            if v is not None and not pending(v.value) and self._visible(v.value, caller):
                return v
        if ref and rules.NAME_RE.fullmatch(ref):
            idx = await self.store.get_volume_name(owner(caller.team_id), ref)
            if idx is not None:
                v = await self.store.get_volume(idx.value.volume_id)
                if v is not None and not pending(v.value) and self._visible(v.value, caller):
                    return v
        raise _not_found(ref)

    async def get(self, ref: str, caller: Caller) -> P.Volume:
        return (await self.record(ref, caller)).value

    async def list(self, caller: Caller) -> list[P.Volume]:
        out = [v.value for v in await self.store.list_volumes()
               if not pending(v.value) and self._visible(v.value, caller)]
        return sorted(out, key=lambda v: (v.name, v.team_id))

    async def mounter_exists(self, vol: P.Volume) -> bool:
        """Whether ``mounted_by`` names a sandbox whose record still exists (else it is stale)."""
        return bool(vol.mounted_by) and await self.store.get_sandbox(vol.mounted_by) is not None

    # ---- create -------------------------------------------------------------------------------

    async def create(self, name: str, caller: Caller) -> P.Volume:
        try:
            rules.check_name(name)
        except rules.VolumeRuleError as e:
            raise errors.InvalidArgument(str(e)) from None
        team = owner(caller.team_id)
        size = self.settings.volume_size_mb * MiB
        async with self._locks.setdefault(team, asyncio.Lock()):
            vol, rev = await self._reserve(team, name, size)
        log.info("creating volume", extra={"volume_id": vol.volume_id, "team_id": team, "node_id": vol.node_id})
        try:
            return await self._finish_create(vol, rev)
        except BaseException as e:
            # Whatever the failure (node error, etcd gone, the caller cancelled): shielded so that a
            # cancellation cannot cut the undo short.
            await asyncio.shield(self._undo_create(vol))
            if isinstance(e, errors.NodeUnreachable):
                raise errors.Unavailable("the volume's node could not be reached; try again") from e
            raise

    async def _reserve(self, team: str, name: str, size: int) -> tuple[P.Volume, int]:
        """Write the reservation, admitted against the team's limits. Returns it and its revision."""
        for _ in range(CAS_RETRIES):
            guard = await self._guard(team)
            # Read after the team record: whatever committed before its revision is counted here,
            # whatever commits after fails our write.
            existing = [v.value for v in await self.store.list_volumes() if v.value.team_id == team]
            same = next((v for v in existing if v.name == name), None)
            if same is not None:
                if pending(same) and self._abandoned(same):
                    if await self._clean(same):
                        continue
                    raise errors.Unavailable(f"volume '{name}' is held by an unfinished create whose node is away; "
                                             "try again when it is back")
                raise errors.AlreadyExists(f"volume '{name}' already exists")
            self._check_limits(team, existing, size)
            node = await self._choose_node()
            vol = P.Volume(volume_id=new_volume_id(), name=name, team_id=team, node_id=node.node_id,
                           token=secrets.token_urlsafe(32), created_at=ts())
            if await self.store.create_volume(vol, guard):
                got = await self.store.get_volume(vol.volume_id)
                if got is None:
                    raise errors.Unavailable("the volume's record vanished as it was written; try again")
                return vol, got.mod_revision
            if await self.store.get_volume_name(team, name) is not None:
                raise errors.AlreadyExists(f"volume '{name}' already exists")
            # The team changed meanwhile (another master admitted something): count again.
        raise errors.Unavailable(f"team '{team}' is changing too fast; try again")

    async def _guard(self, team: str) -> TeamGuard | None:
        """The team's admission guard; the local team's record is written when it has none yet
        (the leader writes it too). None for a team without a record (the limits then hold
        within one master, by its lock, not across masters)."""
        v = await self.store.team_record(team)
        if v is not None:
            return TeamGuard(v.value, v.mod_revision)
        if team != LOCAL_TEAM:
            return None
        fresh = P.Team(team_id=team, created_at=ts())
        if await self.store.put_team(fresh, 0):
            v = await self.store.team_record(team)
            if v is not None:
                return TeamGuard(v.value, v.mod_revision)
        return None

    def _check_limits(self, team: str, existing: Iterable[P.Volume], size: int) -> None:
        have = list(existing)
        cap = self.settings.volumes_per_team
        if cap and len(have) + 1 > cap:
            raise errors.Exhausted(f"team '{team}' has {len(have)} volumes, its limit; delete one first")
        cap_mb = self.settings.volume_team_mb
        used = sum(v.size_bytes or size for v in have)
        if cap_mb and used + size > cap_mb * MiB:
            raise errors.Exhausted(f"team '{team}' has {used // MiB} MiB of volumes; another {size // MiB} MiB "
                                   f"would pass its limit of {cap_mb} MiB; delete one first")

    async def _choose_node(self) -> C.NodeStatus:
        """A registered node that is not draining and is over its disk watermark, the one with the
        most free disk first."""
        nodes, draining = await asyncio.gather(self.store.list_nodes(), self.store.draining_nodes())
        ok = [n for n in nodes if n.address and n.node_id not in draining
              and not (n.disk_watermark_bytes and n.disk_free_bytes < n.disk_watermark_bytes)]
        if not nodes:
            raise errors.Unavailable("no nodes are registered")
        if not ok:
            log.warning("no node takes a volume", extra={"nodes": [n.node_id for n in nodes],
                                                        "draining": sorted(draining)})
            raise errors.Exhausted("no node has room for another volume")
        return max(ok, key=lambda n: (n.disk_free_bytes, n.node_id))

    async def _finish_create(self, vol: P.Volume, rev: int) -> P.Volume:
        node = await self.store.get_node(vol.node_id)
        if node is None:
            raise errors.Unavailable("the volume's node left the cluster; try again")
        made = await self.nodes.call(node, "CreateVolume", C.NodeVolumeRequest(
            volume_id=vol.volume_id, team_id=vol.team_id, size_bytes=self.settings.volume_size_mb * MiB),
            timeout=self.settings.node_op_timeout_s)
        done = _copy(vol)
        done.size_bytes = made.size_bytes or self.settings.volume_size_mb * MiB
        done.created_at.CopyFrom(ts())
        try:
            await self.store.update_volume(done, rev)
        except Conflict as e:
            raise errors.Unavailable("the volume's record changed while it was being created; try again") from e
        log.info("volume created", extra={"volume_id": vol.volume_id, "team_id": vol.team_id,
                                          "node_id": vol.node_id})
        return done

    async def _undo_create(self, vol: P.Volume) -> None:
        try:
            await self._clean(vol)
        except Exception as e:
            log.warning("volume create undo incomplete; the reconciler finishes it",
                        extra={"volume_id": vol.volume_id, "error": str(e)})

    def _abandoned(self, vol: P.Volume) -> bool:
        grace = self.settings.node_op_timeout_s + self.settings.reconcile_grace_s
        return secs(vol.created_at) + grace < time.time()

    async def _clean(self, vol: P.Volume) -> bool:
        """Remove a reservation's image on its node, then its record. The record stays (False)
        while its node is not registered or cannot be asked: it is what remembers the image."""
        node = await self.store.get_node(vol.node_id)
        if node is None:
            return False
        try:
            await self.nodes.call(node, "DeleteVolume", C.NodeVolumeRequest(volume_id=vol.volume_id,
                                                                           team_id=vol.team_id))
        except errors.NotFound:
            pass
        cur = await self.store.get_volume(vol.volume_id)
        if cur is not None and pending(cur.value) and await self.store.delete_volume(cur):
            log.info("volume reservation removed", extra={"volume_id": vol.volume_id})
        return True

    async def clean_abandoned(self) -> int:
        """Leader (the reconciler): remove every abandoned reservation; how many went."""
        cleaned = 0
        for v in await self.store.list_volumes():
            if pending(v.value) and self._abandoned(v.value):
                try:
                    cleaned += await self._clean(v.value)
                except errors.MasterError as e:
                    log.warning("abandoned volume reservation kept", extra={"volume_id": v.value.volume_id,
                                                                          "error": str(e)})
        return cleaned

    # ---- delete -------------------------------------------------------------------------------

    async def delete(self, ref: str, caller: Caller) -> bool:
        for _ in range(CAS_RETRIES):
            v = await self.record(ref, caller)
            vol = v.value
            if vol.mounted_by and await self.mounter_exists(vol):
                raise errors.FailedPrecondition(mounted_message(vol))
            node = await self.store.get_node(vol.node_id)
            if node is None:
                raise errors.Unavailable(f"the node of volume {vol.name} is not registered now; try again when "
                                         "it is back")
            # The node first (it refuses while a sandbox there mounts it), then the record: an
            # image never outlives its record. A claim made meanwhile fails at the node (no image)
            # and is released; the record's compare below then fails and the delete looks again.
            try:
                await self.nodes.call(node, "DeleteVolume", C.NodeVolumeRequest(volume_id=vol.volume_id,
                                                                               team_id=vol.team_id))
            except errors.NotFound:
                pass
            if await self.store.delete_volume(v):
                log.info("volume deleted", extra={"volume_id": vol.volume_id, "team_id": vol.team_id})
                return True
            # Claimed or released meanwhile: look again.
        raise errors.Unavailable(f"volume '{ref}' is changing too fast; try again")

    # ---- sandboxes' mounts --------------------------------------------------------------------

    async def resolve_mounts(self, mounts: Iterable[P.SandboxVolumeMount], caller: Caller
                             ) -> builtins.list[C.VolumeMount]:
        """A create's mounts, checked (cube_common.volumes) and resolved within the caller's team."""
        try:
            pairs = rules.check_mounts([(m.name, m.path) for m in mounts])
        except rules.VolumeRuleError as e:
            raise errors.InvalidArgument(str(e)) from None
        out: builtins.list[C.VolumeMount] = []
        for ref, path in pairs:
            try:
                vol = await self.get(ref, caller)
            except errors.NotFound:
                raise errors.NotFound(f"volume '{ref}' not found") from None
            if any(m.volume_id == vol.volume_id for m in out):
                raise errors.InvalidArgument(f"volume {vol.name!r} is mounted twice")
            out.append(C.VolumeMount(volume_id=vol.volume_id, team_id=vol.team_id, path=path, name=vol.name))
        return out

    async def node_of(self, mounts: Iterable[C.VolumeMount]) -> str:
        """The one node every mounted volume is on."""
        nodes: dict[str, str] = {}
        for m in mounts:
            v = await self.store.get_volume(m.volume_id)
            if v is None:
                raise _not_found(m.name)
            nodes.setdefault(v.value.node_id, m.name)
        if len(nodes) > 1:
            raise errors.FailedPrecondition("volumes " + ", ".join(repr(n) for n in nodes.values()) +
                                            " are on different nodes; a sandbox mounts volumes of one node only")
        return next(iter(nodes))

    async def claimable(self, sandbox_id: str, mounts: Iterable[C.VolumeMount]
                        ) -> builtins.list[Versioned[P.Volume]]:
        """The volumes a new sandbox mounts, as read now, for its create to claim
        (store.create_sandbox compares them): FAILED_PRECONDITION when one is mounted by another
        sandbox that exists."""
        out = []
        for m in mounts:
            v = await self.store.get_volume(m.volume_id)
            if v is None or pending(v.value):
                raise _not_found(m.name)
            if v.value.mounted_by and v.value.mounted_by != sandbox_id and await self.mounter_exists(v.value):
                raise errors.FailedPrecondition(mounted_message(v.value))
            out.append(v)
        return out

    # ---- content (authorised by the volume's token) -----------------------------------------------

    async def _content_target(self, req: C.VolumeContentRequest) -> tuple[C.NodeStatus, C.VolumeContentRequest]:
        """The node to ask and the request to send it: NOT_FOUND, UNAUTHENTICATED or
        FAILED_PRECONDITION as the module docstring says."""
        vid = req.volume_id
        v = await self.store.get_volume(vid) if rules.ID_RE.fullmatch(vid or "") else None
        if v is None or pending(v.value):
            raise _not_found(vid)
        vol = v.value
        if not hmac.compare_digest(req.token.encode(), vol.token.encode()):
            raise errors.Unauthenticated("invalid volume token")
        if vol.mounted_by:
            if await self.mounter_exists(vol):
                raise errors.FailedPrecondition(f"{mounted_message(vol)}; use the sandbox's filesystem API or "
                                                "kill it first")
            await self._clear_stale(v)
        node = await self.store.get_node(vol.node_id)
        if node is None:
            raise errors.Unavailable(f"the node of volume {vol.name} is not registered now; try again when it "
                                     "is back")
        out = C.VolumeContentRequest()
        out.CopyFrom(req)
        out.team_id = vol.team_id
        out.token = ""
        return node, out

    async def _clear_stale(self, v: Versioned[P.Volume]) -> None:
        cleared = _copy(v.value)
        cleared.mounted_by = ""
        try:
            await self.store.update_volume(cleared, v.mod_revision)
            log.info("stale mount cleared", extra={"volume_id": cleared.volume_id, "sandbox_id": v.value.mounted_by})
        except Conflict:
            pass  # someone else changed it: the node still refuses a volume a sandbox mounts

    async def content(self, req: C.VolumeContentRequest) -> C.VolumeContentResponse:
        node, fwd = await self._content_target(req)
        try:
            return await self.nodes.stub(node.address).VolumeContent(fwd, timeout=self.settings.node_rpc_timeout_s)
        except grpc.RpcError as e:
            raise _relayed(e) from None

    async def read_file(self, req: C.VolumeContentRequest) -> AsyncIterator[C.VolumeFileChunk]:
        node, fwd = await self._content_target(req)
        call = self.nodes.stub(node.address).ReadVolumeFile(fwd, timeout=self.settings.volume_transfer_timeout_s)
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as e:
            raise _relayed(e) from None
        finally:
            call.cancel()  # a client that went away stops the node's read too (no-op once done)

    async def write_file(self, chunks: AsyncIterator[C.VolumeFileChunk]) -> C.VolumeEntry:
        first = await anext(aiter(chunks), None)
        if first is None or not first.HasField("request"):
            raise errors.InvalidArgument("the first message of a volume file write carries its request")
        node, fwd = await self._content_target(first.request)

        async def relay() -> AsyncIterator[C.VolumeFileChunk]:
            head = C.VolumeFileChunk()
            head.CopyFrom(first)
            head.request.CopyFrom(fwd)
            yield head
            async for chunk in chunks:
                chunk.ClearField("request")  # only the first message carries it
                yield chunk

        try:
            return await self.nodes.stub(node.address).WriteVolumeFile(
                relay(), timeout=self.settings.volume_transfer_timeout_s)
        except grpc.RpcError as e:
            raise _relayed(e) from None


def _relayed(e: grpc.RpcError) -> errors.NodeAnswered:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    detail = e.details() if hasattr(e, "details") else str(e)
    return errors.NodeAnswered(code, detail or code.name)
