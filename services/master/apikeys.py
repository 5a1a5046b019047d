"""API keys: ``e2b_`` + 40 lowercase hex (the shape every E2B SDK accepts).

Only a SHA-256 of a key is stored, at <prefix>/apikeys/<key_id>, where the key id is the first 16
hex digits of that hash: validation is one etcd read, and the key itself exists only in the
answer to ``create``.

Every key belongs to a team (which must exist when the key is made) and has a role, user or
admin. Keys written before teams existed read as the local team's, role user (the least a key
can do): ``effective`` is applied to every record this module returns.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from cube_common.teams import API_KEY_RE as KEY_RE
from sdk.gen.cube.v1 import master_pb2
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import Store
from services.master.teams import Teams, owner

log = get_logger("apikeys")

KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    return digest(key)[:16]


def effective(rec: master_pb2.ApiKey) -> master_pb2.ApiKey:
    """The record with its team and role as they act (see the module docstring)."""
    rec.team_id = owner(rec.team_id)
    if rec.role == master_pb2.API_KEY_ROLE_UNSPECIFIED:
        rec.role = master_pb2.API_KEY_ROLE_USER
    return rec


class ApiKeys:
    def __init__(self, store: Store, teams: Teams):
        self.store = store
        self.teams = teams

    async def create(self, name: str, team_id: str = "",
                     role: master_pb2.ApiKeyRole = master_pb2.API_KEY_ROLE_USER) -> tuple[master_pb2.ApiKey, str]:
        if len(name) > 128:
            raise errors.InvalidArgument("name is longer than 128 characters")
        team_id = owner(team_id)
        if role not in (master_pb2.API_KEY_ROLE_USER, master_pb2.API_KEY_ROLE_ADMIN):
            role = master_pb2.API_KEY_ROLE_USER
        if not await self.teams.exists(team_id):
            raise errors.NotFound(f"team '{team_id}' not found; create it first")
        for _ in range(5):
            key = "e2b_" + secrets.token_hex(20)
            rec = master_pb2.ApiKey(key_id=key_id_of(key), name=name, sha256=digest(key),
                                    mask=f"{key[:8]}...{key[-4:]}", team_id=team_id, role=role)
            rec.created_at.CopyFrom(ts())
            if await self.store.create_apikey(rec):
                log.info("api key created", extra={"key_id": rec.key_id, "key_name": name, "team_id": team_id,
                                                   "role": master_pb2.ApiKeyRole.Name(role)})
                return rec, key
        raise errors.AlreadyExists("could not allocate a unique key id")

    async def list(self) -> list[master_pb2.ApiKey]:
        keys = [effective(k) for k in await self.store.list_apikeys()]
        return sorted(keys, key=lambda k: k.created_at.ToNanoseconds())

    async def revoke(self, key_id: str) -> bool:
        if not KEY_ID_RE.match(key_id or ""):
            raise errors.NotFound(f"api key '{key_id}' not found")
        if not await self.store.delete_apikey(key_id):
            raise errors.NotFound(f"api key '{key_id}' not found")
        log.info("api key revoked", extra={"key_id": key_id})
        return True

    async def validate(self, key: str) -> master_pb2.ApiKey:
        if not KEY_RE.match(key or ""):
            raise errors.Unauthenticated("invalid API key")
        rec = await self.store.get_apikey(key_id_of(key))
        if rec is None or not hmac.compare_digest(rec.sha256, digest(key)):
            raise errors.Unauthenticated("invalid API key")
        return effective(rec)
