"""Snapshots of running sandboxes: templates of the sandbox's team, taken on its node.

Invariants:
* The etcd record comes first (BUILDING, with its team), then the node takes the snapshot, then
  the record turns READY. A failure (or an answer lost) deletes it from the node, then the record;
  a master that dies in between leaves a BUILDING record without a build (the leader's build
  reconcile removes those), never a template etcd does not know of the team: the leader's sync
  never registers a snapshot a node reports without a record (templates.sync_from_nodes), as it
  would be public.
* A snapshot stays on the node that took it (it reads through its base template's build there):
  creates from it are placed on that node only (``Template.base_template_id`` set), and nodes
  never pull it.
* A fork is a snapshot (``fork_base``, never listed) and ``count`` creates from it, each with the
  source's metadata and env vars, each succeeding or failing alone. The leader deletes a fork's
  snapshot once no sandbox record names it (``unused_fork_bases``), past a grace for creates
  still being admitted.
* A name is an alias in the caller's team. Taking a snapshot under a name that an older snapshot
  of the team holds moves the alias to the new one (the older stays, by id); a name that another
  kind of template holds is refused.
* A sandbox that mounts volumes is never snapshotted nor forked (FAILED_PRECONDITION): its
  volumes are not part of the snapshot.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P
from services.master import errors
from services.master.caller import Caller
from services.master.clock import secs, ts
from services.master.log import get_logger
from services.master.sandboxes import RUNNING_PHASES, Sandboxes
from services.master.templates import NAME_RE, Templates, from_info

log = get_logger("snapshots")
_ALPHABET = string.ascii_lowercase + string.digits
MAX_FORKS = 20  # the SDK's bound of `count`


def new_snapshot_id() -> str:
    return "snap-" + "".join(secrets.choice(_ALPHABET) for _ in range(16))


def _refuse_volumes(rec: P.Sandbox) -> None:
    """A sandbox's volumes live outside its snapshot: a snapshot or fork of it would lose them."""
    if rec.volume_mounts:
        raise errors.FailedPrecondition("sandboxes with volumes cannot be snapshotted or forked: the volume is not "
                                        "part of the snapshot")


class Snapshots:
    def __init__(self, sandboxes: Sandboxes, templates: Templates):
        self.sb = sandboxes
        self.templates = templates
        self.store = sandboxes.store

    async def fork(self, sid: str, caller: Caller, count: int, timeout_s: int) -> list[P.Sandbox | Exception]:
        """The forks, each a sandbox or the error its create failed with."""
        count = count or 1
        if not 1 <= count <= MAX_FORKS:
            raise errors.InvalidArgument(f"count must be between 1 and {MAX_FORKS}, got {count}")
        self.sb._check_timeout(timeout_s)
        src = (await self.sb._record(sid, caller)).value
        _refuse_volumes(src)
        base = await self.create(sid, caller, fork=True)

        req = P.CreateSandboxRequest(template=base.template_id, timeout_s=timeout_s, metadata=dict(src.metadata),
                                     env_vars=dict(src.env_vars), auto_pause=src.auto_pause,
                                     auto_resume=src.auto_resume)
        if src.HasField("network"):
            req.network.CopyFrom(src.network)
        # Each create is whole on its own (record, VM, route; undone on failure): gathered, not grouped.
        results: list[P.Sandbox | Exception] = []
        for r in await asyncio.gather(*(self.sb.create(req, caller) for _ in range(count)), return_exceptions=True):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancelled
            results.append(r)
        log.info("forked", extra={"sandbox_id": sid, "template_id": base.template_id, "count": count,
                                  "failed": sum(1 for r in results if not isinstance(r, P.Sandbox))})
        return results

    async def unused_fork_bases(self, grace_s: float) -> int:
        """Leader: delete the forks' snapshots no sandbox record names, older than ``grace_s``."""
        records = await self.store.list_sandboxes()
        used = {v.value.template_id for v in records}
        now = time.time()
        deleted = 0
        for v in await self.store.list_templates():
            t = v.value
            if t.fork_base and t.template_id not in used and secs(t.created_at) + grace_s <= now \
                    and t.status == P.TEMPLATE_STATUS_READY:
                await self.templates.delete(t, [], kill=None)
                deleted += 1
        return deleted

    async def create(self, sid: str, caller: Caller, name: str = "", fork: bool = False,
                     filesystem_only: bool = False) -> P.Template:
        """A snapshot of a running sandbox, a template in its team (``filesystem_only``: its disk
        alone; sandboxes created from it cold-boot)."""
        if name and not NAME_RE.match(name):
            raise errors.InvalidArgument(f"invalid snapshot name '{name}'")
        v = await self.sb._record(sid, caller)
        rec = v.value
        _refuse_volumes(rec)
        if rec.phase not in RUNNING_PHASES:
            raise errors.FailedPrecondition(f"sandbox '{sid}' is not running; resume it before taking a snapshot")
        node = await self.store.get_node(rec.node_id)
        if node is None:
            raise errors.Unavailable(f"the node of sandbox '{sid}' is not registered")
        if name:
            await self._check_name(name, caller)
        tpl = P.Template(template_id=new_snapshot_id(), vcpus=rec.vcpus, memory_mb=rec.memory_mb,
                         disk_size_mb=rec.disk_size_mb, envd_version=rec.envd_version, source=f"snapshot of {sid}",
                         status=P.TEMPLATE_STATUS_BUILDING, team_id=rec.team_id, base_template_id=rec.template_id,
                         source_sandbox_id=sid, fork_base=fork, home_node_id=node.node_id)
        tpl.created_at.CopyFrom(ts())
        tpl.updated_at.CopyFrom(tpl.created_at)
        await self.store.put_template(tpl)
        try:
            req = cubelet_pb2.SnapshotSandboxRequest(sandbox_id=sid, template_id=tpl.template_id,
                                                     filesystem_only=filesystem_only)
            info = await self.sb.nodes.call(node, "SnapshotSandbox", req, timeout=self.sb.settings.node_op_timeout_s)
        except BaseException:
            await asyncio.shield(self._undo(node, tpl.template_id))
            raise
        done = from_info(info, self.sb.settings.envd_version)
        done.team_id, done.source = tpl.team_id, tpl.source
        done.base_template_id, done.source_sandbox_id = tpl.base_template_id, tpl.source_sandbox_id
        done.fork_base, done.home_node_id, done.filesystem_only = fork, node.node_id, info.filesystem_only
        done.created_at.CopyFrom(tpl.created_at)
        done.updated_at.CopyFrom(ts())
        await self.store.put_template(done)
        if name:
            await self.templates.set_alias(P.TemplateAlias(alias=name, template_id=done.template_id), caller)
        log.info("snapshot taken", extra={"sandbox_id": sid, "template_id": done.template_id, "node_id": node.node_id,
                                          "ms": info.phase_ms.get("SNAPSHOTTING", 0)})
        return await self.templates.get(done.template_id, caller)

    async def _undo(self, node: cubelet_pb2.NodeStatus, tid: str) -> None:
        """A snapshot that failed, or whose answer was lost: off its node (if it got there), then
        its record. A node that cannot be asked keeps a template etcd no longer names (logged)."""
        try:
            req = cubelet_pb2.DeleteTemplateRequest(template_id=tid, force=True)
            await self.sb.nodes.call(node, "DeleteTemplate", req)
        except errors.NotFound:
            pass
        except errors.MasterError as e:
            log.warning("failed snapshot left on its node", extra={"template_id": tid, "node_id": node.node_id,
                                                                  "error": str(e)})
        await self.store.delete_template(tid, [])

    async def _check_name(self, name: str, caller: Caller) -> None:
        """A name free, or held by one of the team's snapshots (it moves), else ALREADY_EXISTS."""
        try:
            held, _ = await self.templates.resolve(name, caller)
        except errors.NotFound:
            return
        if not held.base_template_id or held.team_id != caller.team_id:
            raise errors.AlreadyExists(f"the name '{name}' is taken by a template that is not a snapshot of yours")
