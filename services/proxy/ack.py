"""Route ack protocol: how the master knows every proxy serves a route before answering 201.

Each running proxy instance keeps one etcd key, attached to a lease of its own (TTL
`--lease-ttl`, 10 s by default, kept alive every TTL/3):

    <prefix>/proxy/<proxy_id>/applied_revision = "<etcd revision>"   (decimal)

The value is the etcd revision of the route table that the proxy's Envoy has ACKed over ADS
(written right after the ACK). "Applied revision R" means: every route put or delete in etcd
with a revision <= R is what Envoy serves now. The key exists only while the proxy runs *and* its
Envoy is connected to it (deleted while Envoy restarts; a dead proxy's key expires with its
lease), so the set of keys is the set of live proxies that can serve traffic.

The master, after writing or deleting `<prefix>/routes/<id>` (the put/delete response header
gives revision R), calls:

    await wait_routes_applied(etcd_client, R, timeout=5.0, prefix="/cube")

which returns once every live proxy has applied >= R (immediately when no proxy runs) and raises
RoutesNotApplied naming the laggards after `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("cube.proxy.ack")

APPLIED_SUFFIX = "/applied_revision"


def proxy_prefix(prefix: str) -> str:
    return "/" + prefix.strip("/") + "/proxy/"


def applied_key(prefix: str, proxy_id: str) -> str:
    return f"{proxy_prefix(prefix)}{proxy_id}{APPLIED_SUFFIX}"


class RoutesNotApplied(TimeoutError):
    def __init__(self, revision: int, laggards: dict[str, int]):
        self.revision = revision
        self.laggards = laggards
        super().__init__(f"route revision {revision} not applied by proxies {laggards} in time")


def _proxy_id(key: bytes, pp: str) -> str | None:
    k = key.decode("utf-8", "replace")
    if not (k.startswith(pp) and k.endswith(APPLIED_SUFFIX)):
        return None
    return k[len(pp):-len(APPLIED_SUFFIX)]


def _revision(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


async def wait_routes_applied(etcd_client, revision: int, timeout: float = 5.0,
                              prefix: str = "/cube") -> dict[str, int]:
    """Wait until every live proxy has applied etcd revision >= `revision`.

    `etcd_client` is an `aetcd.Client`. Returns {proxy_id: applied revision} of the live proxies.
    """
    pp = proxy_prefix(prefix)
    deadline = time.monotonic() + timeout
    rng = await etcd_client.get_prefix(pp.encode())
    applied: dict[str, int] = {}
    for kv in rng:
        pid = _proxy_id(kv.key, pp)
        if pid is not None:
            applied[pid] = _revision(kv.value)

    def laggards() -> dict[str, int]:
        return {p: r for p, r in applied.items() if r < revision}

    if not laggards():
        return applied
    watch = await etcd_client.watch_prefix(pp.encode(), start_revision=rng.header.revision + 1)
    try:
        async def follow() -> None:
            async for event in watch:
                pid = _proxy_id(event.kv.key, pp)
                if pid is None:
                    continue
                if event.kind == "PUT":
                    applied[pid] = _revision(event.kv.value)
                else:
                    applied.pop(pid, None)  # gone (stopped, or its lease expired)
                if not laggards():
                    return
        try:
            await asyncio.wait_for(follow(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RoutesNotApplied(revision, laggards()) from None
    finally:
        try:
            await asyncio.wait_for(watch.cancel(), 2)
        except Exception:
            pass
    return applied


class AppliedRevisionPublisher:
    """The proxy side: keeps `applied_key` equal to the last applied revision, under a lease."""

    def __init__(self, etcd_client, prefix: str, proxy_id: str, ttl: int = 10):
        self._client = etcd_client
        self._key = applied_key(prefix, proxy_id).encode()
        self._ttl = ttl
        self._desired: int | None = None  # None: no Envoy connected, the key must not exist
        self._written: int | None = None
        self._changed = asyncio.Event()
        self._lease = None
        self.writes = 0

    def applied(self, revision: int) -> None:
        if self._desired is None or revision > self._desired:
            self._desired = revision
            self._changed.set()

    def withdraw(self) -> None:
        """Envoy is not connected: stop claiming anything."""
        self._desired = None
        self._changed.set()

    async def _sync(self) -> None:
        if self._lease is None:
            self._lease = await self._client.lease(self._ttl)
            self._written = None
        if self._desired is None:
            if self._written is not None:
                await self._client.delete(self._key)
                self._written = None
        elif self._desired != self._written:
            desired = self._desired
            await self._client.put(self._key, str(desired).encode(), lease=self._lease)
            self._written = desired
            self.writes += 1

    async def _keepalive(self) -> None:
        if self._lease is None:
            return
        reply = await self._client.refresh_lease(self._lease.id)
        if reply is None or reply.TTL <= 0:  # expired (etcd was away too long): start over
            log.warning("proxy lease expired; re-registering")
            self._lease = None
            self._written = None
            await self._sync()

    async def run(self) -> None:
        next_keepalive = time.monotonic() + self._ttl / 3
        while True:
            try:
                timeout = max(0.0, next_keepalive - time.monotonic())
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                self._changed.clear()
                await self._sync()
                if time.monotonic() >= next_keepalive:
                    await self._keepalive()
                    next_keepalive = time.monotonic() + self._ttl / 3
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("cannot publish the applied route revision; retrying", extra={"error": repr(e)})
                self._lease = None
                self._changed.set()
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        """Graceful stop: the key goes away at once instead of at lease expiry."""
        if self._lease is not None:
            try:
                await self._client.revoke_lease(self._lease.id)
            except Exception:
                pass
            self._lease = None
