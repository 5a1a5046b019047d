"""Route ack protocol: how the master knows every proxy serves a route before answering 201.

Each running proxy instance keeps one etcd key (``Keys.proxy_applied``), attached to a lease of
its own (TTL ``--lease-ttl``, 10 s by default, kept alive every TTL/3):

    <prefix>/proxy/<proxy_id>/applied_revision = "<etcd revision>"   (decimal)

The value is the etcd revision of the route table that the proxy's Envoy has ACKed over ADS
(written right after the ACK). "Applied revision R" means: every route put or delete in etcd
with a revision <= R is what Envoy serves now. The key exists only while the proxy runs *and* its
Envoy is connected to it (deleted while Envoy restarts; a dead proxy's key expires with its
lease), so the set of keys is the set of live proxies that can serve traffic.

The master, after writing or deleting a route (the response header gives revision R), calls

    await wait_routes_applied(etcd, keys, R, timeout=5.0)

which returns once every live proxy has applied >= R (immediately when no proxy runs), raises
``RoutesNotApplied`` naming the laggards after ``timeout`` seconds, and ``EtcdUnavailable`` when
etcd fails meanwhile. Both sides live here, next to each other, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aetcd.leases import Lease

from cube_common.etcd import EtcdClient
from cube_common.keys import Keys

log = logging.getLogger("cube.route_ack")


class RoutesNotApplied(TimeoutError):
    def __init__(self, revision: int, laggards: dict[str, int]):
        self.revision = revision
        self.laggards = laggards
        super().__init__(f"route revision {revision} not applied by proxies {laggards} in time")


def _revision(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


async def wait_routes_applied(etcd: EtcdClient, keys: Keys, revision: int, timeout: float = 5.0) -> dict[str, int]:
    """Wait until every live proxy has applied etcd revision >= ``revision``.

    Returns {proxy_id: applied revision} of the live proxies.
    """
    deadline = time.monotonic() + timeout
    pp = keys.proxies()
    rng = await etcd.call(lambda c: c.get_prefix(pp), op="get_prefix")
    applied: dict[str, int] = {}
    for kv in rng:
        pid = keys.proxy_of_applied(kv.key)
        if pid is not None:
            applied[pid] = _revision(kv.value)

    def laggards() -> dict[str, int]:
        return {p: r for p, r in applied.items() if r < revision}

    if not laggards():
        return applied
    async with etcd.using() as client:
        watch = await client.watch_prefix(pp, start_revision=rng.header.revision + 1)
        try:
            async def follow() -> None:
                async for event in watch:
                    pid = keys.proxy_of_applied(event.kv.key)
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
            except TimeoutError:
                raise RoutesNotApplied(revision, laggards()) from None
        finally:
            try:
                await asyncio.wait_for(watch.cancel(), 2)
            except Exception:  # noqa: BLE001 - best effort on a channel that may be failing
                pass
    return applied


class AppliedRevisionPublisher:
    """The proxy side: keeps the proxy's applied key equal to the last applied revision, under a
    lease. Writes go through ``EtcdClient`` and so fail over between endpoints; the lease is the
    cluster's, not an endpoint's, so it survives a failover."""

    def __init__(self, etcd: EtcdClient, keys: Keys, proxy_id: str, ttl: int = 10):
        self._etcd = etcd
        self._key = keys.proxy_applied(proxy_id)
        self._ttl = ttl
        self._desired: int | None = None  # None: no Envoy connected, the key must not exist
        self._written: int | None = None
        self._changed = asyncio.Event()
        self._lease: Lease | None = None  # None: no lease yet (or it expired / etcd failed)
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
            self._lease = await self._etcd.lease(self._ttl)
            self._written = None
        if self._desired is None:
            if self._written is not None:
                await self._etcd.delete(self._key)
                self._written = None
        elif self._desired != self._written:
            desired = self._desired
            lease = self._lease
            await self._etcd.put(self._key, str(desired).encode(), lease=lease)
            self._written = desired
            self.writes += 1

    async def _keepalive(self) -> None:
        if self._lease is None:
            return
        lease_id = self._lease.id
        reply = await self._etcd.refresh_lease(lease_id)
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
                except TimeoutError:
                    pass
                self._changed.clear()
                await self._sync()
                if time.monotonic() >= next_keepalive:
                    await self._keepalive()
                    next_keepalive = time.monotonic() + self._ttl / 3
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd away or a bug: retry, never die
                log.warning("cannot publish the applied route revision; retrying", extra={"error": repr(e)})
                self._lease = None
                self._changed.set()
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        """Graceful stop: the key goes away at once instead of at lease expiry."""
        if self._lease is not None:
            lease_id = self._lease.id
            try:
                await self._etcd.revoke_lease(lease_id)
            except Exception:  # noqa: BLE001 - etcd away: the lease expires by itself
                pass
            self._lease = None
