"""E2B's ``network.httpsPorts``: guest ports whose servers speak TLS themselves.

The client's URL to such a port is HTTPS as to any other (the proxy terminates it); what changes is
the last hop: the owning node's proxy connects to the guest port over TLS, without checking the
guest's certificate (a sandbox's server has no certificate the host could check, so self-signed
ones must work), and sends the request inside it.

The API checks the list on create, the master again, and the proxy once more before it reaches
Envoy, all with ``check``.

Invariants:
- A valid list holds at most ``MAX_PORTS`` ports, each 1-65535 and never envd's (49983: the host
  talks to the agent in plain HTTP, and the E2B API refuses it too).
- ``check`` returns the ports sorted and without repeats: the form records and routes keep.
"""

from __future__ import annotations

from collections.abc import Iterable

from cube_common.envd import ENVD_PORT

MAX_PORTS = 64


class InvalidHttpsPorts(ValueError):
    pass


def check(ports: Iterable[int]) -> list[int]:
    out = sorted(set(ports))
    if len(out) > MAX_PORTS:
        raise InvalidHttpsPorts(f"'httpsPorts' lists more than {MAX_PORTS} ports")
    for p in out:
        if not 1 <= p <= 65535:
            raise InvalidHttpsPorts(f"'httpsPorts' entry {p} is not a port (1-65535)")
        if p == ENVD_PORT:
            raise InvalidHttpsPorts(f"'httpsPorts' cannot list envd's port ({ENVD_PORT})")
    return out
