"""Find and remove what no sandbox owns: after a crash of CubeVS, of the cubelet or of a VM.

The records (state file) say which sandboxes exist; everything of ours in the kernel that no
record or warm tap accounts for is a leftover: taps with our prefix, ``cvs_cfg``/``cvs_addr``
entries, policy entries, NAT flows and routes tagged with our routing protocol number.

Invariants: this module gets what it may touch as arguments (the node's tap factory, datapath
and netlink socket) and what is owned as plain values, and it removes only what carries our
marks (tap prefix, ``RTPROT_CUBE``); ``NodeNetwork.reconcile`` holds the locks that make "owned"
true while it runs. It imports nothing of ``network``, which imports it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.vs.datapath import U32, Datapath
from services.vs.log import get_logger
from services.vs.taps import TapFactory

log = get_logger("reconcile")

# rtm_protocol of the routes CubeVS adds, so reconcile can tell them from anyone else's.
RTPROT_CUBE = 0xCB


@dataclass
class ReconcileReport:
    released: list[str] = field(default_factory=list)       # records not in the live set
    missing: list[str] = field(default_factory=list)        # live IDs without a network here
    removed_taps: list[str] = field(default_factory=list)   # our taps that no record owns
    removed_entries: int = 0                                # stale map entries / routes


def remove_leftover_taps(taps: TapFactory, owned: Collection[str], report: ReconcileReport) -> None:
    """Delete our taps (by prefix) that are not in ``owned`` (recorded or warm)."""
    for tap in taps.list_ours():
        if tap.name not in owned:
            taps.delete(tap.name)
            report.removed_taps.append(tap.name)
            log.info("removed leftover tap", extra={"tap": tap.name})


def remove_leftover_entries(dp: Datapath, ifindexes: Collection[int], addresses: Collection[ipaddress.IPv4Address],
                            policy_ids: Collection[int], report: ReconcileReport) -> None:
    """Drop map entries of taps, addresses and policies that no record has."""
    for ifindex in set(dp.bound()) - set(ifindexes):
        dp.maps["cvs_cfg"].delete(U32(ifindex))
        report.removed_entries += 1
    for addr in set(dp.bound_addresses()) - set(addresses):
        dp.unbind(None, addr)
        report.removed_entries += 1
    for pid in dp.policy_ids() - set(policy_ids):
        dp.remove_policy(pid)
        report.removed_entries += 1


def remove_leftover_routes(ipr: IPRoute, addresses: Collection[ipaddress.IPv4Address], report: ReconcileReport) -> None:
    """Delete our host routes (``RTPROT_CUBE``) to addresses that no record has."""
    for r in ipr.get_routes(family=2, proto=RTPROT_CUBE):
        dst = r.get_attr("RTA_DST")
        if dst is None or ipaddress.IPv4Address(dst) in addresses:
            continue
        try:
            ipr.route("del", dst=f"{dst}/{r['dst_len']}", proto=RTPROT_CUBE)
            report.removed_entries += 1
        except NetlinkError:
            pass  # gone meanwhile: nothing left to remove
