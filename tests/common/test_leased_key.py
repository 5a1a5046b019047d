"""A key held under a lease (cube_common.leased_key), against a real etcd: written at once,
rewritten on a poke, gone when its owner stops renewing it or closes it, and back after etcd
forgot the lease."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from cube_common.etcd import EtcdClient
from cube_common.leased_key import LeasedKey


async def _until(cond, timeout: float = 15.0) -> None:
    """Poll etcd (the key's changes come from the lease, not from anything we could await)."""
    for _ in range(int(timeout / 0.05)):
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not so within {timeout} s")


async def test_the_key_lives_with_its_owner(etcd_server):
    etcd = EtcdClient([etcd_server.endpoint], timeout_s=2.0)
    key = f"/t-leased-{uuid.uuid4().hex[:8]}/me".encode()
    value = [b"one"]
    held = LeasedKey(etcd, key, lambda: value[0], ttl=2)
    task = asyncio.ensure_future(held.run())
    try:
        assert await held.written(10)
        assert (await etcd.get(key)).value == b"one"
        value[0] = b"two"
        held.poke()

        async def rewritten() -> bool:
            r = await etcd.get(key)
            return r is not None and r.value == b"two"
        await _until(rewritten)
        # It outlives its TTL while renewed.
        await asyncio.sleep(2.5)
        assert (await etcd.get(key)).value == b"two"

        # etcd forgets the lease (as after a long outage): the next beat writes it under a new one.
        lease_id = held._lease_id
        assert lease_id is not None
        await etcd.revoke_lease(lease_id)
        assert await etcd.get(key) is None

        async def back() -> bool:
            return await etcd.get(key) is not None
        await _until(back)

        # Its owner stops renewing (dies): the key lapses with the lease.
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def gone() -> bool:
            return await etcd.get(key) is None
        await _until(gone)
    finally:
        task.cancel()
        await etcd.close()


async def test_close_removes_the_key_at_once(etcd_server):
    etcd = EtcdClient([etcd_server.endpoint], timeout_s=2.0)
    key = f"/t-leased-{uuid.uuid4().hex[:8]}/me".encode()
    held = LeasedKey(etcd, key, lambda: b"x", ttl=30)
    task = asyncio.ensure_future(held.run())
    try:
        assert await held.written(10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await held.close()
        assert await etcd.get(key) is None  # not 30 s later
    finally:
        await etcd.close()


def test_a_ttl_below_two_seconds_is_refused():
    with pytest.raises(ValueError):
        LeasedKey(EtcdClient(["127.0.0.1:1"]), b"/k", lambda: b"", ttl=1)
