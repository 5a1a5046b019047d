"""Who a call acts for: the one place the master decides, from a call's peer certificate and
metadata, which caller a call is and whether its peer may make it at all.

cube-api authenticates the API key and names, on every call it makes for a request, the key's
team and role in the gRPC metadata (``cube-team``, ``cube-role``; cube_common.teams). The master
scopes what the call sees and may change by that caller.

With mutual TLS (the master has a TLS directory; cube_common/mtls.py), the peer's certificate
decides what the metadata may claim (``Policy.resolve``):
- ``operator`` (cubemastercli, sdk.client, deploy): admin of the cluster; it may also name a
  team in the metadata to act as that team's caller.
- ``api``: acts for the team it names, with the role the key has. Without a caller it may only
  validate keys and make the volume content calls, which the volume's token authorises
  (``API_AS_ITSELF``). It never reaches the operator-only calls (``OPERATOR_ONLY``:
  teams, keys, nodes (listing, draining, removing), registering a template), whatever role it
  claims: minting keys or teams, or taking nodes out, takes an operator's certificate, not a
  compromised front end. One exception, a read that changes nothing: listing nodes, for an admin
  caller only (``API_ADMIN_READS``: ``GET /nodes``, the web console's capacity view).
- ``proxy``: only the calls that wake a paused sandbox for a request to it (``PROXY_CALLS``), as
  the cluster, with no caller named.
- any other role (cubelet, vs, envoy, etcd, master): refused.
Every refusal is PERMISSION_DENIED naming the certificate's role.

Without TLS the master listens on loopback only (cube_common.listen), and the interim rule
stands: a call with no caller is an operator's. Anyone who can reach that port can claim any
caller, which is why ``make up`` always runs with TLS.

A call with only one of the keys, a repeated key, or a value of the wrong shape is refused
(UNAUTHENTICATED): a half-formed identity is never read as an operator's.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from cube_common.mtls import Role, peer_identity
from cube_common.teams import OPERATOR, ROLE_ADMIN, ROLE_METADATA, ROLE_USER, TEAM_ID_RE, TEAM_METADATA, Caller
from services.master import errors

# The master's methods each role may call under TLS (by short name; see the module docstring).
# Calls a volume's token authorises (volumes.py), whoever asks: E2B sends no API key with them.
VOLUME_TOKEN_CALLS = frozenset({"VolumeContent", "ReadVolumeFile", "WriteVolumeFile"})
API_AS_ITSELF = frozenset({"ValidateApiKey"}) | VOLUME_TOKEN_CALLS
OPERATOR_ONLY = frozenset({"CreateTeam", "ListTeams", "SetTeamQuota", "CreateApiKey", "ListApiKeys",
                           "RevokeApiKey", "ListNodes", "DrainNode", "UndrainNode", "RemoveNode", "PutTemplate",
                           "GetClusterStatus"})
PROXY_CALLS = frozenset({"GetSandbox", "ConnectSandbox"})
# Operator-only calls the API may make for an admin caller: reads that change nothing.
API_ADMIN_READS = frozenset({"ListNodes"})


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


class Policy:
    """How this master resolves callers: ``secure`` when it serves with mutual TLS."""

    def __init__(self, secure: bool):
        self.secure = secure

    def resolve(self, context: grpc.aio.ServicerContext, rpc: str) -> Caller:
        """The caller of a call to method ``rpc``; PermissionDenied when its peer may not make it."""
        named = parse(context.invocation_metadata())
        if not self.secure:
            return named
        peer = peer_identity(context)
        role = peer.role if peer else None
        if role is Role.OPERATOR:
            return named
        if role is Role.API and rpc not in OPERATOR_ONLY and (named is not OPERATOR or rpc in API_AS_ITSELF):
            return named
        if role is Role.API and rpc in API_ADMIN_READS and named is not OPERATOR and named.admin:
            return named
        if role is Role.PROXY and rpc in PROXY_CALLS and named is OPERATOR:
            return named
        who = f"an {role} certificate" if role is not None else "no Cube certificate"
        if role is Role.API and named is OPERATOR:
            raise errors.PermissionDenied(f"{rpc}: a call from {who} must name the team it acts for")
        raise errors.PermissionDenied(f"{rpc}: not allowed to a caller with {who}")


def require_admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise errors.PermissionDenied(f"{what} needs an admin key")
