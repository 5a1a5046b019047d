"""Per-sandbox traffic counters, read from the per-CPU ``cvs_stats`` map.

Directions are the sandbox's: egress = sent by the sandbox (and let through), ingress =
delivered to it. Drops are counted by reason on both directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class DropReason(IntEnum):
    """Keep in sync with ``enum drop_reason`` in bpf/datapath.bpf.c."""

    UNCONFIGURED = 0
    SPOOF = 1
    NOT_IPV4 = 2
    ARP = 3
    MALFORMED = 4
    FRAGMENT = 5
    NODE = 6
    SANDBOX = 7
    INFRA = 8
    POLICY = 9
    PROTO = 10
    NO_ROUTE = 11
    INGRESS = 12
    NAT = 13


DROP_SLOTS = 16  # DROP_MAX in C


@dataclass(frozen=True)
class SandboxCounters:
    egress_bytes: int = 0
    egress_packets: int = 0
    ingress_bytes: int = 0
    ingress_packets: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def drop_count(self, reason: DropReason) -> int:
        return self.drops.get(reason.name.lower(), 0)


def sum_per_cpu(values) -> SandboxCounters:
    """Fold the per-CPU array of ``struct sbx_stats`` into one record."""
    eb = ep = ib = ip = 0
    drops = [0] * DROP_SLOTS
    for v in values:
        eb += v.egress_bytes
        ep += v.egress_packets
        ib += v.ingress_bytes
        ip += v.ingress_packets
        for i in range(DROP_SLOTS):
            drops[i] += v.drops[i]
    named = {r.name.lower(): drops[r.value] for r in DropReason if drops[r.value]}
    return SandboxCounters(eb, ep, ib, ip, named)
