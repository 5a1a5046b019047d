"""Placement: which node runs a new sandbox.

Nodes report their capacity in NodeStatus; the master's own records add what the nodes cannot
have counted yet (creates in flight). Locality (the node already has the template's snapshot)
outweighs load: a restore from a local snapshot takes milliseconds, anything else needs a build
or a copy first.
"""

from __future__ import annotations

import random
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2
from services.master.errors import Exhausted, Unavailable

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


@dataclass(frozen=True)
class Candidate:
    node: cubelet_pb2.NodeStatus
    score: float
    local: bool = field(default=False)


def load_by_node(records: list[master_pb2.Sandbox]) -> dict[str, NodeLoad]:
    out: dict[str, NodeLoad] = {}
    for r in records:
        load = out.setdefault(r.node_id, NodeLoad())
        if r.phase in _ACTIVE:
            load.active += 1
        if r.phase in _PENDING:
            load.pending_memory_mb += r.memory_mb
    return out


def rank(nodes: list[cubelet_pb2.NodeStatus], template_id: str, memory_mb: int,
         load: dict[str, NodeLoad], exclude: AbstractSet[str] = frozenset()) -> list[Candidate]:
    """Nodes with room for the sandbox, best first. Raises Unavailable when there are no nodes
    at all and Exhausted when none has room."""
    if not nodes:
        raise Unavailable("no nodes are registered")
    out = []
    for n in nodes:
        if n.node_id in exclude or not n.address:
            continue
        ld = load.get(n.node_id, NodeLoad())
        active = max(ld.active, n.sandboxes_running)
        slots = n.max_sandboxes or 0
        if slots and active >= slots:
            continue
        slot_free = 1.0 - active / slots if slots else 1.0
        mem_free = 1.0
        if n.memory_total_bytes:
            avail = n.memory_available_bytes - ld.pending_memory_mb * MiB * MEMORY_FRACTION_REQUIRED
            if avail < memory_mb * MiB * MEMORY_FRACTION_REQUIRED:
                continue
            mem_free = max(0.0, avail / n.memory_total_bytes)
        local = template_id in n.templates
        # A little noise spreads equal nodes instead of piling onto the first one.
        score = (LOCALITY_WEIGHT if local else 0.0) + slot_free + mem_free + random.uniform(0, 0.01)
        out.append(Candidate(n, score, local))
    if not out:
        raise Exhausted("no node has room for another sandbox")
    out.sort(key=lambda c: c.score, reverse=True)
    return out
