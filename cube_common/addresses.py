"""``host:port`` text to a (host, port) pair: the one parser of network addresses in the tree.

Forms: ``host:port``, ``[v6]:port``, and, when the caller names a default port, a bare host
(``localhost``, ``10.0.0.5``, ``::1``, ``[::1]``). IPv6 addresses with a port must be bracketed,
so ``a:b:1`` is not an address. The host comes back without brackets. Standard library only: the
guest agent ships ``cube_common`` too.
"""

from __future__ import annotations


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of ``text``; ValueError when it is malformed, its port is missing (and no
    default is given) or outside 0-65535."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare host, or a bare IPv6 address (several colons)
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: a port is required (host:port)")
        port = default_port
    elif port_text.isdigit():
        port = int(port_text)
    else:
        raise ValueError(f"bad port in {text!r}")
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"bad address {text!r}")
    return host, port
