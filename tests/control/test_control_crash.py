"""Crash consistency: kill -9 of the master or the node agent in the middle of a create leaves,
after restart and reconciliation, every sandbox either running and reachable (record, route, VM)
or gone with nothing left. Also the reconciler's other repairs."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from google.protobuf import json_format

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P, route_pb2
from tests.control.cluster import Cluster, wait_until

pytestmark = pytest.mark.timeout(120)
H = {"X-API-KEY": "k"}
FAST_OPS = {"CUBE_MASTER_NODE_OP_TIMEOUT_S": "4"}


def _create_in_background(c: Cluster) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go():
        try:
            result["r"] = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=60)
        except Exception as e:  # noqa: BLE001
            result["e"] = e
    t = threading.Thread(target=go)
    t.start()
    return t, result


def _nothing_left(c: Cluster) -> bool:
    return c.sandbox_ids() == set() and c.route_ids() == set() and all(n.ids() == set() for n in c.cubelets)


def _consistent(c: Cluster) -> bool:
    recs = {sid: c.record(sid) for sid in c.sandbox_ids()}
    on_nodes = set().union(*(n.ids() for n in c.cubelets))
    return (all(r is not None and r["phase"] == "SANDBOX_PHASE_RUNNING" for r in recs.values())
            and set(recs) == c.route_ids() == on_nodes)


def test_master_killed_mid_create(own_cluster):
    c = own_cluster
    node = c.add_cubelet("node-a", run_delay_s=1.5)
    m = c.start_master("m1", **FAST_OPS)
    c.start_api()
    t, result = _create_in_background(c)
    assert node.run_started.wait(10)
    creating = wait_until(lambda: c.sandbox_ids(), what="CREATING record")
    (sid,) = creating
    assert c.record(sid)["phase"] == "SANDBOX_PHASE_CREATING"
    m.kill9()
    t.join(30)
    assert result["r"].status_code == 503 and result["r"].json()["code"] == 503
    wait_until(lambda: node.ids() == {sid}, what="the VM the dead master asked for")  # it came up anyway

    c.start_master("m2", port=m.port, **FAST_OPS)  # the supervisor restarts it
    wait_until(lambda: _nothing_left(c), timeout=20, what="reconciler undoing the create")
    assert sid in node.calls_of("KillSandbox")
    # The cluster works normally again through the same API.
    node.run_delay_s = 0
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"})
    assert r.status_code == 201, r.text
    assert _consistent(c)


def test_a_dead_masters_create_is_undone_without_waiting_for_its_deadline(own_cluster):
    """The master carrying a create dies (a standby: the leader stays); its presence lapses with
    its lease, and the leader's reconciler undoes the create at once, not at the create's
    deadline (a minute here), so nothing half-made holds a VM or a quota slot meanwhile."""
    import json

    from tests.control.cli import cubemastercli
    c = own_cluster
    node = c.add_cubelet("node-a", run_delay_s=1.5)
    leader = c.start_master("m-lead", CUBE_MASTER_NODE_OP_TIMEOUT_S="60")
    standby = c.start_master("m-standby", wait_leader=False, CUBE_MASTER_NODE_OP_TIMEOUT_S="60")
    st = json.loads(cubemastercli(leader.address, "--json", "status").stdout)
    assert [m["masterId"] for m in st["masters"]] == ["m-lead", "m-standby"]
    assert all(m["incarnation"].startswith(m["masterId"] + "/") for m in st["masters"])
    c.start_api(CUBE_MASTER_ADDR=standby.address)
    t, result = _create_in_background(c)
    assert node.run_started.wait(10)
    (sid,) = wait_until(lambda: c.sandbox_ids(), what="CREATING record")
    rec = c.record(sid)
    assert rec["phase"] == "SANDBOX_PHASE_CREATING"
    owner = next(m["incarnation"] for m in st["masters"] if m["masterId"] == "m-standby")
    assert rec["transitionOwner"] == owner
    standby.kill9()
    t.join(30)
    assert result["r"].status_code == 503
    # Well inside the create's 60 s deadline: the lease (2 s here) and a reconcile pass.
    wait_until(lambda: _nothing_left(c), timeout=20, what="the leader undoing the dead master's create")
    assert sid in node.calls_of("KillSandbox")
    st = json.loads(cubemastercli(leader.address, "--json", "status").stdout)
    assert [m["masterId"] for m in st["masters"]] == ["m-lead"] and st["isLeader"] is True


def test_cubelet_killed_mid_create(own_cluster):
    c = own_cluster
    node = c.add_cubelet("node-a", run_delay_s=1.0)
    c.start_master("m1", **FAST_OPS)
    c.start_api()
    t, result = _create_in_background(c)
    assert node.run_started.wait(10)
    node.stop()  # the agent dies; its QEMU (the dict) survives and is re-adopted on restart
    t.join(30)
    assert result["r"].status_code == 503, result["r"].text
    (sid,) = c.sandbox_ids()
    assert c.record(sid)["phase"] == "SANDBOX_PHASE_KILLING"  # waiting for the node to come back
    assert c.route_ids() == set()
    time.sleep(1.2)
    assert node.ids() == {sid}  # the VM finished booting after all
    node.run_delay_s = 0
    node.start()
    node.register(c.etcd, c.prefix)  # the restarted cubelet re-registers (new address)
    wait_until(lambda: _nothing_left(c), timeout=20, what="reconciler killing the VM")


def _put(c: Cluster, key: str, msg) -> None:
    c.etcd.put(f"{c.prefix}/{key}", json_format.MessageToJson(msg, indent=None))


def _old(seconds_ago: float):
    from google.protobuf.timestamp_pb2 import Timestamp
    t = Timestamp()
    t.FromNanoseconds(int((time.time() - seconds_ago) * 1e9))
    return t


def test_reconciler_repairs(fresh):
    c = fresh
    node = c.cubelets[0]
    # 1. A VM the node runs that etcd does not know: killed once past the orphan grace (2 s);
    #    a brand-new one is left alone until then (it may be a create in flight).
    with node._lock:
        node.sandboxes["orphanold000000000000"] = C.SandboxStatus(
            sandbox_id="orphanold000000000000", state=C.SANDBOX_STATE_RUNNING, started_at=_old(60))
        node.sandboxes["orphannew000000000000"] = C.SandboxStatus(
            sandbox_id="orphannew000000000000", state=C.SANDBOX_STATE_RUNNING, started_at=_old(0))
    # 2. A route without a sandbox.
    _put(c, "routes/strayroute0000000000", route_pb2.SandboxRoute(sandbox_id="strayroute0000000000"))
    # 3. A RUNNING record whose VM is gone.
    _put(c, "sandboxes/vanished000000000000", P.Sandbox(
        sandbox_id="vanished000000000000", node_id="node-a", phase=P.SANDBOX_PHASE_RUNNING, updated_at=_old(30),
        end_at=_old(-300)))
    # 4. A PAUSING record past its deadline whose VM the node has paused; 5. RESUMING, running.
    for sid, phase, state in (("stalepausing00000000", P.SANDBOX_PHASE_PAUSING, C.SANDBOX_STATE_PAUSED),
                              ("staleresuming0000000", P.SANDBOX_PHASE_RESUMING, C.SANDBOX_STATE_RUNNING)):
        with node._lock:
            node.sandboxes[sid] = C.SandboxStatus(sandbox_id=sid, state=state, host_address="198.19.9.9",
                                                  started_at=_old(60))
        _put(c, f"sandboxes/{sid}", P.Sandbox(sandbox_id=sid, node_id="node-a", phase=phase, phase_deadline=_old(5),
                                             end_at=_old(-300), updated_at=_old(5)))
    # 6. A CREATING record past its deadline: undone (the client never got an answer).
    with node._lock:
        node.sandboxes["stalecreating0000000"] = C.SandboxStatus(sandbox_id="stalecreating0000000",
                                                                 state=C.SANDBOX_STATE_RUNNING, started_at=_old(60))
    _put(c, "sandboxes/stalecreating0000000", P.Sandbox(sandbox_id="stalecreating0000000", node_id="node-a",
                                                       phase=P.SANDBOX_PHASE_CREATING, phase_deadline=_old(5)))

    wait_until(lambda: "orphanold000000000000" not in node.ids(), timeout=10, what="old orphan killed")
    assert "orphannew000000000000" in node.ids()
    wait_until(lambda: "strayroute0000000000" not in c.route_ids(), timeout=10, what="stray route deleted")
    wait_until(lambda: "vanished000000000000" not in c.sandbox_ids(), timeout=10, what="vanished record removed")
    wait_until(lambda: (c.record("stalepausing00000000") or {}).get("phase") == "SANDBOX_PHASE_PAUSED", timeout=10,
               what="pausing settled")
    assert c.etcd.get_json(f"{c.prefix}/routes/stalepausing00000000")["state"] == "ROUTE_STATE_PAUSED"
    wait_until(lambda: (c.record("staleresuming0000000") or {}).get("phase") == "SANDBOX_PHASE_RUNNING", timeout=10,
               what="resuming settled")
    route = c.etcd.get_json(f"{c.prefix}/routes/staleresuming0000000")
    assert route["state"] == "ROUTE_STATE_RUNNING" and route["hostAddress"] == "198.19.9.9"
    wait_until(lambda: "stalecreating0000000" not in c.sandbox_ids() and "stalecreating0000000" not in node.ids(),
               timeout=10, what="creating undone")
    wait_until(lambda: "orphannew000000000000" not in node.ids(), timeout=10, what="new orphan killed after grace")
