"""The control plane: malformed records, route propagation and the ack helper, restarts (kill -9
of the proxy and of Envoy), node-to-node forwarding, and a teardown that leaves nothing."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cube_common.keys import Keys
from cube_common.route_ack import RoutesNotApplied, wait_routes_applied
from testkit.proxy import Proxy, pid_alive
from tests.proxy.conftest import DOMAIN, Routes, http_request, new_id

pytestmark = pytest.mark.timeout(180)


def host(port: int, sid: str) -> str:
    return f"{port}-{sid}.{DOMAIN}"


async def test_malformed_records_are_skipped(proxy, upstreams, routes):
    good, bad = new_id(), new_id()
    up = upstreams[0]
    await routes.put_raw(bad, b"{not json")
    await routes.put_raw(new_id(), b'{"sandboxId": "someone-else", "hostAddress": "127.0.0.2"}')  # key mismatch
    await routes.put_raw(new_id(), b'{"hostAddress": "not-an-ip"}')
    await routes.put_raw(new_id(), b'{"hostAddress": "127.0.0.2", "trafficAccessToken": "a b"}')
    await routes.put_raw(new_id(), b'{"nodeId": "elsewhere", "nodeProxyAddress": "nohostport"}')
    await routes.put(good, host=up.host)  # the ack still arrives: the proxy did not stall
    assert http_request(proxy, "GET", "/echo", host=host(up.port, good)).status_code == 200
    r = http_request(proxy, "GET", "/echo", host=host(up.port, bad))
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    # A good route replaced by a malformed record is gone, not kept stale.
    await routes.put_raw(good, b"[]")
    r = http_request(proxy, "GET", "/echo", host=host(up.port, good))
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    assert proxy.proc.poll() is None
    warnings = [r for r in proxy.log_records() if r.get("msg") == "skipping malformed route record"]
    assert any(r.get("sandbox_id") == bad for r in warnings)


async def test_first_request_after_ack_succeeds(proxy, upstreams, routes):
    """What create does: put the route, wait for the ack, use the sandbox at once."""
    up = upstreams[0]
    for _ in range(30):
        sid = new_id()
        await routes.put(sid, host=up.host)
        r = http_request(proxy, "GET", "/echo", host=host(up.port, sid))
        assert r.status_code == 200, r.text


async def test_propagation_latency_is_low(proxy, upstreams, etcd_client, routes):
    up = upstreams[0]
    took = []
    for _ in range(10):
        sid = new_id()
        t0 = time.monotonic()
        rev = await routes.put(sid, host=up.host, wait=False)
        applied = await wait_routes_applied(etcd_client, Keys(proxy.prefix), rev, timeout=10)
        took.append(time.monotonic() - t0)
        assert applied[proxy.proxy_id] >= rev
    took.sort()
    # Not a benchmark (bench/proxy_bench.py is); a sanity bound far above the tens of ms expected.
    assert took[len(took) // 2] < 1.0, took


async def test_identical_put_is_acked(proxy, upstreams, etcd, routes):
    sid = new_id()
    await routes.put(sid, host=upstreams[0].host)
    await routes.put(sid, host=upstreams[0].host)  # same content, newer revision: still acked


async def test_ack_helper_semantics(etcd, etcd_client):
    prefix = f"/t-ack-{uuid.uuid4().hex[:8]}"
    # No live proxy: nothing to wait for.
    assert await wait_routes_applied(etcd_client, Keys(prefix), 10**9, timeout=1) == {}
    lease = await etcd.lease(30)
    try:
        await etcd.put(Keys(prefix).proxy_applied("p1"), b"5", lease=lease)
        await etcd.put(Keys(prefix).proxy_applied("p2"), b"7", lease=lease)
        assert await wait_routes_applied(etcd_client, Keys(prefix), 5, timeout=1) == {"p1": 5, "p2": 7}
        with pytest.raises(RoutesNotApplied) as e:
            await wait_routes_applied(etcd_client, Keys(prefix), 6, timeout=0.3)
        assert e.value.laggards == {"p1": 5}

        async def later():
            await asyncio.sleep(0.2)
            await etcd.put(Keys(prefix).proxy_applied("p1"), b"9", lease=lease)
        task = asyncio.ensure_future(later())
        t0 = time.monotonic()
        assert await wait_routes_applied(etcd_client, Keys(prefix), 7, timeout=5) == {"p1": 9, "p2": 7}
        assert time.monotonic() - t0 < 2
        await task
        # A proxy that goes away (key deleted / lease expired) is no longer waited for.
        task = asyncio.ensure_future(asyncio.sleep(0.2))
        await etcd.delete(Keys(prefix).proxy_applied("p1"))
        await etcd.put(Keys(prefix).proxy_applied("p1"), b"1", lease=lease)

        async def drop():
            await asyncio.sleep(0.2)
            await etcd.delete(Keys(prefix).proxy_applied("p1"))
        task = asyncio.ensure_future(drop())
        assert await wait_routes_applied(etcd_client, Keys(prefix), 7, timeout=5) == {"p2": 7}
        await task
    finally:
        await lease.revoke()


@pytest.fixture
def own_prefix():
    return f"/t-proxy-{uuid.uuid4().hex[:8]}"


async def test_kill9_restart_rebuilds_from_etcd(etcd_server, etcd, etcd_client, upstreams, own_prefix):
    up = upstreams[0]
    routes = Routes(etcd_client, own_prefix)
    p = Proxy(etcd_server.endpoint, own_prefix, node_id="node-r")
    try:
        p.start()
        keep, gone, new = new_id(), new_id(), new_id()
        await routes.put(keep, host=up.host)
        await routes.put(gone, host=up.host)
        assert http_request(p, "GET", "/echo", host=host(up.port, gone)).status_code == 200

        envoy_pid = p.kill9()
        for _ in range(100):  # Envoy dies with its parent (PR_SET_PDEATHSIG)
            if not pid_alive(envoy_pid):
                break
            await asyncio.sleep(0.05)
        assert not pid_alive(envoy_pid), "Envoy outlived the killed proxy"

        # Changes while the proxy is down.
        await routes.delete(gone, wait=False)
        rev = await routes.put(new, host=up.host, wait=False)

        p.start()
        await wait_routes_applied(etcd_client, Keys(own_prefix), rev, timeout=10)
        assert http_request(p, "GET", "/echo", host=host(up.port, keep)).status_code == 200
        assert http_request(p, "GET", "/echo", host=host(up.port, new)).status_code == 200
        r = http_request(p, "GET", "/echo", host=host(up.port, gone))
        assert r.status_code == 502 and "was not found" in r.json()["message"]
        # The applied revision is published again by the new process.
        got = await etcd.get(Keys(own_prefix).proxy_applied(p.proxy_id))
        assert got is not None and int(got.value) >= rev
    finally:
        p.destroy()


async def test_envoy_crash_is_restarted(etcd_server, etcd, etcd_client, upstreams, own_prefix):
    up = upstreams[1]
    routes = Routes(etcd_client, own_prefix)
    p = Proxy(etcd_server.endpoint, own_prefix, node_id="node-e")
    try:
        p.start()
        sid = new_id()
        await routes.put(sid, host=up.host)
        old = p.envoy_pid()
        import os
        import signal
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if p.envoy_pid() != old:
                    break
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.05)
        assert p.envoy_pid() != old
        p.wait_ready()
        # The route added while Envoy was down and the old one are both served by the new Envoy.
        sid2 = new_id()
        await routes.put(sid2, host=up.host)
        for s in (sid, sid2):
            assert http_request(p, "GET", "/echo", host=host(up.port, s)).status_code == 200
    finally:
        p.destroy()


async def test_remote_node_forwarding(etcd_server, etcd, etcd_client, upstreams, own_prefix):
    """A sandbox on node B reached through node A's proxy (A → B's plain listener → guest)."""
    up = upstreams[0]
    routes = Routes(etcd_client, own_prefix)
    a = Proxy(etcd_server.endpoint, own_prefix, node_id="node-a2")
    b = Proxy(etcd_server.endpoint, own_prefix, node_id="node-b2")
    try:
        a.start()
        b.start()
        sid = new_id()
        rev = await routes.put(sid, host=up.host, node_id="node-b2", wait=False,
                               node_proxy_address=f"127.0.0.1:{b.http_port}", token="t0k")
        applied = await wait_routes_applied(etcd_client, Keys(own_prefix), rev, timeout=10)
        assert set(applied) == {"node-a2", "node-b2"}
        for proxy in (a, b):
            r = http_request(proxy, "GET", "/echo?q=1", host=host(up.port, sid),
                             headers={"E2B-Traffic-Access-Token": "t0k"})
            assert r.status_code == 200, r.text
            assert r.json()["me"] == f"{up.host}:{up.port}" and r.json()["host"] == host(up.port, sid)
        r = http_request(a, "GET", "/echo", host=host(up.port, sid))
        assert r.status_code == 401
    finally:
        a.destroy()
        b.destroy()


async def test_stop_leaves_nothing(etcd_server, etcd, own_prefix):
    p = Proxy(etcd_server.endpoint, own_prefix, node_id="node-s")
    try:
        p.start()
        envoy_pid = p.envoy_pid()
        key = Keys(own_prefix).proxy_applied(p.proxy_id)
        deadline = time.monotonic() + 10
        while await etcd.get(key) is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polls etcd
            await asyncio.sleep(0.05)
        assert await etcd.get(key) is not None
        assert p.proc is not None
        python_pid = p.proc.pid
    finally:
        p.destroy()
    assert not pid_alive(python_pid) and not pid_alive(envoy_pid)
    assert await etcd.get(key) is None  # lease revoked on a graceful stop
    assert not p.envoy_pid_file.exists()
