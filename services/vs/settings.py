"""CubeVS settings: one typed object from the shared loader (``CUBE_VS_*``, flags, and the shared
``CUBE_STATE_DIR``). ``cube-vs --help`` lists them all."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.listen import MTLS_FIX, UNAUTHENTICATED_GRPC, refuse_public
from cube_common.settings import Settings as _Base, SettingsError, check_listen, setting, shared

# The sandbox address pool. 198.18.0.0/15 is reserved for benchmarking (RFC 2544), so it is
# neither routed on the internet nor used by operators' LANs; its upper half is used because
# some tools (e.g. fake-IP DNS proxies) take 198.18.0.0/16.
DEFAULT_POOL_CIDR = "198.19.0.0/16"


@dataclass(frozen=True)
class Settings(_Base):
    ENV_PREFIX: ClassVar[str] = "CUBE_VS_"
    PROG: ClassVar[str] = "cube-vs"
    DESCRIPTION: ClassVar[str] = "Cube per-node network service (eBPF datapath)"

    state_dir: Path = shared.state_dir()
    # Maps are pinned in <bpffs>/<pin_subdir> so a restart re-adopts them.
    bpffs: Path = setting(Path("/sys/fs/bpf"), "bpffs mount point")
    pin_subdir: str = setting("cube/vs", "where under bpffs the maps are pinned")
    listen: str = setting(defaults.VS_ADDR, "gRPC endpoint (unix:///path, or host:port: off loopback only "
                          "with mtls_dir or --insecure-public)")
    pool_cidr: str = setting(DEFAULT_POOL_CIDR, "node-local pool for the per-sandbox host-side addresses "
                             "and the proxy source address")
    proxy_addr: str | None = setting(None, "the proxy connects to sandboxes from this address "
                                     "(default: the first host of the pool)")
    # "lo" works everywhere; another name is created as a dummy device where the kernel has them.
    proxy_dev: str = setting("lo", "device that holds the proxy address")
    # Reconcile treats every link with this prefix as ours.
    tap_prefix: str = setting("cvs", "tap names are <tap_prefix><6 hex>")
    pool_size: int = setting(4, "warm taps kept ready so that Allocate does not create one")
    max_sandboxes: int = setting(1024, "most sandboxes this node's datapath holds")
    uplinks: tuple[str, ...] = setting((), "devices whose egress is NATed to their address "
                                       "(default: the devices of IPv4 default routes)")
    allow_cidrs: tuple[str, ...] = setting((), "operator exceptions to the default-deny ranges "
                                           "(e.g. a LAN service sandboxes may use)")
    deny_cidrs: tuple[str, ...] = setting((), "extra ranges to deny for every sandbox")
    # Outside the kernel's default ephemeral range (32768-60999) so NATed flows never collide
    # with the node's own connections.
    nat_port_lo: int = setting(61000, "lowest NAT source port on the uplinks")
    nat_port_hi: int = setting(65535, "highest NAT source port on the uplinks")
    max_rules: int = setting(128, "per-sandbox limit on egress rules")
    max_ports: int = setting(256, "per-sandbox limit on exposed ports")
    # Longer than Envoy's 1 h default idle timeout.
    proxy_idle_timeout_s: int = setting(3900, "idle time after which a proxy connection no longer "
                                        "admits replies")
    # Set it lower when the path beyond the uplink has a smaller MTU.
    mss_clamp: int = setting(0, "largest TCP MSS sandboxes may use: 0 = the smallest uplink MTU - 40, "
                             "-1 = no clamping")
    netns: str | None = setting(None, "run the node datapath inside this named network namespace "
                                "(tests, benchmarks)")
    mtls_dir: Path | None = shared.mtls_dir()
    insecure_public: bool = shared.insecure_public()
    log_level: str = shared.log_level()
    # Per-sandbox drop counters among its figures: the sandbox ids of this node (no tokens).
    metrics_listen: str = shared.metrics_listen(defaults.VS_METRICS_PORT)

    @property
    def pin_dir(self) -> Path:
        return self.bpffs / self.pin_subdir

    @property
    def pool(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pool_cidr)

    @property
    def proxy_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.proxy_addr) if self.proxy_addr else self.pool.network_address + 1

    def validate(self) -> Settings:
        if self.mtls_dir is None:
            refuse_public(self, "listen", f"{UNAUTHENTICATED_GRPC} this node's sandbox network (taps, egress "
                          "policy)", MTLS_FIX)
        check_listen("metrics_listen", self.metrics_listen)
        pool = self.pool
        if pool.prefixlen > 30:
            raise SettingsError(f"pool_cidr {self.pool_cidr} is too small")
        if self.proxy_ip not in pool:
            raise SettingsError(f"proxy address {self.proxy_ip} is not in pool {pool}")
        if not (1 <= self.nat_port_lo <= self.nat_port_hi <= 65535):
            raise SettingsError(f"bad NAT port range {self.nat_port_lo}-{self.nat_port_hi}")
        if len(self.tap_prefix) > 8 or not self.tap_prefix.isalnum():
            raise SettingsError("tap_prefix must be 1-8 alphanumerics (tap names are <= 15 chars)")
        if not (1 <= self.max_sandboxes <= 4000):
            raise SettingsError("max_sandboxes must be 1..4000 (the BPF maps hold 4096 taps)")
        return self


__all__ = ["DEFAULT_POOL_CIDR", "Settings"]
