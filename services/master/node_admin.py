"""Node administration, for operators: list, drain, undrain, remove.

The cubelet owns its registration (<prefix>/nodes/<id>, NodeStatus, rewritten every heartbeat
under its lease), so nothing of an operator's can live there: the master keeps the operator's word
in its own record, <prefix>/node-admin/<id> (NodeAdmin), written only here.

Invariants:
- A node is draining exactly while its NodeAdmin record says so. The scheduler never places a new
  sandbox there (create reads the records with the nodes), nor does a template build choosing its
  node by itself. Nothing already there is touched: its sandboxes keep running, and its paused ones
  stay there until they resume, which moves them to another node that pulls their state
  (sandboxes.py; there again only when no other node can take them).
- A node is known when it is registered, has a NodeAdmin record, or sandbox records name it;
  any other id is NOT_FOUND (a typo must not silently drain nothing). A malformed id is
  INVALID_ARGUMENT before anything is read.
- Remove deletes the registration and the NodeAdmin record in one transaction, and only while
  etcd has no sandbox on the node (KILLING ones aside: they are going). Forced, it first marks the
  node's RUNNING and PAUSED sandboxes LOST (lost.py: routes deleted), each with a compare-and-swap;
  records on their way (CREATING, PAUSING, RESUMING) are left to their master and the reconciler.
  A cubelet still running registers the node again at its next heartbeat (the answer says when it
  was still heartbeating), and the leader then restores what it still has.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterable

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.lost import mark_lost, removed_reason
from services.master.sandboxes import phase_name
from services.master.store import CAS_RETRIES, Conflict, Store, Versioned

log = get_logger("node_admin")

# What a cubelet accepts as its node id (non-empty, no "/"), without control characters, which no
# host name has and no terminal shows faithfully.
NODE_ID_RE = re.compile(r"^[^/\x00-\x1f\x7f]{1,253}\Z")
MAX_REASON_BYTES = 256
# Records that hold nothing on the node any more.
_GOING = (P.SANDBOX_PHASE_KILLING,)
# What a forced remove marks LOST: the records no master is working on.
_SETTLED = (P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_PAUSED)


def check_node_id(node_id: str) -> None:
    if not NODE_ID_RE.match(node_id or ""):
        raise errors.InvalidArgument(f"invalid node id {node_id!r}: want 1-253 characters, no '/' and no control "
                                     "characters")


def node_views(registered: Iterable[cubelet_pb2.NodeStatus], admins: Iterable[P.NodeAdmin],
               records: Iterable[P.Sandbox], heartbeats: dict[str, float]) -> list[P.Node]:
    """Every node the master knows, by id: the registered ones and those only named by an
    operator's record or by sandbox records (LOST)."""
    status = {n.node_id: n for n in registered}
    admin = {a.node_id: a for a in admins}
    counts: dict[str, Counter[int]] = {}
    for r in records:
        if r.node_id:
            counts.setdefault(r.node_id, Counter())[r.phase] += 1
    out = []
    for node_id in sorted(status.keys() | admin.keys() | counts.keys()):
        a = admin.get(node_id)
        draining = a is not None and a.draining
        if node_id not in status:
            state = P.NODE_STATE_LOST
        else:
            state = P.NODE_STATE_DRAINING if draining else P.NODE_STATE_READY
        c = counts.get(node_id, Counter())
        view = P.Node(status=status.get(node_id) or cubelet_pb2.NodeStatus(node_id=node_id), state=state,
                      sandboxes_running=c[P.SANDBOX_PHASE_RUNNING], sandboxes_paused=c[P.SANDBOX_PHASE_PAUSED],
                      sandboxes_lost=c[P.SANDBOX_PHASE_LOST])
        if a is not None:
            view.admin.CopyFrom(a)
        if node_id in heartbeats and node_id in status:
            view.heartbeat_at.CopyFrom(ts(heartbeats[node_id]))
        out.append(view)
    return out


class NodeAdministration:
    def __init__(self, store: Store):
        self.store = store

    async def views(self) -> list[P.Node]:
        registered, admins, records, heartbeats = await asyncio.gather(
            self.store.list_nodes(), self.store.list_node_admins(), self.store.list_sandboxes(),
            self.store.node_heartbeats())
        return node_views(registered, admins, [v.value for v in records], heartbeats)

    async def _view(self, node_id: str) -> P.Node:
        """The node as list shows it; NOT_FOUND when the master does not know it."""
        for view in await self.views():
            if view.status.node_id == node_id:
                return view
        raise errors.NotFound(f"node '{node_id}' not found")

    async def drain(self, node_id: str, reason: str = "") -> P.Node:
        check_node_id(node_id)
        if len(reason.encode()) > MAX_REASON_BYTES or not reason.isprintable():
            raise errors.InvalidArgument(f"the reason must be printable text of at most {MAX_REASON_BYTES} bytes")
        await self._view(node_id)
        await self.store.put_node_admin(P.NodeAdmin(node_id=node_id, draining=True, reason=reason, updated_at=ts()))
        log.info("node draining", extra={"node_id": node_id, "reason": reason})
        return await self._view(node_id)

    async def undrain(self, node_id: str) -> P.Node:
        check_node_id(node_id)
        await self._view(node_id)
        await self.store.delete_node_admin(node_id)
        log.info("node undrained", extra={"node_id": node_id})
        return await self._view(node_id)

    async def remove(self, node_id: str, force: bool) -> P.RemoveNodeResponse:
        check_node_id(node_id)
        view = await self._view(node_id)
        held = await self._held(node_id)
        if held and not force:
            by_phase = Counter(phase_name(v.value.phase) for v in held)
            what = ", ".join(f"{n} {phase}" for phase, n in sorted(by_phase.items()))
            ids = ", ".join(sorted(v.value.sandbox_id for v in held)[:5]) + (", ..." if len(held) > 5 else "")
            raise errors.FailedPrecondition(
                f"node '{node_id}' holds {len(held)} sandbox(es) ({what}: {ids}); kill them first, or force the "
                "removal to mark them lost")
        lost = [await self._lose(v) for v in held] if force else []
        heartbeating = node_id in await self.store.node_heartbeats()
        await self.store.remove_node(node_id)
        marked = sorted(sid for sid in lost if sid)
        log.warning("node removed", extra={"node_id": node_id, "forced": force, "sandboxes_lost": marked,
                                           "was": P.NodeState.Name(view.state), "still_heartbeating": heartbeating})
        return P.RemoveNodeResponse(removed=True, sandboxes_lost=marked, still_heartbeating=heartbeating)

    async def _held(self, node_id: str) -> list[Versioned[P.Sandbox]]:
        return [v for v in await self.store.list_sandboxes()
                if v.value.node_id == node_id and v.value.phase not in _GOING]

    async def _lose(self, v: Versioned[P.Sandbox]) -> str:
        """Mark one sandbox of a node being removed LOST if it is RUNNING or PAUSED (re-reading
        it when it changed meanwhile). Returns its id when it was marked, else ""."""
        sid = v.value.sandbox_id
        cur: Versioned[P.Sandbox] | None = v
        for _ in range(CAS_RETRIES):
            if cur is None or cur.value.phase not in _SETTLED:
                return ""
            try:
                await mark_lost(self.store, cur, removed_reason(cur.value.node_id))
                return sid
            except Conflict:
                cur = await self.store.get_sandbox(sid)
        raise errors.Unavailable(f"sandbox '{sid}' is changing too fast; try the removal again")
