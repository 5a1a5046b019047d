"""Placement across nodes (real master and etcd, fake nodes): a node that refuses a create (full
since it last reported, its template gone, its server unreachable) is left for the next best
one within the create's deadline; each refused attempt is undone, so etcd ends with exactly the
sandboxes the clients were told about; when every node refuses, the client gets the last node's
error and nothing is left anywhere."""

from __future__ import annotations

import grpc
import pytest

from sdk.gen.cube.v1 import master_pb2 as P
from tests.control.cluster import wait_until

REFUSALS = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND]


def create(cluster, n: int) -> list[P.Sandbox]:
    ch, stub = cluster.master_stub()
    with ch:
        return [stub.CreateSandbox(P.CreateSandboxRequest(template="tiny"), timeout=30) for _ in range(n)]


@pytest.mark.parametrize("code", REFUSALS, ids=lambda c: c.name)
def test_a_refusing_node_is_left_for_the_next(own_cluster, code):
    refusing = own_cluster.add_cubelet("node-a")
    working = own_cluster.add_cubelet("node-b")
    refusing.fail_run = code
    own_cluster.start_master()
    made: list[P.Sandbox] = []
    # The two nodes score alike (both hold the template), so the refusing one is tried first on
    # about half the creates; go on until it was, at least twice.
    for _ in range(40):
        made += create(own_cluster, 1)
        if len(refusing.calls_of("RunSandbox")) >= 2:
            break
    assert len(refusing.calls_of("RunSandbox")) >= 2
    assert {s.node_id for s in made} == {"node-b"}
    # Every refused attempt was undone: etcd and the nodes hold exactly what the client got.
    ids = {s.sandbox_id for s in made}
    assert own_cluster.sandbox_ids() == ids
    assert own_cluster.route_ids() == ids
    assert working.ids() == ids and refusing.ids() == set()
    assert not set(refusing.calls_of("RunSandbox")) & ids


def test_an_unreachable_node_is_left_for_the_next(own_cluster):
    gone = own_cluster.add_cubelet("node-a")
    own_cluster.add_cubelet("node-b")
    gone.stop()  # still registered in etcd, as a node is until its lease lapses
    own_cluster.start_master()
    made = create(own_cluster, 6)
    assert {s.node_id for s in made} == {"node-b"}
    ids = {s.sandbox_id for s in made}
    # The master cannot know whether a VM started on a node it lost mid-call, so each attempt there
    # stays KILLING (no route, not listed) until the node answers or leaves the cluster.
    stuck = own_cluster.sandbox_ids() - ids
    assert all(own_cluster.record(sid)["phase"] == "SANDBOX_PHASE_KILLING" for sid in stuck)
    assert own_cluster.route_ids() == ids
    ch, stub = own_cluster.master_stub()
    with ch:
        listed = stub.ListSandboxRecords(P.ListSandboxRecordsRequest(), timeout=10).sandboxes
    assert {s.sandbox_id for s in listed} == ids
    # Its registration lapses (as its lease would): the reconciler drops what was left there.
    own_cluster.etcd.delete_prefix(f"{own_cluster.prefix}/nodes/node-a")
    wait_until(lambda: own_cluster.sandbox_ids() == ids, timeout=20, what="attempts on node-a undone")


def test_when_every_node_refuses_nothing_is_left(own_cluster):
    nodes = [own_cluster.add_cubelet(f"node-{c}") for c in "abcd"]
    for n in nodes:
        n.fail_run = grpc.StatusCode.RESOURCE_EXHAUSTED
    own_cluster.start_master()
    ch, stub = own_cluster.master_stub()
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.CreateSandbox(P.CreateSandboxRequest(template="tiny"), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fake run failure" in (e.value.details() or "")
    # placement_attempts (3) nodes were tried, one attempt each, and every attempt undone.
    tried = [n for n in nodes if n.calls_of("RunSandbox")]
    assert len(tried) == 3 and all(len(n.calls_of("RunSandbox")) == 1 for n in tried)
    wait_until(lambda: not own_cluster.sandbox_ids(), what="no sandbox records")
    assert not own_cluster.route_ids()
    assert all(not n.ids() for n in nodes)


def test_other_node_errors_are_not_retried(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    b = own_cluster.add_cubelet("node-b")
    a.fail_run = b.fail_run = grpc.StatusCode.INVALID_ARGUMENT
    own_cluster.start_master()
    ch, stub = own_cluster.master_stub()
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.CreateSandbox(P.CreateSandboxRequest(template="tiny"), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A bad request is bad on every node: asked once, not once per node.
    assert len(a.calls_of("RunSandbox")) + len(b.calls_of("RunSandbox")) == 1
    wait_until(lambda: not own_cluster.sandbox_ids(), what="no sandbox records")
