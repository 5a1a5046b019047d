"""Placement: which node runs a new sandbox.

Nodes report their capacity in NodeStatus; the master's own records add what the nodes cannot
have counted yet (creates in flight). Locality (the node already has the template's snapshot)
outweighs load: a restore from a local snapshot takes milliseconds, anything else needs a build
or a copy first.

Invariants:
- A node is never offered a sandbox it would refuse for capacity: no room by its own measure
  (``sandboxes_can_take``, from its memory and CPU headroom, less the creates placed there since it
  reported), its operator's cap reached, free disk under its watermark, too little available
  memory for the pages a clone dirties, or (the operator's cap) guest memory committed beyond
  ``overcommit_ratio`` times its RAM. Committed memory counts every
  sandbox holding a VM there, whether running or on its way, by its full guest size.
- A draining node (an operator's drain: node_admin.py) is never offered a sandbox. A resume comes
  here only when it cannot stay on the node that holds its state (draining, full, or an operator
  named another node): then it goes to a node ranked as for a create, which pulls the state
  (sandboxes.py).
- When no node can take it, the caller gets ``Exhausted`` and the log says why for each node, so
  an operator can act; node names and capacity never reach a tenant.
"""

from __future__ import annotations

import random
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2
from services.master.errors import Exhausted, Unavailable
from services.master.log import get_logger

log = get_logger("scheduler")

MiB = 1 << 20
# Clones share the snapshot's memory copy-on-write, so a sandbox costs the pages it dirties, not
# its memory size; require this fraction of it to be free on the node.
MEMORY_FRACTION_REQUIRED = 0.25
LOCALITY_WEIGHT = 2.0

_PENDING = (master_pb2.SANDBOX_PHASE_CREATING, master_pb2.SANDBOX_PHASE_RESUMING)
_ACTIVE = (master_pb2.SANDBOX_PHASE_CREATING, master_pb2.SANDBOX_PHASE_RUNNING, master_pb2.SANDBOX_PHASE_RESUMING,
           master_pb2.SANDBOX_PHASE_PAUSING)


@dataclass
class NodeLoad:
    active: int = 0              # sandboxes holding a VM (or about to) on the node
    pending_memory_mb: int = 0   # memory of creates/resumes the node may not report yet
    committed_memory_mb: int = 0  # guest memory of every sandbox holding a VM (or about to)


@dataclass(frozen=True)
class Candidate:
    node: cubelet_pb2.NodeStatus
    score: float
    local: bool = field(default=False)


def load_by_node(records: list[master_pb2.Sandbox]) -> dict[str, NodeLoad]:
    out: dict[str, NodeLoad] = {}
    for r in records:
        # A resume moving to another node loads that node (the one it is moving from gets it back).
        load = out.setdefault(r.resume_node_id or r.node_id, NodeLoad())
        if r.phase in _ACTIVE:
            load.active += 1
            load.committed_memory_mb += r.memory_mb
        if r.phase in _PENDING:
            load.pending_memory_mb += r.memory_mb
    return out


def _active(n: cubelet_pb2.NodeStatus, ld: NodeLoad) -> int:
    """Sandboxes holding a VM on ``n``: what it reported, or what our records say if more."""
    return max(ld.active, n.sandboxes_running)


def _can_take(n: cubelet_pb2.NodeStatus, ld: NodeLoad) -> int | None:
    """What ``n`` said it can still take (capacity.py), less the creates placed there since it
    said so that it did not count yet; None from a node that does not say."""
    if not n.HasField("sandboxes_can_take"):
        return None
    return max(0, n.sandboxes_can_take - max(0, ld.active - n.sandboxes_running))


def _available_bytes(n: cubelet_pb2.NodeStatus, ld: NodeLoad) -> float:
    """Memory ``n`` has for clones, less what creates in flight there will dirty."""
    return n.memory_available_bytes - ld.pending_memory_mb * MiB * MEMORY_FRACTION_REQUIRED


def refusal(n: cubelet_pb2.NodeStatus, memory_mb: int, ld: NodeLoad, overcommit_ratio: float) -> str | None:
    """Why node ``n`` cannot take a sandbox of ``memory_mb`` now, or None."""
    if n.max_sandboxes and _active(n, ld) >= n.max_sandboxes:
        return f"all {n.max_sandboxes} sandbox slots taken"
    if _can_take(n, ld) == 0:
        return "no headroom for another sandbox (its measured memory or CPU)"
    if n.disk_watermark_bytes and n.disk_free_bytes < n.disk_watermark_bytes:
        return (f"{n.disk_free_bytes >> 20} MiB disk free, under its watermark of "
                f"{n.disk_watermark_bytes >> 20} MiB")
    if n.memory_total_bytes:
        if overcommit_ratio > 0:
            cap_mb = int(n.memory_total_bytes * overcommit_ratio) >> 20
            if ld.committed_memory_mb + memory_mb > cap_mb:
                return (f"{ld.committed_memory_mb} MiB of guest memory committed; {memory_mb} MiB more would pass "
                        f"{overcommit_ratio:g}x its {n.memory_total_bytes >> 20} MiB")
        avail = _available_bytes(n, ld)
        if avail < memory_mb * MiB * MEMORY_FRACTION_REQUIRED:
            return f"{max(0, int(avail)) >> 20} MiB memory available"
    return None


def rank(nodes: list[cubelet_pb2.NodeStatus], template_id: str, memory_mb: int,
         load: dict[str, NodeLoad], exclude: AbstractSet[str] = frozenset(),
         overcommit_ratio: float = 0.0, draining: AbstractSet[str] = frozenset(),
         only_on: AbstractSet[str] | None = None) -> list[Candidate]:
    """Nodes with room for the sandbox, best first, never one in ``draining``. Raises Unavailable
    when there are no nodes at all and Exhausted when none has room. ``overcommit_ratio`` 0 means no
    cap on committed guest memory. ``only_on``: only these nodes (those that hold a snapshot of a
    sandbox, which no node can pull)."""
    if not nodes:
        raise Unavailable("no nodes are registered")
    out = []
    why: list[str] = []
    for n in nodes:
        if n.node_id in exclude or not n.address:
            continue
        if n.node_id in draining:
            why.append(f"{n.node_id}: draining")
            continue
        if only_on is not None and n.node_id not in only_on:
            why.append(f"{n.node_id}: lacks the template")
            continue
        ld = load.get(n.node_id, NodeLoad())
        reason = refusal(n, memory_mb, ld, overcommit_ratio)
        if reason is not None:
            why.append(f"{n.node_id}: {reason}")
            continue
        can_take = _can_take(n, ld)
        if can_take is not None:  # the share of its room still free
            slot_free = can_take / (can_take + _active(n, ld)) if can_take + _active(n, ld) else 0.0
        else:
            slot_free = 1.0 - _active(n, ld) / n.max_sandboxes if n.max_sandboxes else 1.0
        mem_free = max(0.0, _available_bytes(n, ld) / n.memory_total_bytes) if n.memory_total_bytes else 1.0
        local = template_id in n.templates
        # A little noise spreads equal nodes instead of piling onto the first one.
        score = (LOCALITY_WEIGHT if local else 0.0) + slot_free + mem_free + random.uniform(0, 0.01)
        out.append(Candidate(n, score, local))
    if not out:
        # The reasons are the operator's (node names, capacity), not the tenant's: logged only.
        log.warning("no node has room", extra={"template_id": template_id, "memory_mb": memory_mb, "nodes": why})
        raise Exhausted("no node has room for another sandbox")
    out.sort(key=lambda c: c.score, reverse=True)
    return out
