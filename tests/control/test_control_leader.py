"""Leader election: two masters, one leads (timers, reconciler); kill -9 the leader and the
standby takes over within the lease TTL and enforces end times. Both serve the API."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.control.cli import cubemastercli
from tests.control.cluster import wait_until

pytestmark = pytest.mark.timeout(90)
H = {"X-API-KEY": "k"}


def test_standby_takes_over_timers(own_cluster):
    c = own_cluster
    c.add_cubelet("node-a")
    first = c.start_master("m-first")
    wait_until(lambda: (c.leader() or {}).get("masterId") == "m-first", what="first leader")
    second = c.start_master("m-second", wait_leader=False)
    # The API talks to the standby: every master serves reads and writes.
    c.start_api(CUBE_MASTER_ADDR=second.address)
    time.sleep(1)
    assert c.leader()["masterId"] == "m-first"
    import json
    assert json.loads(cubemastercli(second.address, "--json", "status").stdout).get("isLeader") is not True

    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base", "timeout": 4})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]

    t0 = time.monotonic()
    first.kill9()
    wait_until(lambda: (c.leader() or {}).get("masterId") == "m-second", timeout=10, what="failover")
    failover_s = time.monotonic() - t0
    assert failover_s < 2 * 2 + 2  # lease TTL is 2 s in tests
    st = json.loads(cubemastercli(second.address, "--json", "status").stdout)
    assert st["isLeader"] is True and st["self"]["masterId"] == "m-second"

    # The new leader's timer kills the sandbox at its end time.
    wait_until(lambda: sid not in c.sandbox_ids(), timeout=10, what="expiry after failover")
    assert c.cubelets[0].ids() == set() and c.route_ids() == set()
    # And the API keeps working through the surviving master.
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"})
    assert r.status_code == 201


def test_clean_shutdown_hands_over_at_once(own_cluster):
    c = own_cluster
    c.add_cubelet("node-a")
    first = c.start_master("m-a")
    c.start_master("m-b", wait_leader=False)
    first.stop()  # SIGTERM: the lease is revoked
    t0 = time.monotonic()
    wait_until(lambda: (c.leader() or {}).get("masterId") == "m-b", timeout=5, what="handover")
    assert time.monotonic() - t0 < 1.5
