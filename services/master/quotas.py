"""Per-team quotas: how many sandboxes a team may have running (and their vCPUs and memory) and
paused at once. The limits live on the team record (master.proto's TeamQuota, which also says
what counts as running and as paused); operators set them (``Quotas.set_quota``, SetTeamQuota).

Where counting happens: at each admission, from the team's sandbox records in etcd. Nothing keeps
a running total, so there is nothing to drift when a master dies in the middle of a change or the
reconciler undoes one. An admission is a change that adds to a limited figure: a create or a
resume (running, vCPUs, memory) and a pause (paused). Changes that only take away (a kill, a
pause freeing its running slot once it is paused) are not admissions and never wait.

The race guarantee, across any number of masters: an admission reads the team record (its quota,
at revision R), then the team's sandboxes, and writes its sandbox change in one transaction that
requires the team record still at R and rewrites it unchanged (store.TeamGuard). Two admissions
of one team thus commit one after the other, and the later one was counted from a state that
includes the earlier; when the earlier commits between the later's count and its write, the
later's transaction fails and it counts again. So every committed admission was within the
limits given everything committed before it, and a limit is never exceeded by admissions, however
many run at once. Within one master, admissions of a team also queue on a lock (held from the
count to the write, never across a node call), so they do not fail each other's transactions;
only admissions on different masters retry.

What is not guaranteed, on purpose:
- A quota set while an admission is under way may not apply to it (that one read the old
  quota); it applies to every admission that begins after it is set.
- A limit lowered below what a team uses refuses new admissions and stops nothing.
- Sandboxes an operator created (no caller: ``quota_exempt``) belong to the local team but are
  never counted, and their pause and resume are never refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cube_common.teams import LOCAL_TEAM
from sdk.gen.cube.v1 import master_pb2 as P
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import CAS_RETRIES, Store, TeamGuard
from services.master.teams import owner

log = get_logger("quotas")

# A transitional sandbox holds the slots of both phases it may end in, so that whichever it ends
# in was admitted: a failed pause goes back to running, a failed resume back to paused.
RUNNING_SLOT = (P.SANDBOX_PHASE_CREATING, P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_PAUSING,
                P.SANDBOX_PHASE_RESUMING)
PAUSED_SLOT = (P.SANDBOX_PHASE_PAUSING, P.SANDBOX_PHASE_PAUSED, P.SANDBOX_PHASE_RESUMING)


@dataclass(frozen=True)
class Usage:
    """What a team's sandboxes hold (or what a change adds), in TeamQuota's terms."""

    running: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    paused: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.running + other.running, self.vcpus + other.vcpus, self.memory_mb + other.memory_mb,
                     self.paused + other.paused)

    def as_proto(self) -> P.TeamUsage:
        return P.TeamUsage(running=self.running, vcpus=self.vcpus, memory_mb=self.memory_mb, paused=self.paused)


PAUSED_ONE = Usage(paused=1)


def running_one(rec: P.Sandbox) -> Usage:
    """What a sandbox adds when it starts running (created or resumed)."""
    return Usage(running=1, vcpus=rec.vcpus, memory_mb=rec.memory_mb)


def held(rec: P.Sandbox) -> Usage:
    """What one sandbox record holds of its team's quota."""
    if rec.quota_exempt:
        return Usage()
    out = running_one(rec) if rec.phase in RUNNING_SLOT else Usage()
    return out + PAUSED_ONE if rec.phase in PAUSED_SLOT else out


def usage_by_team(records: Iterable[P.Sandbox], exclude: str = "") -> dict[str, Usage]:
    """Every team's usage (a team without sandboxes is absent); ``exclude`` a sandbox id."""
    out: dict[str, Usage] = {}
    for rec in records:
        if rec.sandbox_id != exclude:
            team = owner(rec.team_id)
            out[team] = out.get(team, Usage()) + held(rec)
    return out


# (TeamQuota field, Usage field, how a refusal names it)
_LIMITS = (("max_running", "running", "running sandboxes"), ("max_vcpus", "vcpus", "vCPUs of running sandboxes"),
           ("max_memory_mb", "memory_mb", "MiB of memory of running sandboxes"),
           ("max_paused", "paused", "paused sandboxes"))


def limited(quota: P.TeamQuota, adds: Usage) -> bool:
    """Does the quota limit anything this change adds to?"""
    return any(getattr(quota, q) and getattr(adds, u) for q, u, _ in _LIMITS)


def refusal(team_id: str, quota: P.TeamQuota, used: Usage, adds: Usage) -> str | None:
    """Why the change is refused (E2B-style wording for the 429's message), or None."""
    for q, u, what in _LIMITS:
        limit, now, more = getattr(quota, q), getattr(used, u), getattr(adds, u)
        if limit and more and now + more > limit:
            return (f"team '{team_id}' would exceed its quota of {limit} {what} ({now} in use, this needs "
                    f"{more} more); kill or pause sandboxes, or ask an operator to raise the quota")
    return None


class Quotas:
    """Admissions of sandbox changes against their team's quota (the module docstring's rules)."""

    def __init__(self, store: Store):
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}  # per team; teams are few and never deleted

    @asynccontextmanager
    async def admission(self, rec: P.Sandbox, adds: Usage) -> AsyncIterator[TeamGuard | None]:
        """Admit ``rec`` (a sandbox about to change, in its new phase) adding ``adds`` to its
        team's usage. Raises Exhausted when that exceeds the team's quota; otherwise yields the
        guard the sandbox's write must carry (None: nothing is limited, write without one). The
        write happens inside the block; a Conflict from it means another admission (on another
        master) came first: the caller counts again."""
        team_id = owner(rec.team_id)
        # Unlimited (the default) or exempt: no lock, no guard; one read of the team record.
        first = None if rec.quota_exempt else await self.store.team_record(team_id)
        if first is None or not limited(first.value.quota, adds):
            yield None
            return
        async with self._locks.setdefault(team_id, asyncio.Lock()):
            # Read again under the lock: an admission that held it before us rewrote the record.
            team = await self.store.team_record(team_id)
            if team is None or not limited(team.value.quota, adds):
                yield None
                return
            # The count must be read after the team record: whatever committed before the record's
            # revision R is then in it, and whatever commits after R fails our write's guard.
            records = await self.store.list_sandboxes()
            used = usage_by_team((v.value for v in records), exclude=rec.sandbox_id).get(team_id, Usage())
            why = refusal(team_id, team.value.quota, used, adds)
            if why is not None:
                raise errors.Exhausted(why)
            yield TeamGuard(team.value, team.mod_revision)

    # ---- operators ----------------------------------------------------------------------------

    async def set_quota(self, req: P.SetTeamQuotaRequest) -> P.Team:
        """Change the limits set in ``req`` (the others stay) with a compare-and-swap on the team
        record, so a concurrent admission counts under one quota or the other, never a mix."""
        for _ in range(CAS_RETRIES):
            v = await self.store.team_record(req.team_id)
            if v is None and req.team_id != LOCAL_TEAM:  # the local team exists with no record yet
                raise errors.NotFound(f"team '{req.team_id}' not found")
            team = P.Team(team_id=LOCAL_TEAM, created_at=ts()) if v is None else v.value
            for q, _, _ in _LIMITS:
                if req.HasField(q):
                    setattr(team.quota, q, getattr(req, q))
            if await self.store.put_team(team, v.mod_revision if v is not None else 0):
                log.info("quota set", extra={"team_id": team.team_id, "quota": {
                    q: getattr(team.quota, q) for q, _, _ in _LIMITS}})
                return (await self.with_usage([team]))[0]
        raise errors.Unavailable(f"team '{req.team_id}' is changing too fast; try again")

    async def with_usage(self, teams: list[P.Team]) -> list[P.Team]:
        """The teams with their current usage filled in (never stored)."""
        used = usage_by_team(v.value for v in await self.store.list_sandboxes())
        for team in teams:
            team.usage.CopyFrom(used.get(team.team_id, Usage()).as_proto())
        return teams
