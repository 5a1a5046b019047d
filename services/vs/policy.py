"""Egress policy: E2B network options, their validation, and the node's infrastructure rules.

E2B semantics (https://e2b.dev/docs/network/internet-access):
- ``allow_internet_access=False`` is the same as ``deny_out=["0.0.0.0/0"]``;
- ``allow_out`` wins over ``deny_out`` whatever the prefix lengths;
- entries are IPs or CIDRs. (E2B also accepts domain names in allow_out, filtered by HTTP Host /
  TLS SNI; this datapath does not inspect payloads, so names are refused with a clear error.)

Above the sandbox's own lists sit the node's rules, which a sandbox cannot override:
- always denied: this node (any local address), other sandboxes, and the ``HARD_DENY`` ranges
  (link-local incl. the 169.254.169.254 metadata address, loopback, "this network", multicast,
  reserved/broadcast);
- denied unless the operator allows a CIDR in configuration: ``DEFAULT_DENY`` (RFC 1918, CGNAT,
  IETF/benchmark ranges).
IPv6 ranges are validated and stored, but the datapath carries no IPv6 at all yet (the guest
identity is IPv4 only), so every IPv6 packet from a sandbox is dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeAlias

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

HARD_DENY: tuple[str, ...] = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
)
DEFAULT_DENY: tuple[str, ...] = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "fc00::/7",
)

_HOSTNAME_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\.?$", re.I)


class PolicyError(ValueError):
    """Invalid network options; the message says which entry and why."""


class InfraAction(IntEnum):
    """Values of the cvs_infra LPM trie (keep in sync with the C program)."""

    ALLOW = 1
    DENY = 2


@dataclass(frozen=True)
class NetworkPolicy:
    """The E2B network options of one sandbox, as given."""

    allow_internet_access: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    # Guest ports (TCP and UDP) that the proxy may reach.
    exposed_ports: tuple[int, ...] = ()
    # Every guest port is exposed to the proxy (E2B exposes any port through its proxy).
    expose_all_ports: bool = False


@dataclass(frozen=True)
class CompiledPolicy:
    """A validated policy in the form the datapath installs."""

    allow_v4: tuple[ipaddress.IPv4Network, ...]
    deny_v4: tuple[ipaddress.IPv4Network, ...]
    allow_v6: tuple[ipaddress.IPv6Network, ...]
    deny_v6: tuple[ipaddress.IPv6Network, ...]
    ports: frozenset[int]
    all_ports: bool
    source: NetworkPolicy = field(compare=False)


@dataclass(frozen=True)
class Limits:
    max_rules: int = 128
    max_ports: int = 256


def parse_cidr(entry: str, where: str) -> IPNetwork:
    """An IP or CIDR; host bits are masked off like a firewall would ("10.1.2.3/8" = 10/8)."""
    if not isinstance(entry, str):
        raise PolicyError(f"{where}: entry {entry!r} is not a string")
    text = entry.strip()
    if not text:
        raise PolicyError(f"{where}: empty entry")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    if "/" not in text and _HOSTNAME_RE.match(text):
        raise PolicyError(
            f"{where}: {text!r} is a domain name; this node filters by IP/CIDR only, "
            "give addresses or CIDR blocks")
    raise PolicyError(f"{where}: {text!r} is not a valid IP address or CIDR block")


def _parse_list(entries: Iterable[str], where: str, limit: int) -> list[IPNetwork]:
    entries = list(entries)
    if len(entries) > limit:
        raise PolicyError(f"{where}: {len(entries)} entries, at most {limit} are allowed")
    out: list[IPNetwork] = []
    for e in entries:
        n = parse_cidr(e, where)
        if n not in out:
            out.append(n)
    return out


def compile_policy(policy: NetworkPolicy, limits: Limits = Limits()) -> CompiledPolicy:
    allow = _parse_list(policy.allow_out, "allow_out", limits.max_rules)
    deny = _parse_list(policy.deny_out, "deny_out", limits.max_rules)
    if not policy.allow_internet_access:
        for everything in (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")):
            if everything not in deny:
                deny.append(everything)
    ports = list(policy.exposed_ports)
    if len(ports) > limits.max_ports:
        raise PolicyError(f"exposed_ports: {len(ports)} ports, at most {limits.max_ports} are allowed")
    for p in ports:
        if not isinstance(p, int) or isinstance(p, bool) or not (1 <= p <= 65535):
            raise PolicyError(f"exposed_ports: {p!r} is not a port number (1-65535)")
    v4 = lambda ns: tuple(n for n in ns if n.version == 4)  # noqa: E731
    v6 = lambda ns: tuple(n for n in ns if n.version == 6)  # noqa: E731
    return CompiledPolicy(
        allow_v4=v4(allow), deny_v4=v4(deny), allow_v6=v6(allow), deny_v6=v6(deny),
        ports=frozenset(ports), all_ports=policy.expose_all_ports, source=policy,
    )


@dataclass(frozen=True)
class InfraRule:
    network: ipaddress.IPv4Network
    action: InfraAction


def infra_rules(allow_cidrs: Iterable[str] = (), deny_cidrs: Iterable[str] = ()) -> list[InfraRule]:
    """The node-wide IPv4 rules for the cvs_infra LPM trie.

    Longest prefix wins there, so an operator's allowed CIDR inside a default-deny range is an
    exception to it, and one that covers a whole default range replaces it. An allowed CIDR that
    touches a hard-denied range is a configuration error.
    """
    allows = [parse_cidr(c, "operator allow_cidrs") for c in allow_cidrs]
    denies = [parse_cidr(c, "operator deny_cidrs") for c in deny_cidrs]
    hard = [ipaddress.ip_network(c) for c in HARD_DENY]
    for a in allows:
        for h in hard:
            if a.version == h.version and a.overlaps(h):
                raise PolicyError(f"operator allow_cidrs: {a} overlaps {h}, which is always denied")
    rules: dict[ipaddress.IPv4Network, InfraAction] = {}
    for c in (*DEFAULT_DENY, *HARD_DENY):
        n = ipaddress.ip_network(c)
        if n.version == 4:
            rules[n] = InfraAction.DENY
    for d in denies:
        if d.version == 4:
            rules[d] = InfraAction.DENY
    for a in allows:
        if a.version != 4:
            continue
        # Only meaningful where something denies it; elsewhere traffic is allowed anyway.
        if any(a.subnet_of(n) or n.subnet_of(a) for n, act in rules.items() if act == InfraAction.DENY):
            for n in [n for n, act in rules.items() if act == InfraAction.DENY and n.subnet_of(a)
                      and not any(n.overlaps(h) for h in hard if h.version == 4)]:
                del rules[n]
            rules[a] = InfraAction.ALLOW
    return [InfraRule(n, act) for n, act in sorted(rules.items(), key=lambda kv: (kv[0].prefixlen, kv[0]))]
