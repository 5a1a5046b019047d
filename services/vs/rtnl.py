"""The netlink (rtnl) socket CubeVS talks to the kernel through, bound to the namespace it manages.

CubeVS normally manages the namespace it runs in (``netns=None``); tests and benchmarks run a whole
node datapath inside a namespace they created. Running code inside a namespace is
``cube_common.netns``; this module only opens the netlink socket, which pyroute2 binds itself.
"""
from __future__ import annotations

from pyroute2 import IPRoute


def iproute(netns: str | None) -> IPRoute:
    """A netlink (rtnl) socket bound to ``netns`` (None: the namespace we are in)."""
    # pyroute2 serves another namespace through a forked helper process; only pay for it when asked.
    return IPRoute(netns=netns) if netns else IPRoute()
