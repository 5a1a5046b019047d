"""Teams: who a call to the master acts for. The one place that names the local team and the
gRPC metadata that carries the caller from cube-api to the master.

Invariants:
- Every API key belongs to a team, and what its holder creates belongs to that team.
- ``LOCAL_TEAM`` always exists. With auth off every request acts for it (as its admin: keyless
  use is the node owner's, on loopback), and a record written before teams existed (no team id)
  belongs to it.
- cube-api sends ``TEAM_METADATA`` and ``ROLE_METADATA`` on every call it makes for a request
  (services/api/master_client.py); the master reads them in one place (services/master/caller.py).
  A call without them is an operator's (``OPERATOR``): no team, admin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOCAL_TEAM = "local"

# gRPC metadata keys (lowercase, as gRPC requires) and the values of the role.
TEAM_METADATA = "cube-team"
ROLE_METADATA = "cube-role"
ROLE_USER = "user"
ROLE_ADMIN = "admin"

# On a cubelet's BuildTemplate: the master relays an operator's build (cubemastercli), which may
# name local image paths and pull from any registry; a call without it is a team's build
# (services/master/builds.py writes it, services/cubelet/templates.py reads it).
BUILD_ORIGIN_METADATA = "cube-build-origin"
BUILD_ORIGIN_OPERATOR = "operator"

# What every API key looks like: ``e2b_`` + 40 lowercase hex (the shape every E2B SDK accepts).
API_KEY_RE = re.compile(r"^e2b_[0-9a-f]{40}\Z")

# A team id is an etcd key segment and a word an operator types: no slashes, nothing odd.
TEAM_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")


@dataclass(frozen=True)
class Caller:
    """Who a call acts for. ``team_id`` empty: an operator, acting for the cluster rather than a
    team (what it creates is public, or the local team's where a record needs a team)."""

    team_id: str
    admin: bool

    @property
    def role(self) -> str:
        return ROLE_ADMIN if self.admin else ROLE_USER

    def sees(self, owner_team: str) -> bool:
        """May this caller see (and act on) a record owned by ``owner_team``?"""
        return self.admin or owner_team == self.team_id


OPERATOR = Caller(team_id="", admin=True)
# What every request acts as when cube-api runs with auth off.
LOCAL_ADMIN = Caller(team_id=LOCAL_TEAM, admin=True)
