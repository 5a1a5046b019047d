"""A key that exists only while its process is alive: written under an etcd lease it keeps alive.

Invariants:
* The key's value is ``value()`` at the last beat (every ``ttl / 3`` seconds, or at once after
  ``poke()``); it is written under a lease of ``ttl`` seconds, so a process that dies (or is cut
  off from etcd) loses the key at most ``ttl`` after its last beat. That lapse is the signal other
  processes act on (a node gone, a master gone), so the loop never outlives its owner.
* A beat that fails (etcd away, the lease lapsed meanwhile) starts over with a fresh lease after a
  second; the loop only ends by cancellation. ``close()`` removes the key at once (a clean stop
  should not look like a death for a TTL).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cube_common.etcd import EtcdClient, EtcdUnavailable

log = logging.getLogger("cube.leased_key")


class LeasedKey:
    def __init__(self, etcd: EtcdClient, key: bytes, value: Callable[[], bytes], ttl: int) -> None:
        if ttl < 2:
            raise ValueError("a leased key needs a TTL of at least 2 s")
        self.etcd = etcd
        self.key = key
        self.value = value
        self.ttl = ttl
        self._poked = asyncio.Event()
        self._written = asyncio.Event()
        self._lease_id: int | None = None

    def poke(self) -> None:
        """Write the value now, not at the next beat."""
        self._poked.set()

    async def written(self, timeout: float) -> bool:
        """Wait until the key has been written once (False when ``timeout`` passed first)."""
        try:
            await asyncio.wait_for(self._written.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        while True:
            try:
                lease = await self.etcd.lease(self.ttl)
                self._lease_id = lease.id
                while True:
                    # The put fails once the lease has lapsed (etcd knows no such lease): start over.
                    await self.etcd.put(self.key, self.value(), lease=lease)
                    await self.etcd.refresh_lease(lease.id)
                    self._written.set()
                    self._poked.clear()
                    try:
                        await asyncio.wait_for(self._poked.wait(), max(0.5, self.ttl / 3))
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd away: keep trying; the key lapses meanwhile, by design
                log.warning("leased key not renewed; retrying", extra={
                    "key": self.key.decode(errors="replace"), "error": str(e), "etcd": self.etcd.endpoint})
                self._lease_id = None
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Remove the key now (revoking the lease deletes it). Call after cancelling ``run``."""
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is None:
            return
        try:
            await self.etcd.revoke_lease(lease_id)
        except EtcdUnavailable:
            pass  # it lapses by itself
