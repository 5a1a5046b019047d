"""Lost sandboxes (the leader's duty): what becomes of the sandboxes of a node whose registration
is gone, and of them again when the node comes back.

A node's registration (<prefix>/nodes/<id>) lives under its cubelet's lease: it goes when the
cubelet dies or its host is cut off from etcd for the lease's TTL, or when an operator removes the
node (node_admin.py). Then:

* Its RUNNING sandboxes become LOST, each in one compare-and-swap of its record that also deletes
  its route, so the proxies stop sending traffic to a node that may be gone. The record keeps why
  and since when (``lost_reason``, ``lost_at``); get, list and kill still see it (the API says
  running with ``lost`` set: E2B knows no other state), every other call answers UNAVAILABLE.
* Its PAUSED sandboxes stay PAUSED: their state is on that node's disk; a resume answers
  UNAVAILABLE while the node is away (sandboxes.py).
* A LOST sandbox holds nothing of its team's quota (quotas.py counts only the phases that hold a
  VM or a paused state somewhere reachable): the team may replace it at once.
* When the node registers again, its LOST sandboxes are looked up in what it lists (one call per
  node and pass, so a registered but unreachable node costs one deadline, not one per sandbox):
  still there (the cubelet re-adopted its VM) -> RUNNING, or PAUSED, again with its route; not
  there -> the record is deleted. A node that cannot be asked yet is asked on the next pass. A
  restore is not an admission: a team that replaced its lost sandboxes may be above its quota
  until it kills some, as when an operator lowers a limit. Its end time still holds: restored
  past it, it is ended by the timeouts at once.
* A LOST sandbox is killed (record deleted; its node told, if back) ``retention_s`` after it was
  lost (0: never), so the records of a node that never returns do not pile up.

Transitional records are left to the master working on them and to the reconciler: a create that
lands on a node already lost writes RUNNING, and the next full pass marks it.

Passes are cheap when nothing changes: the registered nodes are read every tick, the sandbox
records only when that set changed, when LOST records were seen on the last pass, or every
``full_every_s``. The records are read before the nodes they are checked against: a RUNNING record
was written while its node was registered, so a node read after it is never missed.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

from cube_common.etcd import EtcdUnavailable
from cube_common.teams import OPERATOR
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P
from services.master import errors
from services.master.clock import secs, ts
from services.master.log import get_logger
from services.master.routes import build_route
from services.master.sandboxes import Sandboxes
from services.master.store import Conflict, Store, Versioned

log = get_logger("lost")


def lapsed_reason(node_id: str) -> str:
    return (f"node '{node_id}' was lost: its registration lapsed (its cubelet stopped or its host was cut off "
            "from the cluster)")


def removed_reason(node_id: str) -> str:
    return f"node '{node_id}' was removed by an operator"


async def mark_lost(store: Store, v: Versioned[P.Sandbox], reason: str) -> int:
    """Write ``v`` LOST with ``reason`` and delete its route, if the record is still at its
    revision (Conflict otherwise). Returns the revision written."""
    rec = P.Sandbox()
    rec.CopyFrom(v.value)
    rec.phase = P.SANDBOX_PHASE_LOST
    rec.lost_reason = reason
    rec.lost_at.CopyFrom(ts())
    rec.updated_at.CopyFrom(ts())
    rec.ClearField("phase_deadline")
    rec.ClearField("transition_owner")
    rev = await store.update_sandbox(rec, v.mod_revision, delete_route=True)
    log.warning("sandbox lost", extra={"sandbox_id": rec.sandbox_id, "node_id": rec.node_id, "reason": reason,
                                       "was": P.SandboxPhase.Name(v.value.phase)})
    return rev


@dataclass
class PassStats:
    lost: int = 0       # RUNNING -> LOST
    restored: int = 0   # LOST -> RUNNING or PAUSED
    gone: int = 0       # LOST, and the returning node has no such sandbox: deleted
    expired: int = 0    # LOST past the retention: killed

    def any(self) -> bool:
        return bool(self.lost or self.restored or self.gone or self.expired)


class Return(enum.Enum):
    """What became of a LOST sandbox whose node registered again."""

    RESTORED = "restored"  # the node has it: RUNNING or PAUSED again, with its route
    GONE = "gone"          # the node has no such sandbox: record deleted
    KEPT = "kept"          # the node could not be asked yet: still LOST, asked next pass


class LostSandboxes:
    def __init__(self, sandboxes: Sandboxes, retention_s: float, full_every_s: float):
        self.sb = sandboxes
        self.store = sandboxes.store
        self.nodes = sandboxes.nodes
        self.retention_s = retention_s
        self.full_every_s = full_every_s
        self.forget()

    def forget(self) -> None:
        """Start over from nothing seen: the next pass is a full one (a new term as leader)."""
        self._nodes_seen: frozenset[str] | None = None
        self._lost_seen = False
        self._next_full = 0.0

    async def run_once(self) -> PassStats:
        stats = PassStats()
        registered = frozenset(n.node_id for n in await self.store.list_nodes())
        if (registered == self._nodes_seen and not self._lost_seen and time.monotonic() < self._next_full):
            return stats
        records = await self.store.list_sandboxes()
        nodes = {n.node_id: n for n in await self.store.list_nodes()}
        now = time.time()
        lost_left = False
        on_node: dict[str, dict[str, cubelet_pb2.SandboxStatus] | None] = {}  # per returning node, this pass
        for v in records:
            r = v.value
            try:
                if r.phase == P.SANDBOX_PHASE_RUNNING and r.node_id and r.node_id not in nodes:
                    await mark_lost(self.store, v, lapsed_reason(r.node_id))
                    stats.lost += 1
                    lost_left = True
                elif r.phase == P.SANDBOX_PHASE_LOST:
                    node = nodes.get(r.node_id)
                    if node is not None:
                        if node.node_id not in on_node:
                            on_node[node.node_id] = await self._listed(node)
                        outcome = await self._restore(v, node, on_node[node.node_id])
                        stats.restored += outcome is Return.RESTORED
                        stats.gone += outcome is Return.GONE
                        lost_left |= outcome is Return.KEPT
                    elif self.retention_s and secs(r.lost_at) + self.retention_s <= now:
                        await self.sb.kill(r.sandbox_id, OPERATOR, reason="lost retention ended")
                        stats.expired += 1
                    else:
                        lost_left = True
            except errors.NotFound:
                pass  # killed meanwhile
            except (Conflict, errors.MasterError) as e:
                # Changed meanwhile, or a kill that could not finish: look again next pass.
                lost_left = True
                log.info("lost sandbox left for the next pass", extra={"sandbox_id": r.sandbox_id, "error": str(e)})
        self._nodes_seen = frozenset(nodes)
        self._lost_seen = lost_left
        self._next_full = time.monotonic() + self.full_every_s
        if stats.any():
            log.info("lost sandboxes reconciled", extra=vars(stats))
        return stats

    async def _listed(self, node: cubelet_pb2.NodeStatus) -> dict[str, cubelet_pb2.SandboxStatus] | None:
        """What a returning node has, by sandbox id; None when it cannot be asked yet."""
        try:
            listed = await self.nodes.call(node, "ListSandboxes", cubelet_pb2.ListSandboxesRequest())
        except errors.MasterError as e:
            log.info("returning node not reachable yet", extra={"node_id": node.node_id, "error": str(e)})
            return None
        return {s.sandbox_id: s for s in listed.sandboxes}

    async def _restore(self, v: Versioned[P.Sandbox], node: cubelet_pb2.NodeStatus,
                       on_node: dict[str, cubelet_pb2.SandboxStatus] | None) -> Return:
        """A LOST sandbox's node is registered again: bring the record back to what the node has
        (``on_node``: what it lists; None: it could not be asked)."""
        r = v.value
        if on_node is None:
            return Return.KEPT
        st = on_node.get(r.sandbox_id)
        if st is None:
            # Nothing races this: a LOST record is never on its way to the node.
            await self.store.delete_sandbox(r.sandbox_id, v.mod_revision)
            log.warning("lost sandbox not on its returning node; record removed",
                        extra={"sandbox_id": r.sandbox_id, "node_id": node.node_id})
            return Return.GONE
        paused = st.state == cubelet_pb2.SANDBOX_STATE_PAUSED
        done = P.Sandbox()
        done.CopyFrom(r)
        done.phase = P.SANDBOX_PHASE_PAUSED if paused else P.SANDBOX_PHASE_RUNNING
        done.ClearField("lost_reason")
        done.ClearField("lost_at")
        done.updated_at.CopyFrom(ts())
        done.host_address = st.host_address or done.host_address
        done.proxy_source_address = st.proxy_source_address or done.proxy_source_address
        if paused and not done.HasField("paused_at"):
            done.paused_at.CopyFrom(ts())
        await self.store.update_sandbox(done, v.mod_revision, route=build_route(done, node, paused=paused))
        log.info("lost sandbox restored", extra={"sandbox_id": r.sandbox_id, "node_id": node.node_id,
                                                  "phase": P.SandboxPhase.Name(done.phase),
                                                  "lost_for_s": round(time.time() - secs(r.lost_at), 1)})
        return Return.RESTORED


async def run(lost: LostSandboxes, interval_s: float) -> None:
    lost.forget()  # what an earlier term saw may be stale by now
    while True:
        try:
            await lost.run_once()
        except EtcdUnavailable:
            pass
        except Exception:
            log.exception("lost sandboxes pass failed")
        await asyncio.sleep(interval_s)
