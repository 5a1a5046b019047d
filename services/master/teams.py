"""The team registry: records at <prefix>/teams/<team_id>.

A team is only a name that API keys and records point at; the operator chooses its id. The local
team (cube_common.teams.LOCAL_TEAM) exists by definition, whether or not its record was written:
the leader writes it when absent, so ``etcdctl`` shows it, but nothing waits for that write.
"""

from __future__ import annotations

from cube_common.teams import LOCAL_TEAM, TEAM_ID_RE
from sdk.gen.cube.v1 import master_pb2
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import Store

log = get_logger("teams")


def owner(team_id: str) -> str:
    """The team a record belongs to: records written before teams existed have none (local)."""
    return team_id or LOCAL_TEAM


class Teams:
    def __init__(self, store: Store):
        self.store = store

    async def create(self, team_id: str) -> master_pb2.Team:
        if not TEAM_ID_RE.match(team_id or ""):
            raise errors.InvalidArgument(f"invalid team id {team_id!r}: use 1-63 lowercase letters, digits or "
                                         "'-', starting with a letter or digit")
        team = master_pb2.Team(team_id=team_id, created_at=ts())
        if not await self.store.create_team(team):
            raise errors.AlreadyExists(f"team '{team_id}' already exists")
        log.info("team created", extra={"team_id": team_id})
        return team

    async def list(self) -> list[master_pb2.Team]:
        teams = {t.team_id: t for t in await self.store.list_teams()}
        teams.setdefault(LOCAL_TEAM, master_pb2.Team(team_id=LOCAL_TEAM))
        return sorted(teams.values(), key=lambda t: t.team_id)

    async def exists(self, team_id: str) -> bool:
        return team_id == LOCAL_TEAM or await self.store.get_team(team_id) is not None

    async def ensure_local(self) -> None:
        """Leader: write the local team's record when it is absent."""
        if await self.store.create_team(master_pb2.Team(team_id=LOCAL_TEAM, created_at=ts())):
            log.info("team created", extra={"team_id": LOCAL_TEAM})
