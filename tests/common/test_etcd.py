"""The shared etcd client (failover, deadlines, one error type) and key layout, against a real etcd."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cube_common.etcd import EtcdClient, EtcdUnavailable, parse_endpoint
from cube_common.keys import Keys
from testkit.ports import free_port


def test_key_layout():
    k = Keys("cube/")
    assert k.root == "/cube" and Keys("/cube").root == "/cube"
    assert k.sandbox("s1") == b"/cube/sandboxes/s1" and k.sandboxes() == b"/cube/sandboxes/"
    assert k.route("s1") == b"/cube/routes/s1" and k.routes() == b"/cube/routes/"
    assert k.template("t") == b"/cube/templates/t" and k.alias("a") == b"/cube/template-aliases/a"
    assert k.build("j") == b"/cube/template-builds/j" and k.apikey("x") == b"/cube/apikeys/x"
    assert k.alias("a", "team-a") == b"/cube/team-aliases/team-a/a" and k.team("t") == b"/cube/teams/t"
    assert k.team_aliases() == b"/cube/team-aliases/" and k.teams() == b"/cube/teams/"
    assert k.tombstone("t") == b"/cube/template-tombstones/t" and k.tombstones() == b"/cube/template-tombstones/"
    assert k.node("n") == b"/cube/nodes/n" and k.leader() == b"/cube/leader"
    assert k.proxy_applied("p1") == b"/cube/proxy/p1/applied_revision"
    assert k.proxy_of_applied(k.proxy_applied("p1")) == "p1"
    assert k.proxy_of_applied(b"/cube/proxy/p1/other") is None and k.proxy_of_applied(k.route("x")) is None


def test_endpoints_are_parsed_or_refused():
    assert parse_endpoint("10.0.0.1:2379") == ("10.0.0.1", 2379)
    assert parse_endpoint("[::1]:2379") == ("::1", 2379)
    for bad in ("nohost", "h:", ":1", "h:x"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    with pytest.raises(ValueError):
        EtcdClient([])


async def test_fails_over_to_the_next_endpoint(etcd_server):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    etcd = EtcdClient([dead, etcd_server.endpoint], timeout_s=1.0)
    key = f"/t-etcd-{uuid.uuid4().hex[:8]}/k".encode()
    try:
        # A transaction is tried once: on the dead member it fails, and the next call moves on.
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            await etcd.call(lambda c: c.transaction(compare=[], success=[c.transactions.put(key, b"0")], failure=[]))
        assert time.monotonic() - t0 < 5  # the deadline holds: no hang on a dead member
        assert etcd.endpoint == etcd_server.endpoint
        # What may run twice goes on to the next member within the same call.
        other = EtcdClient([dead, etcd_server.endpoint], timeout_s=3.0)
        try:
            await other.put(key, b"1")
            assert other.endpoint == etcd_server.endpoint
        finally:
            await other.close()
        await etcd.put(key, b"2")
        got = await etcd.call(lambda c: c.get(key))
        assert got.value == b"2"
        # Long calls hold their channel: a watch through `using` sees the next write.
        async with etcd.using() as client:
            watch = await client.watch(key)
            await etcd.put(key, b"3")

            async def first_event():
                async for event in watch:
                    return event
            event = await asyncio.wait_for(first_event(), 5)
            assert event.kv.value == b"3"
            await watch.cancel()
        await etcd.delete(key)
    finally:
        await etcd.close()


async def test_every_endpoint_down_is_unavailable_never_a_hang():
    etcd = EtcdClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout_s=0.5)
    try:
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await etcd.call(lambda c: c.get(b"/x"))
            assert time.monotonic() - t0 < 4
    finally:
        await etcd.close()


async def test_wait_change_sees_a_write_or_a_delete_and_times_out_otherwise(etcd_server):
    etcd = EtcdClient([etcd_server.endpoint], timeout_s=2.0)
    key = f"/t-etcd-{uuid.uuid4().hex[:8]}/leader".encode()
    try:
        await etcd.put(key, b"a")
        rev = (await etcd.get(key)).mod_revision
        assert await etcd.wait_change(key, rev, timeout=0.3) is False  # nothing changed
        # A change made before the wait began counts (the watch starts after `rev`).
        await etcd.put(key, b"b")
        assert await asyncio.wait_for(etcd.wait_change(key, rev, timeout=30), 10) is True
        rev = (await etcd.get(key)).mod_revision

        async def delete_soon() -> None:
            await asyncio.sleep(0.2)
            await etcd.delete(key)
        deleting = asyncio.ensure_future(delete_soon())
        assert await asyncio.wait_for(etcd.wait_change(key, rev, timeout=30), 10) is True
        await deleting
        assert await etcd.get(key) is None
    finally:
        await etcd.close()


async def test_wait_change_with_etcd_gone_returns_false_without_spinning():
    etcd = EtcdClient([f"127.0.0.1:{free_port()}"], timeout_s=0.5)
    try:
        assert await asyncio.wait_for(etcd.wait_change(b"/x", 1, timeout=2.0), 10) is False
    finally:
        await etcd.close()
