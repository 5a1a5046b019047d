"""Who a call acts for: the one place the master reads the caller from a call's metadata.

cube-api authenticates the API key and names, on every call it makes for a request, the key's
team and role in the gRPC metadata (``cube-team``, ``cube-role``; cube_common.teams). The master
scopes what the call sees and may change by that caller.

A call with neither key comes from an operator or a component acting for the cluster
(cubemastercli, sdk.client, deploy.bootstrap, the proxy's resumer, cube-api itself validating a
key) and acts as admin, for no team (``OPERATOR``). This is the
interim rule: the master listens on loopback by default, so only the node's own processes reach
it. Once the mTLS part of issue 11 gives every component a certificate, the API's certificate is
what allows a call to act for a team, and an operator's certificate what allows acting as admin;
until then anyone who can reach the master's port can claim any caller.

A call with only one of the keys, a repeated key, or a value of the wrong shape is refused
(UNAUTHENTICATED): a half-formed identity is never read as an operator's.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from cube_common.teams import OPERATOR, ROLE_ADMIN, ROLE_METADATA, ROLE_USER, TEAM_ID_RE, TEAM_METADATA, Caller
from services.master import errors


def parse(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
    """The caller named by a call's invocation metadata (pairs of key and value)."""
    seen: dict[str, list[str]] = {TEAM_METADATA: [], ROLE_METADATA: []}
    for key, value in metadata or ():
        k = key.lower()
        if k in seen:
            seen[k].append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    teams, roles = seen[TEAM_METADATA], seen[ROLE_METADATA]
    if not teams and not roles:
        return OPERATOR
    if len(teams) != 1 or len(roles) != 1:
        raise errors.Unauthenticated(f"malformed caller: want one {TEAM_METADATA} and one {ROLE_METADATA}")
    team, role = teams[0], roles[0]
    if not TEAM_ID_RE.match(team):
        raise errors.Unauthenticated(f"malformed caller: invalid team id {team!r}")
    if role not in (ROLE_USER, ROLE_ADMIN):
        raise errors.Unauthenticated(f"malformed caller: invalid role {role!r} (want {ROLE_USER} or {ROLE_ADMIN})")
    return Caller(team_id=team, admin=role == ROLE_ADMIN)


def from_context(context: grpc.aio.ServicerContext) -> Caller:
    return parse(context.invocation_metadata())


def require_admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise errors.PermissionDenied(f"{what} needs an admin key")
