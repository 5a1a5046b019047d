"""The reconciler (leader only, at election and periodically): makes etcd and the nodes agree.

* A record left in a transitional phase past its deadline (its master died, or etcd went away
  between the two writes), or whose master process is gone (``transition_owner`` names an
  incarnation without a presence key: no need to wait for the deadline), is resolved by asking
  its node: CREATING and KILLING are undone (VM killed, record and route deleted: the client
  never got an answer), PAUSING and RESUMING settle
  on whatever the node reports. A RESUMING record moving to another node (``resume_node_id``)
  settles RUNNING there when that node runs it (the old node then drops its copy), else on its
  old node, which still holds the state (the other node drops what it pulled).
* A RUNNING record whose VM its node no longer has (and confirms NOT_FOUND) is removed.
* A route without a sandbox record is deleted.
* A VM a node runs that etcd does not know is killed once it is older than the orphan grace, so
  a create in flight (record written before the VM starts) is never raced; so is a paused copy a
  node keeps of a sandbox that moved to another node. A node a sandbox is moving to is its node
  too until the move settles.
* Templates the nodes report and etcd lacks are registered (never a snapshot of a sandbox, which
  is its team's: snapshots.py).
* A fork's snapshot that no sandbox record names, past the orphan grace, is deleted.
* A volume's reservation whose create was abandoned (its master died before the node answered,
  or the undo could not reach the node) is removed: the node's image first, then the record
  (volumes.py).
* Template builds whose master went away (heartbeat too old) are failed ("master restarted"),
  deferred ones (reserved, never started: no heartbeat) once build_start_timeout_s passed since
  their creation, BUILDING template records without a running or deferred build are removed, and
  finished build jobs are dropped after their retention.
"""

from __future__ import annotations

import asyncio
import time

from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2
from services.master import errors
from services.master.clock import secs
from services.master.log import get_logger
from services.master.sandboxes import Sandboxes
from services.master.store import Conflict

log = get_logger("reconcile")
P = master_pb2
TRANSITIONAL = (P.SANDBOX_PHASE_CREATING, P.SANDBOX_PHASE_KILLING, P.SANDBOX_PHASE_PAUSING, P.SANDBOX_PHASE_RESUMING)


class Reconciler:
    def __init__(self, sandboxes: Sandboxes, grace_s: float, orphan_grace_s: float, builds=None, snapshots=None):
        self.sb = sandboxes
        self.builds = builds
        self.snapshots = snapshots
        self.store = sandboxes.store
        self.nodes = sandboxes.nodes
        self.grace_s = grace_s
        self.orphan_grace_s = orphan_grace_s
        # First time each unknown VM was seen (sandbox id -> monotonic), for VMs without a start time.
        self._orphans_seen: dict[str, float] = {}

    async def run_once(self) -> dict[str, int]:
        stats = {"resolved": 0, "vanished": 0, "routes": 0, "orphans": 0, "templates": 0, "builds": 0, "forks": 0,
                 "volumes": 0}
        now = time.time()
        records = {v.value.sandbox_id: v for v in await self.store.list_sandboxes()}
        nodes = {n.node_id: n for n in await self.store.list_nodes()}
        live = {m.incarnation for m in await self.store.list_masters()}

        for v in records.values():
            r = v.value
            if r.phase in TRANSITIONAL and (secs(r.phase_deadline) + self.grace_s <= now or self._orphaned(r, live)):
                try:
                    await self._resolve(v, nodes.get(r.node_id), nodes.get(r.resume_node_id))
                    stats["resolved"] += 1
                except (errors.MasterError, Conflict) as e:
                    log.warning("could not resolve", extra={"sandbox_id": r.sandbox_id, "error": str(e)})

        for route in await self.store.list_routes():
            sid = route.value.sandbox_id
            if sid not in records and await self.store.delete_route_if_orphan(sid, route.mod_revision):
                log.info("orphan route deleted", extra={"sandbox_id": sid})
                stats["routes"] += 1

        for node in nodes.values():
            try:
                listed = await self.nodes.call(node, "ListSandboxes", cubelet_pb2.ListSandboxesRequest())
            except errors.MasterError as e:
                log.warning("node unreachable", extra={"node_id": node.node_id, "error": str(e)})
                continue
            on_node = {s.sandbox_id: s for s in listed.sandboxes}
            for sid, st in on_node.items():
                known = records.get(sid)
                if known is None or node.node_id not in (known.value.node_id, known.value.resume_node_id):
                    known = await self.store.get_sandbox(sid)  # read again: created or moved since the pass began
                if known is not None and node.node_id in (known.value.node_id, known.value.resume_node_id):
                    self._orphans_seen.pop(sid, None)
                    continue
                if self._old_enough(sid, st, now):
                    await self._kill_vm(node, sid)
                    stats["orphans"] += 1
            for sid, v in records.items():
                r = v.value
                if (r.node_id == node.node_id and r.phase == P.SANDBOX_PHASE_RUNNING and sid not in on_node
                        and secs(r.updated_at) + self.grace_s <= now):
                    gone = await self._vm_gone(node, sid)
                    if gone is not None:
                        try:
                            await self.store.delete_sandbox(sid, v.mod_revision)
                            log.warning("vm vanished; record removed",
                                        extra={"sandbox_id": sid, "node_id": node.node_id, "reason": gone})
                            stats["vanished"] += 1
                        except Conflict:
                            pass
        self._orphans_seen = {k: t for k, t in self._orphans_seen.items() if time.monotonic() - t < 3600}
        if self.builds is not None:
            try:
                stats["builds"] = await self.builds.reconcile()
            except (errors.MasterError, Conflict) as e:
                log.warning("could not reconcile builds", extra={"error": str(e)})
        if self.snapshots is not None:
            try:
                stats["forks"] = await self.snapshots.unused_fork_bases(self.orphan_grace_s)
            except (errors.MasterError, Conflict) as e:
                log.warning("could not delete unused fork snapshots", extra={"error": str(e)})
        try:
            stats["volumes"] = await self.sb.volumes.clean_abandoned()
        except (errors.MasterError, Conflict) as e:
            log.warning("could not clean abandoned volume reservations", extra={"error": str(e)})
        try:
            stats["templates"] = await self.sb.templates.sync_from_nodes()
        except errors.MasterError:
            pass
        if any(stats.values()):
            log.info("reconciled", extra=stats)
        return stats

    def _orphaned(self, r: P.Sandbox, live: set[str]) -> bool:
        """The master process that started ``r``'s transition is gone: nobody will finish it."""
        if not r.transition_owner or r.transition_owner in live:
            return False
        log.info("transition of a master that is gone", extra={"sandbox_id": r.sandbox_id, "owner": r.transition_owner,
                                                              "phase": P.SandboxPhase.Name(r.phase)})
        return True

    def _old_enough(self, sid: str, st: cubelet_pb2.SandboxStatus, now: float) -> bool:
        first = self._orphans_seen.setdefault(sid, time.monotonic())
        if st.HasField("started_at") and st.started_at.seconds > 0:
            return now - secs(st.started_at) >= self.orphan_grace_s
        return time.monotonic() - first >= self.orphan_grace_s

    async def _kill_vm(self, node, sid: str) -> None:
        try:
            await self.nodes.call(node, "KillSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
            log.info("orphan vm killed", extra={"sandbox_id": sid, "node_id": node.node_id})
        except errors.NotFound:
            pass
        except errors.MasterError as e:
            log.warning("orphan kill failed", extra={"sandbox_id": sid, "error": str(e)})
        self._orphans_seen.pop(sid, None)

    async def _vm_gone(self, node, sid: str) -> str | None:
        """The node's word that it has no such sandbox (why, when it knows), or None."""
        try:
            await self.nodes.call(node, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
            return None
        except errors.NotFound as e:
            return str(e)
        except errors.MasterError:
            return None

    async def _resolve(self, v, node, target=None) -> None:
        """Finish or undo a transitional record: ``node`` is its node's registration, ``target`` the
        one a resume moves it to (None: not registered, or not moving)."""
        r = v.value
        sid = r.sandbox_id
        if r.phase == P.SANDBOX_PHASE_RESUMING and r.resume_node_id:
            if await self._settle_move(v, node, target):
                return
        if r.phase in (P.SANDBOX_PHASE_CREATING, P.SANDBOX_PHASE_KILLING):
            if node is not None:
                try:
                    await self.nodes.call(node, "KillSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
                except errors.NotFound:
                    pass
            # (node None: its VM, if the node ever comes back, is an orphan and gets killed.)
            await self.store.delete_sandbox(sid, v.mod_revision)
            log.info("stale record undone", extra={"sandbox_id": sid, "phase": P.SandboxPhase.Name(r.phase)})
            return
        # PAUSING / RESUMING: settle on what the node says.
        if node is None:
            raise errors.Unavailable(f"node '{r.node_id}' is not registered")
        try:
            st = await self.nodes.call(node, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
        except errors.NotFound:
            await self.store.delete_sandbox(sid, v.mod_revision)
            log.info("stale record removed; node has no such sandbox", extra={"sandbox_id": sid})
            return
        phase = P.SANDBOX_PHASE_PAUSED if st.state == cubelet_pb2.SANDBOX_STATE_PAUSED else P.SANDBOX_PHASE_RUNNING
        out = await self.sb._settle(r, v.mod_revision, phase, node, st)
        log.info("stale record settled", extra={"sandbox_id": sid, "phase": P.SandboxPhase.Name(phase),
                                                "ok": out is not None})


    async def _settle_move(self, v, holder, target) -> bool:
        """A move whose master went away: True when the node it went to runs the sandbox (settled
        there, the holder's copy dropped); else that node drops what it has and False (the holder's
        state stands: settled as for any resume)."""
        r = v.value
        sid = r.sandbox_id
        st = None
        if target is not None:
            try:
                st = await self.nodes.call(target, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
            except errors.NotFound:
                st = None
        if st is not None and st.state == cubelet_pb2.SANDBOX_STATE_RUNNING:
            moved = P.Sandbox()
            moved.CopyFrom(r)
            moved.node_id = target.node_id
            out = await self.sb._settle(moved, v.mod_revision, P.SANDBOX_PHASE_RUNNING, target, st)
            if out is not None and holder is not None:
                await self.sb._drop_on(holder, sid)
            log.info("stale move settled", extra={"sandbox_id": sid, "node_id": target.node_id,
                                                  "moved_from": r.node_id, "ok": out is not None})
            return True
        if target is not None and not await self.sb._drop_on(target, sid):
            raise errors.Unavailable(f"node '{target.node_id}' could not drop its copy of sandbox '{sid}'")
        return False


async def run(reconciler: Reconciler, interval_s: float) -> None:
    while True:
        try:
            await reconciler.run_once()
        except EtcdUnavailable:
            pass
        except Exception:
            log.exception("reconcile error")
        await asyncio.sleep(interval_s)
