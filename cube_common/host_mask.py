"""E2B's ``network.maskRequestHost``: the Host a sandbox's own servers see on proxied requests.

A sandbox created with a mask gets every proxied request to its ports, envd's (49983) excepted,
with the Host header replaced by the mask, ``${PORT}`` in it replaced by the guest port the
request targets (``localhost:${PORT}`` → ``localhost:3000``), as E2B's proxy does; so a guest
server that checks Host (a dev server allowing only ``localhost:3000``) accepts them.

The API checks a mask on create, the master again, and the proxy once more before a mask reaches
Envoy (a bad route part makes Envoy refuse the whole route configuration), all with ``check``.

Invariants:
- A valid mask is ASCII letters, digits, ``-``, ``_`` and ``.``, and ``${PORT}``, as a host name
  (no empty label) with an optional ``:port`` that is ``${PORT}`` or 1-65535: no space, control,
  CR/LF, ``%`` or other byte that could not travel in a header or an Envoy format string, so
  expanding it with any port gives a Host value. IPv6 literals are not accepted.
- At most ``MAX_LEN`` characters; expanding only shortens it (7 characters become at most 5).
- The empty mask means none (E2B reads ``""`` so too).
- ``PATTERN`` (the OpenAPI document's) accepts exactly what ``check`` accepts.
"""

from __future__ import annotations

import re

PORT_PLACEHOLDER = "${PORT}"
MAX_LEN = 255

_PART = r"(?:[A-Za-z0-9_-]|\$\{PORT\})+"
_PORT = r"(?:\$\{PORT\}|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_MASK = f"{_PART}(?:\\.{_PART})*(?::{_PORT})?"
_MASK_RE = re.compile(_MASK)
# For JSON Schema: the empty mask too. ASCII only, so ECMA and Python regexes read it alike.
PATTERN = f"^(?:{_MASK})?$"


class InvalidHostMask(ValueError):
    pass


def check(mask: str) -> str:
    """``mask`` itself when it is a valid mask (or empty), else InvalidHostMask saying why."""
    if len(mask) > MAX_LEN:
        raise InvalidHostMask(f"maskRequestHost is {len(mask)} characters; at most {MAX_LEN}")
    if mask and not _MASK_RE.fullmatch(mask):
        raise InvalidHostMask(
            f"maskRequestHost {mask[:100]!r} is not a host or host:port (ASCII letters, digits, '-', '_' "
            f"and '.', with {PORT_PLACEHOLDER} for the port the request targets)")
    return mask


def expand(mask: str, port: int) -> str:
    """The Host for a request to guest ``port``."""
    return mask.replace(PORT_PLACEHOLDER, str(port))
