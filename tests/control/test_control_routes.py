"""A create answers only once every live proxy has applied its route (cube_common/route_ack.py
protocol: <prefix>/proxy/<id>/applied_revision); a proxy that lags past the deadline makes the
create fail with 503 and leave nothing behind."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)
H = {"X-API-KEY": "k"}


def test_create_waits_for_proxies(own_cluster):
    c = own_cluster
    node = c.add_cubelet("node-a")
    c.start_master(CUBE_MASTER_ROUTE_ACK_TIMEOUT_S="1")
    c.start_api()
    key = f"{c.prefix}/proxy/p1/applied_revision"

    c.etcd.put(key, "1")  # a live proxy stuck at an old revision
    t0 = time.monotonic()
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=30)
    assert r.status_code == 503 and "route" in r.json()["message"]
    assert time.monotonic() - t0 < 5
    assert c.sandbox_ids() == set() and c.route_ids() == set() and node.ids() == set()

    # A proxy that applies what it sees: the create answers as soon as it has.
    stop = threading.Event()

    def proxy():
        while not stop.is_set():
            if c.route_ids():
                rev = c.etcd.http.post(f"{c.etcd.base}/v3/kv/range", json={"key": "eA=="}).json()["header"]["revision"]
                c.etcd.put(key, str(int(rev)))
                return
            time.sleep(0.05)
    t = threading.Thread(target=proxy)
    t.start()
    try:
        r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=30)
        assert r.status_code == 201, r.text
        assert c.route_ids() == {r.json()["sandboxID"]}
    finally:
        stop.set()
        t.join()
        c.etcd.delete(key)
