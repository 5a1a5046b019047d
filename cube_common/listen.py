"""Whether a listen address is reachable only from this machine, and the one rule for listeners
that are not.

Every Cube listener defaults to loopback (``defaults``). A service whose callers are not
authenticated there (the API with auth off; the gRPC services without mutual TLS; the proxy's
resumer and admin) refuses at start-up to listen anywhere else unless the
operator says ``--insecure-public``. Each service's settings ``validate()`` calls ``refuse_public``
for such a setting, so the refusal is a ``SettingsError`` naming the setting, raised before anything
binds.

Address forms understood: ``unix:PATH``, ``unix://PATH``, ``unix-abstract:NAME`` (gRPC's),
``host:port``, ``[v6]:port``, and a bare host (``127.0.0.1``, ``::1``, ``localhost``, as the API's
``--host`` takes).

Invariants:
- Local means a unix socket, or a host every address of which is loopback: an IP in 127.0.0.0/8 or
  ``::1`` (IPv4-mapped ``::ffff:127.x`` too), or a name that resolves, now, only to such addresses.
- Anything else is public: an empty host and the wildcards (``0.0.0.0``, ``::``) bind every
  interface; a name that does not resolve or resolves to one non-loopback address is not known to
  be local, and is treated as public (the safe answer).
- Standard library only: the guest agent ships ``cube_common`` too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from cube_common.addresses import split_host_port
from cube_common.settings import Settings, SettingsError

FLAG = "--insecure-public"
FIELD = "insecure_public"

# Why the gRPC services (master, cubelet, CubeVS over TCP) may not listen off loopback without
# mutual TLS, and the way out that keeps them safe.
UNAUTHENTICATED_GRPC = "without mutual TLS its gRPC API authenticates no caller: anyone who reaches it controls"
MTLS_FIX = "give it a TLS directory (mtls_dir; python -m deploy.pki issues one)"

_LOCAL_SCHEMES = ("unix:", "unix-abstract:")


def host_of(address: str) -> str | None:
    """The host part of a listen address; None for a unix socket (which has none)."""
    text = address.strip()
    if text.startswith(_LOCAL_SCHEMES):
        return None
    try:
        return split_host_port(text, default_port=0)[0]
    except ValueError:
        return text  # malformed: judged whole, which no loopback check accepts


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address (see the invariants)."""
    host = host.strip()
    if not host:
        return False
    try:
        return _loopback_ip(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(_loopback_ip(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses)


def is_local(address: str) -> bool:
    """True when only this machine can reach ``address``: a unix socket or a loopback host."""
    host = host_of(address)
    return host is None or is_loopback_host(host)


def refuse_public(settings: Settings, name: str, why: str, fix: str = "") -> None:
    """Raise SettingsError unless every address in ``settings.<name>`` is local or the settings
    say ``insecure_public``. ``why`` completes "... is not a loopback address and ...": what an
    unguarded caller could do there; ``fix`` is another way out than loopback or the flag. The
    setting's value may be a str, anything whose ``str()`` is an address (an endpoint), or a tuple
    of either."""
    if getattr(settings, FIELD):
        return
    value = getattr(settings, name)
    for address in _addresses(value):
        if not is_local(address):
            raise SettingsError(
                f"{name}={address!r} is not a loopback address and {why}. Listen on loopback "
                f"(127.0.0.1, ::1), {fix + ', ' if fix else ''}or pass {FLAG} "
                f"({_env_name(settings)}=true) to expose it anyway")


def _addresses(value: Any) -> Iterable[str]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [str(v) for v in items]


def _env_name(settings: Settings) -> str:
    f = next(f for f in dataclasses.fields(settings) if f.name == FIELD)
    return type(settings).env_names(f)[0]


def _loopback_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
