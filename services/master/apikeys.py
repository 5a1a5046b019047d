"""API keys: ``e2b_`` + 40 lowercase hex (the shape every E2B SDK accepts).

Only a SHA-256 of a key is stored, at <prefix>/apikeys/<key_id>, where the key id is the first 16
hex digits of that hash: validation is one etcd read, and the key itself exists only in the
answer to ``create``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sdk.gen.cube.v1 import master_pb2
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import Store

log = get_logger("apikeys")

KEY_RE = re.compile(r"^e2b_[0-9a-f]{40}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    return digest(key)[:16]


class ApiKeys:
    def __init__(self, store: Store):
        self.store = store

    async def create(self, name: str) -> tuple[master_pb2.ApiKey, str]:
        if len(name) > 128:
            raise errors.InvalidArgument("name is longer than 128 characters")
        for _ in range(5):
            key = "e2b_" + secrets.token_hex(20)
            rec = master_pb2.ApiKey(key_id=key_id_of(key), name=name, sha256=digest(key),
                                    mask=f"{key[:8]}...{key[-4:]}")
            rec.created_at.CopyFrom(ts())
            if await self.store.create_apikey(rec):
                log.info("api key created", extra={"key_id": rec.key_id, "key_name": name})
                return rec, key
        raise errors.AlreadyExists("could not allocate a unique key id")

    async def list(self) -> list[master_pb2.ApiKey]:
        return sorted(await self.store.list_apikeys(), key=lambda k: k.created_at.ToNanoseconds())

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
        return rec
