"""Where a registry pull may connect: the public internet, not the node's own networks.

A tenant names the image, so without a check a template build is a way to make the node send
requests to its loopback services, its private network or the cloud's metadata service
(169.254.169.254), and to read their answers back in error messages. Every TCP connection the
registry client opens (the registry, every redirect, the bearer token realm) goes through
`GuardedBackend.connect_tcp`, which resolves the host itself, drops every address in a blocked
range, and connects to one of the remaining addresses itself: the address checked is the address
connected to, so a DNS answer that changes between a check and a connect (rebinding) cannot
switch it. Environment proxies are not used (a proxy would make the check meaningless).

Blocked: 0.0.0.0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, ::, ::1,
fc00::/7, fe80::/10, multicast, and everything else Python's `ipaddress` does not call global
(reserved, documentation and benchmark ranges); IPv4 addresses inside IPv6 (mapped, NAT64
64:ff9b::/96, 6to4) are judged by the IPv4 address.

`RegistryAccess` is the policy of one pull:
- `allowlist`: registry hosts the operator trusts despite their addresses (`host` for any port,
  `host:port` for one; `[::1]:5000` for IPv6), matched against the host name or literal in the
  URL being connected to (the image's registry, a redirect target or a token realm);
- `allow_private`: skip the check entirely. The cubelet sets it for an operator's build
  (cubemastercli, deploy): operators may build from a registry on loopback or their LAN. A build
  a team asked for through the API never gets it.

Plain HTTP: a reference is fetched over HTTPS unless its build says otherwise (`insecureRegistry`,
an operator's `--insecure-registry`) or its registry is one the operator lists in the cubelet's
`plain_http_registries` (Docker's "insecure registries": a registry on a trusted network without a
certificate; the E2B SDK's builds have no flag for it). `registry_listed` matches those entries.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from .errors import RegistryNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space"),
        ("169.254.0.0/16", "link-local, cloud metadata"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
    ))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(ip: IPAddress) -> str | None:
    """Why a registry pull may not connect to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return refusal(embedded)
    for net, why in _BLOCKED:
        if ip in net:
            return why
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global:
        return "not a global address"
    return None


def _split_host_port(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower().rstrip(".")
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address
        host, port = entry, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad registry allowlist entry {entry!r} (want host, host:port or [v6]:port)")
    return host, int(port) if port else None


@dataclass(frozen=True)
class RegistryAccess:
    """The policy of one pull (see the module docstring)."""

    allow_private: bool = False
    allowlist: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for entry in self.allowlist:
            _split_host_port(entry)  # fail early on a malformed entry

    def allows_host(self, host: str, port: int) -> bool:
        """Whether `host` (a name or an IP literal, as in the URL) is allowlisted for `port`."""
        return listed(self.allowlist, host, port)


def listed(entries: Iterable[str], host: str, port: int | None) -> bool:
    """Whether `host` (a name or an IP literal, as in a URL) on `port` matches one of `entries`
    (`host` for any port, `host:port` for one; a `port` of None, a registry named without
    one, matches only port-less entries)."""
    host = host.strip("[]").lower().rstrip(".")
    for entry in entries:
        h, p = _split_host_port(entry)
        if h == host and (p is None or p == port):
            return True
    return False


def registry_listed(entries: Iterable[str], registry: str) -> bool:
    """Whether an image reference's registry (`host`, `host:port`, `[v6]:port`) matches `entries`."""
    host, port = _split_host_port(registry)
    return listed(entries, host, port)


def parse_allowlist(entries: Iterable[str]) -> tuple[str, ...]:
    """Validated allowlist entries (ValueError names a bad one)."""
    out = tuple(e.strip() for e in entries if e.strip())
    for e in out:
        _split_host_port(e)
    return out


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving and checking every host before connecting."""

    def __init__(self, access: RegistryAccess) -> None:
        self._access = access
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        if self._access.allow_private or self._access.allows_host(host, port):
            return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                 socket_options=socket_options)
        addresses, refused = await _resolve(host, port, timeout)
        if not addresses:
            raise RegistryNotAllowed(
                f"{host}:{port} resolves only to addresses this node does not pull from "
                f"({', '.join(refused)}); an operator can allow this registry "
                "(cubelet setting registry_allowlist)")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None  # addresses is not empty
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise RegistryNotAllowed("registry pulls do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, timeout: float | None) -> tuple[list[str], list[str]]:
    """(addresses we may connect to, "address (why not)" for the others), in resolver order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout)
    except (OSError, TimeoutError) as e:
        raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from None
    allowed: list[str] = []
    refused: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # a link-local IPv6 scope
        ip = ipaddress.ip_address(text)
        why = refusal(ip)
        if why is None:
            if text not in allowed:
                allowed.append(text)
        elif f"{text} ({why})" not in refused:
            refused.append(f"{text} ({why})")
    return allowed, refused


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a `GuardedBackend`. Only the connection pool differs from
    `httpx.AsyncHTTPTransport` (certificate checks, SSL_CERT_FILE, HTTP/1.1 are the same), so the
    base class's request handling is reused and its own pool is never built."""

    def __init__(self, access: RegistryAccess) -> None:  # no super().__init__(): it builds a pool
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=GuardedBackend(access))
