"""Leader election through etcd: the leader holds <prefix>/leader under a lease it keeps alive.

Every master serves reads and writes (all state is in etcd); only the leader runs the timers and
the reconciler, so an expired sandbox is acted on once. A leader that cannot refresh its lease
for a TTL steps down (its tasks are cancelled) before any standby can have taken over: the
standby needs the key gone, which takes the lease's full TTL. A standby watches the key, so a
dead leader is replaced as soon as etcd expires its lease (at most a TTL after its last renewal).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import master_pb2
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import Store, from_json, to_json

log = get_logger("leader")


class Election:
    def __init__(self, store: Store, identity: master_pb2.MasterIdentity, ttl_s: int,
                 duties: Callable[[], list[Awaitable]]):
        self.store = store
        self.identity = identity
        self.ttl_s = ttl_s
        self.duties = duties
        self.is_leader = False
        self._lease_id: int | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def key(self) -> bytes:
        return self.store.keys.leader()

    async def current(self) -> master_pb2.MasterIdentity | None:
        r = await self.store.etcd.get(self.key)
        return from_json(r.value, master_pb2.MasterIdentity) if r else None

    async def run(self) -> None:
        try:
            while True:
                try:
                    if await self._campaign():
                        await self._lead()
                    else:
                        await self._await_vacancy()
                except EtcdUnavailable:
                    await asyncio.sleep(1)
                except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
                    # Without this loop no master would ever lead again (no timeouts, no
                    # reconciler): step down, log, and campaign again.
                    log.exception("election round failed", extra={"error": repr(e)})
                    await self._step_down("election error")
                    await asyncio.sleep(1)
        finally:
            await self._step_down("stopping")

    async def _campaign(self) -> bool:
        lease = await self.store.etcd.lease(self.ttl_s)
        me = master_pb2.MasterIdentity()
        me.CopyFrom(self.identity)
        me.since.CopyFrom(ts())
        t = self.store.t
        try:
            ok, _ = await self.store.txn([t.create(self.key) == 0], [t.put(self.key, to_json(me), lease=lease.id)])
        except EtcdUnavailable:
            await self._revoke(lease.id)
            raise
        if not ok:
            await self._revoke(lease.id)
            return False
        self._lease_id = lease.id
        self.is_leader = True
        log.info("elected leader", extra={"master_id": self.identity.master_id})
        self._tasks = [asyncio.ensure_future(d) for d in self.duties()]
        return True

    async def _await_vacancy(self) -> None:
        """A standby waits on an etcd watch of the leader key, so that it campaigns the moment the
        key goes (a dead leader's lease lapsing, or a clean hand-over), not at its next poll; it
        reads again at least every TTL."""
        r = await self.store.etcd.get(self.key)
        if r is not None:
            await self.store.etcd.wait_change(self.key, r.mod_revision, self.ttl_s)

    async def _lead(self) -> None:
        lease_id = self._lease_id
        assert lease_id is not None, "_lead runs only after _campaign won the lease"
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            for t in self._tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.error("leader duty died", extra={"error": repr(t.exception())})
            # Step down before the lease can have expired on the server (a standby may then win):
            # a renewal gets only the time left until two thirds of the lease have passed unrenewed.
            budget = self.ttl_s * 2 / 3 - (time.monotonic() - last_ok)
            try:
                reply = await asyncio.wait_for(self.store.etcd.refresh_lease(lease_id), max(0.05, budget))
                if reply is None or reply.TTL <= 0:
                    await self._step_down("lease expired")
                    return
                last_ok = time.monotonic()
            except (EtcdUnavailable, TimeoutError):
                if time.monotonic() - last_ok > self.ttl_s * 2 / 3:
                    await self._step_down("etcd unreachable")
                    return

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.store.etcd.revoke_lease(lease_id)
        except EtcdUnavailable:
            pass

    async def _step_down(self, why: str) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:
                pass
        if self.is_leader:
            log.info("stepped down", extra={"master_id": self.identity.master_id, "reason": why})
        self.is_leader = False
        if self._lease_id is not None:
            lease_id, self._lease_id = self._lease_id, None
            if why == "stopping":
                await self._revoke(lease_id)  # hand over at once on a clean shutdown
