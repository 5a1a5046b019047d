"""The eBPF datapath: load the object, pin its maps, attach programs, write policy into maps.

One object is loaded per node; the same program fds are attached to every tap (tc clsact
ingress ``cvs_tap_in`` / egress ``cvs_tap_out``) and every uplink (``cvs_up_in`` /
``cvs_up_out``). Maps are pinned under ``<bpffs>/cube/vs`` so that a restarted CubeVS loads
fresh programs onto the same maps (flows and counters survive) and swaps the tc filters in
place. Per-sandbox state is keyed by the tap's ifindex; policies by a policy id so that a policy
update is written beside the old one and switched with a single map update.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import subprocess
import sys
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.vs import build, libbpf, rtnl
from services.vs.counters import SandboxCounters, sum_per_cpu
from services.vs.guest import GuestNetwork, mac_bytes
from services.vs.libbpf import Map
from services.vs.log import get_logger
from services.vs.policy import CompiledPolicy, InfraRule
from services.vs.settings import Settings

log = get_logger("datapath")

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

CFG_ALL_PORTS = 1
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
PROGRAMS = ("cvs_tap_in", "cvs_tap_out", "cvs_up_in", "cvs_up_out")
BPF_FS_MAGIC = 0xCAFE4A11


def be32(addr: ipaddress.IPv4Address | str) -> int:
    """A u32 whose in-memory bytes are the address in network order."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, sys.byteorder)


def be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def from_be32(v: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(v.to_bytes(4, sys.byteorder))


# ctypes mirrors of the C structs (same field order, natural alignment).
class SbxCfg(ctypes.Structure):
    _fields_ = [("slot", u32), ("policy_id", u32), ("sbx_addr", u32), ("guest_ip", u32),
                ("gw_ip", u32), ("flags", u32), ("guest_mac", u8 * 6), ("gw_mac", u8 * 6)]


class NodeCfg(ctypes.Structure):
    _fields_ = [("pool_net", u32), ("pool_mask", u32), ("proxy_addr", u32),
                ("nat_port_lo", u16), ("nat_port_hi", u16), ("mss_max", u16), ("pad", u16), ("pad2", u32),
                ("proxy_ct_ttl_ns", u64)]


class UplinkCfg(ctypes.Structure):
    _fields_ = [("nat_ip", u32)]


class Lpm4Key(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("addr", u32)]


class LpmPolKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("policy_id", u32), ("addr", u32)]


class PortKey(ctypes.Structure):
    _fields_ = [("policy_id", u32), ("port", u16), ("pad", u16)]


class ProxyCtKey(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("guest_port", u16), ("proxy_port", u16), ("proto", u8), ("pad", u8 * 3)]


class Flow4(ctypes.Structure):
    _fields_ = [("src", u32), ("dst", u32), ("sport", u16), ("dport", u16), ("proto", u8), ("pad", u8 * 3)]


class NatOutVal(ctypes.Structure):
    _fields_ = [("nat_ip", u32), ("nat_port", u16), ("pad", u16)]


class NatInKey(ctypes.Structure):
    _fields_ = [("nat_ip", u32), ("remote", u32), ("nat_port", u16), ("remote_port", u16),
                ("proto", u8), ("pad", u8 * 3)]


class NatInVal(ctypes.Structure):
    _fields_ = [("orig_src", u32), ("orig_sport", u16), ("pad", u16)]


class SbxStats(ctypes.Structure):
    _fields_ = [("egress_bytes", u64), ("egress_packets", u64), ("ingress_bytes", u64),
                ("ingress_packets", u64), ("drops", u64 * 16)]


class U32(ctypes.Structure):
    _fields_ = [("v", u32)]


class U8(ctypes.Structure):
    _fields_ = [("v", u8)]


class U64(ctypes.Structure):
    _fields_ = [("v", u64)]


_MAP_TYPES = {
    "cvs_cfg": (U32, SbxCfg, False),
    "cvs_addr": (U32, U32, False),
    "cvs_node": (U32, NodeCfg, False),
    "cvs_uplink": (U32, UplinkCfg, False),
    "cvs_infra": (Lpm4Key, U8, False),
    "cvs_allow": (LpmPolKey, U8, False),
    "cvs_deny": (LpmPolKey, U8, False),
    "cvs_ports": (PortKey, U8, False),
    "cvs_proxy_ct": (ProxyCtKey, U64, False),
    "cvs_nat_out": (Flow4, NatOutVal, False),
    "cvs_nat_in": (NatInKey, NatInVal, False),
    "cvs_stats": (U32, SbxStats, True),
}


class DatapathError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadedIds:
    """Kernel ids of what this datapath loaded (tests check they are gone after teardown)."""

    programs: dict[str, int]
    maps: dict[str, int]


def ensure_bpffs(path: str) -> None:
    """Mount bpffs at ``path`` unless it already is (a DaemonSet mounts the host's)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1] == path and parts[2] == "bpf":
                return
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DatapathError(f"cannot mount bpffs at {path}: {proc.stderr.strip()}")


class Datapath:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._obj: libbpf.LoadedObject | None = None
        self.maps: dict[str, Map] = {}
        self._lock = threading.RLock()
        self._ipr: IPRoute | None = None  # open between load() and close()

    @property
    def _rtnl(self) -> IPRoute:
        """The netlink socket for tc; only open while the datapath is loaded."""
        if self._ipr is None:
            raise DatapathError("datapath is not loaded (no netlink socket)")
        return self._ipr

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Build if needed, load, pin (or re-adopt pinned) maps."""
        obj_path = str(build.ensure_object(self.settings.state_dir))
        ensure_bpffs(str(self.settings.bpffs))
        pin_dir = str(self.settings.pin_dir)
        fresh = not os.path.isdir(pin_dir)
        os.makedirs(pin_dir, exist_ok=True)
        try:
            try:
                self._obj = libbpf.load_object(obj_path, pin_dir)
            except libbpf.BpfError as e:
                if fresh:
                    raise
                # Pinned maps from an incompatible build: flows are lost, sandboxes are not
                # (the node network re-writes every sandbox from its records after load).
                log.warning("pinned maps not reusable, recreating", extra={"error": str(e)})
                self._unpin_all()
                fresh = True
                os.makedirs(pin_dir, exist_ok=True)
                self._obj = libbpf.load_object(obj_path, pin_dir)
            for name, (k, v, per_cpu) in _MAP_TYPES.items():
                self.maps[name] = Map(name, self._obj.maps[name], k, v, per_cpu)
            self._ipr = rtnl.iproute(self.settings.netns)
        except BaseException:
            # Do not leave pins of a load that failed (a verifier rejection, or no netlink).
            if fresh:
                if self._obj:
                    self._obj.close()
                    self._obj = None
                self._unpin_all()
            raise
        log.info("datapath loaded", extra={"object": obj_path, "pins": pin_dir})

    def close(self) -> None:
        """Release our fds; the attached programs and pinned maps stay (a restart re-adopts)."""
        with self._lock:
            if self._obj:
                self._obj.close()
                self._obj = None
            if self._ipr:
                self._ipr.close()
                self._ipr = None

    def destroy(self, interfaces: list[int]) -> None:
        """Detach from ``interfaces``, remove the pins, and close: nothing stays in the kernel."""
        with self._lock:
            for ifindex in interfaces:
                self.detach(ifindex)
            self.close()
            self._unpin_all()

    def _unpin_all(self) -> None:
        pin_dir = str(self.settings.pin_dir)
        if os.path.isdir(pin_dir):
            for name in os.listdir(pin_dir):
                os.unlink(os.path.join(pin_dir, name))
            os.rmdir(pin_dir)
        # Remove the empty parents we created (<bpffs>/cube), never the mount point itself.
        parent = os.path.dirname(pin_dir)
        while parent.startswith(str(self.settings.bpffs)) and parent != str(self.settings.bpffs):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def loaded_ids(self) -> LoadedIds:
        assert self._obj
        return LoadedIds(
            programs={n: libbpf.obj_id(fd) for n, fd in self._obj.programs.items()},
            maps={n: libbpf.obj_id(fd) for n, fd in self._obj.maps.items()},
        )

    # -- attach ----------------------------------------------------------------------------

    def _attach(self, ifindex: int, ingress: str, egress: str) -> None:
        assert self._obj and self._ipr
        with self._lock:
            try:
                self._ipr.tc("add", "clsact", ifindex)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            for parent, prog in ((TC_INGRESS, ingress), (TC_EGRESS, egress)):
                # replace: a restarted CubeVS swaps its new programs in without a gap.
                self._ipr.tc("replace-filter", "bpf", ifindex, ":1", fd=self._obj.programs[prog],
                             name=prog, parent=parent, classid=1, direct_action=True, prio=1,
                             protocol=0x0003)

    def attach_tap(self, ifindex: int) -> None:
        self._attach(ifindex, "cvs_tap_in", "cvs_tap_out")

    def attach_uplink(self, ifindex: int, nat_ip: ipaddress.IPv4Address) -> None:
        self.maps["cvs_uplink"].update(U32(ifindex), UplinkCfg(be32(nat_ip)))
        self._attach(ifindex, "cvs_up_in", "cvs_up_out")

    def detach(self, ifindex: int) -> None:
        with self._lock:
            try:
                self._rtnl.tc("del", "clsact", ifindex)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise
            if self.maps:
                self.maps["cvs_uplink"].delete(U32(ifindex))

    def attached_programs(self, ifindex: int) -> dict[str, str]:
        """{'ingress': name, 'egress': name} of the bpf filters on a device."""
        out: dict[str, str] = {}
        with self._lock:
            ipr = self._rtnl
            for parent, key in ((TC_INGRESS, "ingress"), (TC_EGRESS, "egress")):
                try:
                    msgs = ipr.get_filters(index=ifindex, parent=parent)
                except NetlinkError:
                    continue
                for m in msgs:
                    opts = m.get_attr("TCA_OPTIONS")
                    if opts is not None and opts.get_attr("TCA_BPF_NAME"):
                        out[key] = opts.get_attr("TCA_BPF_NAME")
        return out

    # -- node-wide configuration -----------------------------------------------------------

    def configure_node(self, infra: list[InfraRule], mss_max: int = 0) -> None:
        s = self.settings
        pool = s.pool
        cfg = NodeCfg(pool_net=be32(pool.network_address), pool_mask=be32(pool.netmask),
                      proxy_addr=be32(s.proxy_ip), nat_port_lo=s.nat_port_lo, nat_port_hi=s.nat_port_hi,
                      mss_max=mss_max, proxy_ct_ttl_ns=s.proxy_idle_timeout_s * 1_000_000_000)
        self.maps["cvs_node"].update(U32(0), cfg)
        m = self.maps["cvs_infra"]
        wanted = {(r.network.prefixlen, be32(r.network.network_address)): int(r.action) for r in infra}
        for k in m.keys():
            if (k.prefixlen, k.addr) not in wanted:
                m.delete(k)
        for (plen, addr), act in wanted.items():
            m.update(Lpm4Key(plen, addr), U8(act))

    # -- sandboxes -------------------------------------------------------------------------

    def bind(self, ifindex: int, slot: int, policy_id: int, all_ports: bool,
             address: ipaddress.IPv4Address, guest: GuestNetwork, reset_counters: bool = True) -> None:
        """Publish a sandbox on its tap (the programs drop everything on a tap until then)."""
        if reset_counters:
            self.maps["cvs_stats"].update(U32(slot), SbxStats())
        cfg = SbxCfg(slot=slot, policy_id=policy_id, sbx_addr=be32(address), guest_ip=be32(guest.ip),
                     gw_ip=be32(guest.gateway_ip), flags=CFG_ALL_PORTS if all_ports else 0)
        cfg.guest_mac[:] = list(mac_bytes(guest.mac))
        cfg.gw_mac[:] = list(mac_bytes(guest.gateway_mac))
        self.maps["cvs_addr"].update(U32(be32(address)), U32(ifindex))
        self.maps["cvs_cfg"].update(U32(ifindex), cfg)

    def switch_policy(self, ifindex: int, policy_id: int, all_ports: bool) -> None:
        """Point a bound tap at another (already installed) policy: one atomic map update."""
        m = self.maps["cvs_cfg"]
        cfg = m.lookup(U32(ifindex))
        if cfg is None:
            raise DatapathError(f"tap ifindex {ifindex} is not bound")
        cfg.policy_id = policy_id
        cfg.flags = (cfg.flags & ~CFG_ALL_PORTS) | (CFG_ALL_PORTS if all_ports else 0)
        m.update(U32(ifindex), cfg)

    def unbind(self, ifindex: int | None, address: ipaddress.IPv4Address) -> None:
        """Unpublish a sandbox and forget its flows (the address will serve another sandbox)."""
        if ifindex is not None:
            self.maps["cvs_cfg"].delete(U32(ifindex))
        self.maps["cvs_addr"].delete(U32(be32(address)))
        self.flush_flows(address, ifindex)

    def flush_flows(self, address: ipaddress.IPv4Address, ifindex: int | None = None) -> int:
        a = be32(address)
        n = 0
        out, inn, ct = self.maps["cvs_nat_out"], self.maps["cvs_nat_in"], self.maps["cvs_proxy_ct"]
        for k in out.keys():
            if k.src == a:
                n += out.delete(k)
        for k, v in list(inn.items()):
            if v.orig_src == a:
                n += inn.delete(k)
        if ifindex is not None:
            for k in ct.keys():
                if k.ifindex == ifindex:
                    n += ct.delete(k)
        return n

    def install_policy(self, policy_id: int, policy: CompiledPolicy) -> None:
        pid = be32(ipaddress.IPv4Address(policy_id))  # big-endian id: an exact LPM prefix
        for name, nets in (("cvs_allow", policy.allow_v4), ("cvs_deny", policy.deny_v4)):
            m = self.maps[name]
            for n in nets:
                m.update(LpmPolKey(32 + n.prefixlen, pid, be32(n.network_address)), U8(1))
        for port in policy.ports:
            self.maps["cvs_ports"].update(PortKey(policy_id, port, 0), U8(1))

    def remove_policy(self, policy_id: int) -> None:
        pid = be32(ipaddress.IPv4Address(policy_id))
        for name in ("cvs_allow", "cvs_deny"):
            m = self.maps[name]
            for k in m.keys():
                if k.policy_id == pid:
                    m.delete(k)
        m = self.maps["cvs_ports"]
        for k in m.keys():
            if k.policy_id == policy_id:
                m.delete(k)

    def policy_ids(self) -> set[int]:
        ids = {int(from_be32(k.policy_id)) for n in ("cvs_allow", "cvs_deny") for k in self.maps[n].keys()}
        ids |= {k.policy_id for k in self.maps["cvs_ports"].keys()}
        return ids

    def bound(self) -> dict[int, SbxCfg]:
        return {k.v: v for k, v in self.maps["cvs_cfg"].items()}

    def bound_addresses(self) -> dict[ipaddress.IPv4Address, int]:
        return {from_be32(k.v): v.v for k, v in self.maps["cvs_addr"].items()}

    def counters(self, slot: int) -> SandboxCounters:
        v = self.maps["cvs_stats"].lookup(U32(slot))
        return sum_per_cpu(v) if v is not None else SandboxCounters()

    def nat_flows(self) -> int:
        return sum(1 for _ in self.maps["cvs_nat_out"].keys())
