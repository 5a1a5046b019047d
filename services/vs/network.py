"""The node's sandbox networking: what the gRPC service calls.

Addressing. Every clone has the same guest identity (169.254.0.21/30, gateway .22, one MAC).
Each sandbox gets a tap and a unique host-side address from the node pool (198.19.0.0/16 by
default). The node routes ``<address>/32`` to the tap with a permanent neighbour entry for the
guest MAC, so the kernel never ARPs into a tap; the datapath rewrites ``<address>`` <-> guest IP
on the tap (stateless 1:1, since a tap is one sandbox) and answers the guest's ARP for its
gateway itself. Egress then leaves through an uplink where the datapath NATs the sandbox address
to the uplink's address.

The proxy connects from ``proxy_addr`` (on ``lo`` by default) to ``<address>:<port>``; only that
source reaches exposed ports, and only replies on its connections go back from a sandbox to
any node address.
"""

from __future__ import annotations

import builtins
import errno
import ipaddress
import re
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cube_common import netns
from services.vs import rtnl
from services.vs.addresses import AddressPool, PoolExhausted
from services.vs.counters import SandboxCounters
from services.vs.datapath import Datapath
from services.vs.guest import GuestNetwork, GuestNetworkError
from services.vs.log import get_logger
from services.vs.policy import Limits, NetworkPolicy, PolicyError, compile_policy, infra_rules
from services.vs.reconcile import (
    RTPROT_CUBE,
    ReconcileReport,
    remove_leftover_entries,
    remove_leftover_routes,
    remove_leftover_taps,
)
from services.vs.settings import Settings
from services.vs.state import Allocation, StateFile
from services.vs.taps import TapFactory, TapPool

log = get_logger("network")

_SANDBOX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class AlreadyExists(ValueError):
    pass


class Exhausted(RuntimeError):
    pass


class InvalidArgument(ValueError):
    pass


@dataclass(frozen=True)
class SandboxNetwork:
    """What a caller needs to start a VM on the network and reach it."""

    sandbox_id: str
    tap: str
    address: ipaddress.IPv4Address
    proxy_address: ipaddress.IPv4Address
    guest: GuestNetwork
    policy: NetworkPolicy
    created_at: float
    warm: bool = False  # the tap came from the warm pool


def validate_sandbox_id(sandbox_id: str) -> None:
    if not isinstance(sandbox_id, str) or not _SANDBOX_ID_RE.match(sandbox_id):
        raise InvalidArgument(f"invalid sandbox_id {sandbox_id!r}: 1-128 of [A-Za-z0-9_.-]")


class NodeNetwork:
    def __init__(self, settings: Settings):
        self.settings = settings.validate()
        self.limits = Limits(settings.max_rules, settings.max_ports)
        self.datapath = Datapath(settings)
        self.taps = TapFactory(settings, self.datapath.attach_tap)
        self.pool = TapPool(self.taps, settings.pool_size)
        self.addresses = AddressPool(settings.pool, reserved={settings.proxy_ip})
        state_name = f"state-{settings.netns}.json" if settings.netns else "state.json"
        self.state = StateFile(settings.state_dir / "vs" / state_name)
        self._records: dict[str, Allocation] = {}
        self._free_slots: list[int] = []
        self._next_policy_id = 1
        self._uplinks: dict[int, str] = {}
        self._uplink_mtus: dict[int, int] = {}
        self._lock = threading.RLock()
        self._ipr: IPRoute | None = None  # open between start() and stop()/teardown()
        self._started = False

    @property
    def _rtnl(self) -> IPRoute:
        """The node's netlink socket; only open while the node network is started."""
        if self._ipr is None:
            raise RuntimeError("node network is not started (no netlink socket)")
        return self._ipr

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        infra = infra_rules(s.allow_cidrs, s.deny_cidrs)  # bad configuration fails before any change
        self.datapath.load()
        self._ipr = rtnl.iproute(s.netns)
        # The node routes between taps and uplinks.
        netns.write_sysctl(s.netns, "net.ipv4.ip_forward", "1")
        self._setup_proxy_address()
        self._attach_uplinks()
        self.datapath.configure_node(infra, self.mss_clamp)
        records, self._next_policy_id = self.state.load()
        self._free_slots = list(range(s.max_sandboxes))
        self._adopt(records)
        self.reconcile(None)
        self.pool.start()
        self._started = True
        log.info("node network ready", extra={"sandboxes": len(self._records), "uplinks": list(self._uplinks.values()),
                                              "pool_cidr": s.pool_cidr, "proxy_address": str(s.proxy_ip)})

    def stop(self) -> None:
        """Stop serving; the datapath stays in the kernel and a restart re-adopts it."""
        self.pool.stop()
        self.pool.drain()
        with self._lock:
            if self._ipr:
                self._ipr.close()
                self._ipr = None
            self.datapath.close()
            self.taps.close()
            self._started = False

    def teardown(self) -> None:
        """Remove everything: sandboxes' taps, warm taps, programs, pins, routes, state."""
        self.pool.stop()
        self.pool.drain()
        with self._lock:
            for sid in list(self._records):
                self.release(sid)
            for tap in self.taps.list_ours():
                self.taps.delete(tap.name)
            self.datapath.destroy(list(self._uplinks))
            self._uplinks.clear()
            self._remove_proxy_address()
            if self._ipr:
                self._ipr.close()
                self._ipr = None
            self.state.remove()
            self.taps.close()
            self._started = False

    def _setup_proxy_address(self) -> None:
        s = self.settings
        ipr = self._rtnl
        idx = ipr.link_lookup(ifname=s.proxy_dev)
        if not idx:
            ipr.link("add", ifname=s.proxy_dev, kind="dummy")
            idx = ipr.link_lookup(ifname=s.proxy_dev)
        ipr.link("set", index=idx[0], state="up")
        try:
            # Scope host: the kernel never picks it as a default source address (an address on
            # lo would otherwise be its first choice for the taps, which have none), so only a
            # process that binds it explicitly, i.e. the proxy, speaks from it.
            ipr.addr("add", index=idx[0], address=str(s.proxy_ip), prefixlen=32, scope=254)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    def _remove_proxy_address(self) -> None:
        s = self.settings
        ipr = self._rtnl
        idx = ipr.link_lookup(ifname=s.proxy_dev)
        if idx:
            try:
                ipr.addr("del", index=idx[0], address=str(s.proxy_ip), prefixlen=32)
            except NetlinkError:
                pass

    @property
    def mss_clamp(self) -> int:
        if self.settings.mss_clamp > 0:
            return self.settings.mss_clamp
        if self.settings.mss_clamp < 0 or not self._uplink_mtus:
            return 0
        return min(self._uplink_mtus.values()) - 40  # IPv4 + TCP headers

    def _attach_uplinks(self) -> None:
        ipr = self._rtnl
        names = list(self.settings.uplinks)
        if not names:
            for r in ipr.get_default_routes(family=2):
                oif = r.get_attr("RTA_OIF")
                if oif:
                    names.append(ipr.get_links(oif)[0].get_attr("IFLA_IFNAME"))
        if not names:
            log.warning("no uplink: sandboxes will have no egress (no IPv4 default route)")
        for name in dict.fromkeys(names):
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                raise InvalidArgument(f"uplink {name!r} does not exist")
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0], family=2)]
            if not addrs:
                raise InvalidArgument(f"uplink {name!r} has no IPv4 address to NAT to")
            self.datapath.attach_uplink(idx[0], ipaddress.IPv4Address(addrs[0]))
            self._uplinks[idx[0]] = name
            self._uplink_mtus[idx[0]] = ipr.get_links(idx[0])[0].get_attr("IFLA_MTU")

    # -- adopt / reconcile -----------------------------------------------------------------

    def _adopt(self, records: list[Allocation]) -> None:
        """Re-install every recorded sandbox onto the (possibly fresh) maps and programs."""
        links = {t.name: t.ifindex for t in self.taps.list_ours()}
        for rec in records:
            if links.get(rec.tap) != rec.ifindex:
                log.warning("tap of recorded sandbox is gone, dropping the record",
                            extra={"sandbox_id": rec.sandbox_id, "tap": rec.tap})
                continue
            try:
                compiled = compile_policy(rec.policy, self.limits)
                self.addresses.claim(rec.address)
                self._free_slots.remove(rec.slot)
                self.datapath.attach_tap(rec.ifindex)
                self.datapath.remove_policy(rec.policy_id)
                self.datapath.install_policy(rec.policy_id, compiled)
                self._ensure_route(rec)
                self.datapath.bind(rec.ifindex, rec.slot, rec.policy_id, compiled.all_ports, rec.address,
                                   rec.guest, reset_counters=False)
                self._records[rec.sandbox_id] = rec
                self._next_policy_id = max(self._next_policy_id, rec.policy_id + 1)
                log.info("re-adopted sandbox", extra={"sandbox_id": rec.sandbox_id, "tap": rec.tap})
            except Exception:
                log.exception("cannot re-adopt sandbox, releasing it", extra={"sandbox_id": rec.sandbox_id})
                self.addresses.release(rec.address)
                if rec.slot not in self._free_slots:
                    self._free_slots.append(rec.slot)
        self._save()

    def reconcile(self, live_sandbox_ids: list[str] | None) -> ReconcileReport:
        """Release what is not live (when a live set is given) and remove every leftover: taps
        with our prefix that no record or warm pool owns, map entries and routes of nothing."""
        report = ReconcileReport()
        with self._lock:
            if live_sandbox_ids is not None:
                live = set(live_sandbox_ids)
                for sid in sorted(set(self._records) - live):
                    self.release(sid)
                    report.released.append(sid)
                report.missing = sorted(live - set(self._records))
            records = self.records()
            with self.pool.busy:
                owned = {r.tap for r in records.values()} | {t.name for t in self.pool.free()}
                remove_leftover_taps(self.taps, owned, report)
            addresses = {r.address for r in records.values()}
            remove_leftover_entries(self.datapath, {r.ifindex for r in records.values()}, addresses,
                                    {r.policy_id for r in records.values()}, report)
            remove_leftover_routes(self._rtnl, addresses, report)
        if report.released or report.removed_taps or report.removed_entries:
            log.info("reconciled", extra={"released": report.released, "removed_taps": report.removed_taps,
                                          "removed_entries": report.removed_entries})
        return report

    # -- sandboxes -------------------------------------------------------------------------

    def _alloc_policy_id(self) -> int:
        used = {r.policy_id for r in self._records.values()}
        while True:
            pid = self._next_policy_id
            self._next_policy_id = pid + 1 if pid < 0xFFFFFFF0 else 1
            if pid not in used:
                return pid

    def _ensure_route(self, rec: Allocation) -> None:
        ipr = self._rtnl
        try:
            ipr.route("replace", dst=f"{rec.address}/32", oif=rec.ifindex, scope=253, proto=RTPROT_CUBE)
        except NetlinkError as e:
            raise RuntimeError(f"route {rec.address} -> {rec.tap}: {e}") from e
        # The guest does not own <address>, so it would never answer ARP for it.
        ipr.neigh("replace", dst=str(rec.address), lladdr=rec.guest.mac, ifindex=rec.ifindex, state="permanent")

    def allocate(self, sandbox_id: str, policy: NetworkPolicy | None = None,
                 guest: GuestNetwork | None = None) -> SandboxNetwork:
        validate_sandbox_id(sandbox_id)
        policy = policy or NetworkPolicy()
        guest = guest or GuestNetwork()
        try:
            guest.validate()
        except GuestNetworkError as e:
            raise InvalidArgument(str(e)) from None
        compiled = compile_policy(policy, self.limits)  # PolicyError is an InvalidArgument too
        with self._lock:
            if sandbox_id in self._records:
                raise AlreadyExists(f"sandbox {sandbox_id} already has a network on this node")
            if not self._free_slots:
                raise Exhausted(f"node is at its limit of {self.settings.max_sandboxes} sandboxes")
            try:
                address = self.addresses.allocate()
            except PoolExhausted as e:
                raise Exhausted(str(e)) from None
            slot = self._free_slots.pop(0)
            pid = self._alloc_policy_id()
            tap = None
            try:
                tap, warm = self.pool.take()
                if guest.gateway_mac != GuestNetwork().gateway_mac:
                    self._rtnl.link("set", index=tap.ifindex, address=guest.gateway_mac)
                rec = Allocation(sandbox_id=sandbox_id, tap=tap.name, ifindex=tap.ifindex, address=address,
                                 slot=slot, policy_id=pid, guest=guest, policy=policy)
                self.datapath.install_policy(pid, compiled)
                self._ensure_route(rec)
                self.datapath.bind(tap.ifindex, slot, pid, compiled.all_ports, address, guest)
                self._records[sandbox_id] = rec
                self._save()
            except BaseException:
                self._records.pop(sandbox_id, None)
                if tap is not None:
                    self.datapath.unbind(tap.ifindex, address)
                    self.taps.delete(tap.name)
                self.datapath.remove_policy(pid)
                self.addresses.release(address)
                self._free_slots.append(slot)
                raise
        log.info("allocated", extra={"sandbox_id": sandbox_id, "tap": tap.name, "address": str(address),
                                     "warm": warm})
        return self._view(rec, warm)

    def update_policy(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxNetwork:
        compiled = compile_policy(policy, self.limits)
        with self._lock:
            rec = self._get(sandbox_id)
            old, new = rec.policy_id, self._alloc_policy_id()
            # Write the new rules beside the old, switch with one map update, then drop the old:
            # a packet sees either policy whole, never a mix.
            self.datapath.install_policy(new, compiled)
            try:
                self.datapath.switch_policy(rec.ifindex, new, compiled.all_ports)
            except BaseException:
                self.datapath.remove_policy(new)
                raise
            self.datapath.remove_policy(old)
            rec.policy_id, rec.policy = new, policy
            self._save()
        log.info("policy updated", extra={"sandbox_id": sandbox_id,
                                          "allow_internet_access": policy.allow_internet_access,
                                          "allow_out": list(policy.allow_out), "deny_out": list(policy.deny_out)})
        return self._view(rec)

    def release(self, sandbox_id: str) -> None:
        with self._lock:
            rec = self._get(sandbox_id)
            self.datapath.unbind(rec.ifindex, rec.address)
            self.datapath.remove_policy(rec.policy_id)
            # Deleting the tap takes its routes, neighbour entry and tc filters with it.
            self.taps.delete(rec.tap)
            self.addresses.release(rec.address)
            self._free_slots.append(rec.slot)
            del self._records[sandbox_id]
            self._save()
        log.info("released", extra={"sandbox_id": sandbox_id, "tap": rec.tap})

    def get(self, sandbox_id: str) -> SandboxNetwork:
        with self._lock:
            return self._view(self._get(sandbox_id))

    def list(self) -> list[SandboxNetwork]:
        with self._lock:
            return [self._view(r) for r in sorted(self._records.values(), key=lambda r: r.created_at)]

    # `list` below names the method above: the builtin is `builtins.list` in this class from here on.
    def stats(self, sandbox_ids: builtins.list[str] | None = None) -> builtins.list[tuple[str, SandboxCounters]]:
        with self._lock:
            ids = list(self._records) if not sandbox_ids else sandbox_ids
            return [(sid, self.datapath.counters(self._get(sid).slot)) for sid in ids]

    def status(self) -> dict:
        with self._lock:
            return {"sandboxes": len(self._records), "warm_taps": len(self.pool.free()),
                    "pool_size": self.settings.pool_size, "max_sandboxes": self.settings.max_sandboxes,
                    "pool_cidr": self.settings.pool_cidr, "proxy_address": str(self.settings.proxy_ip),
                    "uplinks": list(self._uplinks.values()), "nat_flows": self.datapath.nat_flows(),
                    "mss_clamp": self.mss_clamp}

    def _get(self, sandbox_id: str) -> Allocation:
        rec = self._records.get(sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox {sandbox_id!r} has no network on this node")
        return rec

    def _view(self, rec: Allocation, warm: bool = False) -> SandboxNetwork:
        return SandboxNetwork(sandbox_id=rec.sandbox_id, tap=rec.tap, address=rec.address,
                              proxy_address=self.settings.proxy_ip, guest=rec.guest, policy=rec.policy,
                              created_at=rec.created_at, warm=warm)

    def _save(self) -> None:
        self.state.save(list(self._records.values()), self._next_policy_id)

    def records(self) -> dict[str, Allocation]:
        with self._lock:
            return dict(self._records)


__all__ = [
    "RTPROT_CUBE",
    "AlreadyExists",
    "Exhausted",
    "InvalidArgument",
    "NodeNetwork",
    "NotFound",
    "PolicyError",
    "ReconcileReport",
    "SandboxNetwork",
]
