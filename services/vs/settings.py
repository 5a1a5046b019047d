"""CubeVS settings: one typed object, read from the environment (``CUBE_VS_*``) or the CLI."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

# The sandbox address pool. 198.18.0.0/15 is reserved for benchmarking (RFC 2544), so it is
# neither routed on the internet nor used by operators' LANs; its upper half is used because
# some tools (e.g. fake-IP DNS proxies) take 198.18.0.0/16.
DEFAULT_POOL_CIDR = "198.19.0.0/16"


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    # Where compiled BPF objects and the allocation state live.
    state_dir: Path = Path("/var/lib/cube")
    # bpffs mount point; maps are pinned in <bpffs>/<pin_subdir> so a restart re-adopts them.
    bpffs: Path = Path("/sys/fs/bpf")
    pin_subdir: str = "cube/vs"
    # gRPC endpoint (grpc address syntax: "unix:///path" or "host:port").
    listen: str = "unix:///run/cube/vs.sock"
    # Node-local pool for the per-sandbox host-side addresses and the proxy source address.
    pool_cidr: str = DEFAULT_POOL_CIDR
    # The proxy connects to sandboxes from this address; None = first host of the pool.
    proxy_addr: str | None = None
    # Device that holds the proxy address ("lo" works everywhere; another name is created as a
    # dummy device where the kernel has them).
    proxy_dev: str = "lo"
    # Tap names are <tap_prefix><6 hex>; reconcile treats every link with this prefix as ours.
    tap_prefix: str = "cvs"
    # Warm taps kept ready so that Allocate does not create one.
    pool_size: int = 4
    max_sandboxes: int = 1024
    # Devices whose egress is NATed to their address; empty = the devices of IPv4 default routes.
    uplinks: tuple[str, ...] = ()
    # Operator exceptions to the default-deny ranges (e.g. a LAN service sandboxes may use).
    allow_cidrs: tuple[str, ...] = ()
    # Extra ranges to deny for every sandbox.
    deny_cidrs: tuple[str, ...] = ()
    # NAT source ports on the uplinks: outside the kernel's default ephemeral range
    # (32768-60999) so NATed flows never collide with the node's own connections.
    nat_port_lo: int = 61000
    nat_port_hi: int = 65535
    # Per-sandbox limits on policy size.
    max_rules: int = 128
    max_ports: int = 256
    # Idle time after which a proxy connection no longer admits replies (> Envoy's 1 h default).
    proxy_idle_timeout_s: int = 3900
    # Largest TCP MSS sandboxes may use: 0 = the smallest uplink MTU - 40 (set it lower when
    # the path beyond the uplink has a smaller MTU), -1 = no clamping.
    mss_clamp: int = 0
    # Run the node datapath inside this named network namespace (tests, benchmarks).
    netns: str | None = None
    log_level: str = "INFO"

    # Extra env aliases: CUBE_STATE_DIR is shared by all Cube services.
    _ENV_ALIASES = {"state_dir": ("CUBE_STATE_DIR",)}

    @property
    def pin_dir(self) -> Path:
        return self.bpffs / self.pin_subdir

    @property
    def pool(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pool_cidr)

    @property
    def proxy_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.proxy_addr) if self.proxy_addr else self.pool.network_address + 1

    def validate(self) -> "Settings":
        pool = self.pool
        if pool.prefixlen > 30:
            raise ValueError(f"pool_cidr {self.pool_cidr} is too small")
        if self.proxy_ip not in pool:
            raise ValueError(f"proxy address {self.proxy_ip} is not in pool {pool}")
        if not (1 <= self.nat_port_lo <= self.nat_port_hi <= 65535):
            raise ValueError(f"bad NAT port range {self.nat_port_lo}-{self.nat_port_hi}")
        if len(self.tap_prefix) > 8 or not self.tap_prefix.isalnum():
            raise ValueError("tap_prefix must be 1-8 alphanumerics (tap names are <= 15 chars)")
        if not (1 <= self.max_sandboxes <= 4000):
            raise ValueError("max_sandboxes must be 1..4000 (the BPF maps hold 4096 taps)")
        return self

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        kw: dict = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            names = (f"CUBE_VS_{f.name.upper()}", *cls._ENV_ALIASES.get(f.name, ()))
            raw = next((env[n] for n in names if n in env), None)
            if raw is not None:
                kw[f.name] = _convert(f.type, raw)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def with_overrides(self, **kw) -> "Settings":
        return replace(self, **kw).validate()


def _convert(type_name, raw: str):
    t = str(type_name)
    if "tuple" in t:
        return _csv(raw)
    if t == "int":
        return int(raw)
    if t == "Path":
        return Path(raw)
    if "None" in t and raw == "":
        return None
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags mirror the env variables: --pool-cidr == CUBE_VS_POOL_CIDR."""
    for f in fields(Settings):
        if f.name.startswith("_"):
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"(env CUBE_VS_{f.name.upper()})")


def from_args(ns: argparse.Namespace) -> Settings:
    overrides = {}
    for f in fields(Settings):
        v = getattr(ns, f.name, None)
        if v is not None:
            overrides[f.name] = _convert(f.type, v)
    return Settings.from_env(**overrides)


__all__ = ["Settings", "DEFAULT_POOL_CIDR", "add_arguments", "from_args"]
