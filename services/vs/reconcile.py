"""Find and remove what no sandbox owns: after a crash of CubeVS, of the cubelet or of a VM.

The records (state file) say which sandboxes exist; everything of ours in the kernel that no
record or warm tap accounts for is a leftover: taps with our prefix, ``cvs_cfg``/``cvs_addr``
entries, policy entries, NAT flows and routes tagged with our routing protocol number.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError

from services.vs.log import get_logger

if TYPE_CHECKING:
    from services.vs.network import NodeNetwork, ReconcileReport

log = get_logger("reconcile")


def remove_leftovers(node: "NodeNetwork", report: "ReconcileReport") -> None:
    from services.vs.network import RTPROT_CUBE

    dp = node.datapath
    records = node.records()
    with node.pool.busy:
        owned = {r.tap for r in records.values()} | {t.name for t in node.pool.free()}
        for tap in node.taps.list_ours():
            if tap.name not in owned:
                node.taps.delete(tap.name)
                report.removed_taps.append(tap.name)
                log.info("removed leftover tap", extra={"tap": tap.name})

    ifindexes = {r.ifindex for r in records.values()}
    addresses = {r.address for r in records.values()}
    policy_ids = {r.policy_id for r in records.values()}

    for ifindex in set(dp.bound()) - ifindexes:
        dp.maps["cvs_cfg"].delete(_u32(ifindex))
        report.removed_entries += 1
    for addr in set(dp.bound_addresses()) - addresses:
        dp.unbind(None, addr)
        report.removed_entries += 1
    for pid in dp.policy_ids() - policy_ids:
        dp.remove_policy(pid)
        report.removed_entries += 1

    ipr = node._ipr
    for r in ipr.get_routes(family=2, proto=RTPROT_CUBE):
        dst = r.get_attr("RTA_DST")
        if dst is None or ipaddress.IPv4Address(dst) in addresses:
            continue
        try:
            ipr.route("del", dst=f"{dst}/{r['dst_len']}", proto=RTPROT_CUBE)
            report.removed_entries += 1
        except NetlinkError:
            pass


def _u32(v: int):
    from services.vs.datapath import U32

    return U32(v)
