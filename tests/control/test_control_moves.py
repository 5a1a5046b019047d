"""A paused sandbox resumed on another node than the one holding its state (services/master/
sandboxes.py, "Where a paused sandbox resumes"): a real cube-master on a real etcd, with fake nodes
(fake_cubelet.py, a TEST DOUBLE of the node agent, whose "pull" copies the holder's entry).

- The holder draining, full (RESOURCE_EXHAUSTED), or another node named by an operator: the resume
  goes to another node, told where the state is; the record and route then name that node, and
  the holder is told to drop its copy (a holder that cannot be told is cleaned by the reconciler).
- A holder that is not registered: UNAVAILABLE, nothing written, no other node asked.
- A node that refuses the move is passed over; when the move fails, the sandbox stays paused on its
  holder and the refusing node drops what it may hold.
- A draining holder with no other node to go to resumes the sandbox itself; a team's caller may not
  name a node.
- A move whose master died (RESUMING with resume_node_id past its deadline): the reconciler settles
  it on the node it went to when that node runs it (the holder drops its copy), else back on the
  holder (the other node drops what it has).
"""

from __future__ import annotations

import functools
import json

import grpc
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master.scheduler import load_by_node
from tests.control.cluster import Cluster, code_of, rpc, wait_until
from tests.control.teams_support import as_caller

pytestmark = pytest.mark.timeout(120)


def paused_on_a(c: Cluster) -> P.Sandbox:
    """A sandbox created and paused on node-a (the only node at the time)."""
    s = rpc(c, "CreateSandbox", P.CreateSandboxRequest(template="tiny"))
    assert s.node_id == "node-a"
    rpc(c, "PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=s.sandbox_id))
    return s


def connect(c: Cluster, sid: str, node_id: str = "", metadata=()) -> P.ConnectSandboxResponse:
    return rpc(c, "ConnectSandbox", P.ConnectSandboxRequest(sandbox_id=sid, node_id=node_id), metadata)


def route_node(c: Cluster, sid: str) -> str:
    route = c.etcd.get_json(f"{c.prefix}/routes/{sid}")
    assert route is not None
    return route["nodeId"]


def test_a_draining_holder_moves_the_resume_and_drops_its_copy(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    b = own_cluster.add_cubelet("node-b")
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-a"))

    got = connect(own_cluster, s.sandbox_id)
    assert got.resumed and got.sandbox.node_id == "node-b"
    assert b.arrivals == [(s.sandbox_id, "node-a")]  # told where the state is
    assert b.sandboxes[s.sandbox_id].state == C.SANDBOX_STATE_RUNNING
    rec = own_cluster.record(s.sandbox_id)
    assert (rec["phase"], rec["nodeId"], rec.get("resumeNodeId", "")) == ("SANDBOX_PHASE_RUNNING", "node-b", "")
    assert route_node(own_cluster, s.sandbox_id) == "node-b"
    assert s.sandbox_id in a.calls_of("KillSandbox") and s.sandbox_id not in a.ids()
    # Paused again, it is paused where it now runs, and resumes there (node-b is not draining).
    rpc(own_cluster, "PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=s.sandbox_id))
    assert connect(own_cluster, s.sandbox_id).sandbox.node_id == "node-b" and len(b.arrivals) == 1


def test_a_full_holder_moves_the_resume(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    own_cluster.add_cubelet("node-b")
    a.fail_calls["ResumeSandbox"] = grpc.StatusCode.RESOURCE_EXHAUSTED
    got = connect(own_cluster, s.sandbox_id)
    assert got.sandbox.node_id == "node-b" and a.calls_of("ResumeSandbox") == [s.sandbox_id]
    assert s.sandbox_id not in a.ids()


def test_an_operator_names_the_node_and_a_team_may_not(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    own_cluster.add_cubelet("node-b")
    c = own_cluster.add_cubelet("node-c")
    user = as_caller("local", "user")
    assert code_of(functools.partial(connect, own_cluster, s.sandbox_id, "node-c", user)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert own_cluster.record(s.sandbox_id)["phase"] == "SANDBOX_PHASE_PAUSED"
    assert connect(own_cluster, s.sandbox_id, "node-c").sandbox.node_id == "node-c"
    assert c.arrivals == [(s.sandbox_id, "node-a")] and not a.calls_of("ResumeSandbox")


def test_a_lost_holder_still_answers_unavailable(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    b = own_cluster.add_cubelet("node-b")
    before = own_cluster.record(s.sandbox_id)
    own_cluster.etcd.delete(f"{own_cluster.prefix}/nodes/node-a")  # its lease lapsed
    assert code_of(functools.partial(connect, own_cluster, s.sandbox_id)) == grpc.StatusCode.UNAVAILABLE
    assert own_cluster.record(s.sandbox_id) == before and not b.calls_of("ResumeSandbox")


def test_a_refused_move_goes_on_and_a_failed_one_stays_paused_on_its_holder(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    b = own_cluster.add_cubelet("node-b", other_builds=("tiny",))  # another build of the template
    c = own_cluster.add_cubelet("node-c", other_builds=("tiny",))
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-a"))
    code = code_of(functools.partial(connect, own_cluster, s.sandbox_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    rec = own_cluster.record(s.sandbox_id)
    assert (rec["phase"], rec["nodeId"], rec.get("resumeNodeId", "")) == ("SANDBOX_PHASE_PAUSED", "node-a", "")
    assert route_node(own_cluster, s.sandbox_id) == "node-a"
    assert a.ids(C.SANDBOX_STATE_PAUSED) == {s.sandbox_id} and not a.calls_of("KillSandbox")
    for n in (b, c):  # both tried, each told to drop whatever it pulled
        assert n.calls_of("ResumeSandbox") == [s.sandbox_id] and s.sandbox_id in n.calls_of("KillSandbox")

    # A node that fails outright (not a refusal another node may not make): no further tries.
    d = own_cluster.add_cubelet("node-d", fail_calls={"ResumeSandbox": grpc.StatusCode.INTERNAL})
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-b"))
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-c"))
    assert code_of(functools.partial(connect, own_cluster, s.sandbox_id)) != grpc.StatusCode.OK
    assert own_cluster.record(s.sandbox_id)["phase"] == "SANDBOX_PHASE_PAUSED"
    assert d.calls_of("ResumeSandbox") == [s.sandbox_id]

    # The one healthy node left takes it.
    d.fail_calls.clear()
    assert connect(own_cluster, s.sandbox_id).sandbox.node_id == "node-d"


def test_a_draining_holder_alone_resumes_it_itself(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-a"))
    assert connect(own_cluster, s.sandbox_id).sandbox.node_id == "node-a"
    assert a.sandboxes[s.sandbox_id].state == C.SANDBOX_STATE_RUNNING


def test_a_holder_that_cannot_drop_its_copy_is_cleaned_by_the_reconciler(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    s = paused_on_a(own_cluster)
    own_cluster.add_cubelet("node-b")
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-a"))
    a.fail_calls["KillSandbox"] = grpc.StatusCode.UNAVAILABLE
    assert connect(own_cluster, s.sandbox_id).sandbox.node_id == "node-b"
    assert s.sandbox_id in a.ids(C.SANDBOX_STATE_PAUSED)  # the answer did not wait for it
    a.fail_calls.clear()
    # The leader's reconciler finds a copy no record names there (an orphan) and kills it.
    wait_until(lambda: s.sandbox_id not in a.ids(), 20, what="the old copy removed by the reconciler")
    assert own_cluster.record(s.sandbox_id)["nodeId"] == "node-b"


def died_mid_move(c: Cluster, sid: str, target: str) -> None:
    """What a master that died while moving ``sid`` to ``target`` leaves: a RESUMING record naming
    the target, past its deadline."""
    rec = c.record(sid)
    assert rec is not None
    rec.update(phase="SANDBOX_PHASE_RESUMING", resumeNodeId=target, phaseDeadline="2020-01-01T00:00:00Z")
    c.etcd.put(f"{c.prefix}/sandboxes/{sid}", json.dumps(rec))


def test_a_move_whose_master_died_settles_by_what_the_target_reports(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    arrived, stayed = paused_on_a(own_cluster), paused_on_a(own_cluster)
    b = own_cluster.add_cubelet("node-b")
    # The move of the first one got as far as node-b running it; the second's never reached node-b.
    running = C.SandboxStatus()
    running.CopyFrom(a.sandboxes[arrived.sandbox_id])
    running.node_id, running.state = "node-b", C.SANDBOX_STATE_RUNNING
    b.sandboxes[arrived.sandbox_id] = running
    for s in (arrived, stayed):
        died_mid_move(own_cluster, s.sandbox_id, "node-b")

    def settled(sid: str) -> bool:
        rec = own_cluster.record(sid)
        return rec is not None and rec["phase"] in ("SANDBOX_PHASE_RUNNING", "SANDBOX_PHASE_PAUSED")

    wait_until(lambda: settled(arrived.sandbox_id) and settled(stayed.sandbox_id), 20, what="the moves settled")
    rec = own_cluster.record(arrived.sandbox_id)
    assert (rec["phase"], rec["nodeId"], rec.get("resumeNodeId", "")) == ("SANDBOX_PHASE_RUNNING", "node-b", "")
    assert route_node(own_cluster, arrived.sandbox_id) == "node-b"
    wait_until(lambda: arrived.sandbox_id not in a.ids(), 10, what="the holder's copy dropped")
    rec = own_cluster.record(stayed.sandbox_id)
    assert (rec["phase"], rec["nodeId"], rec.get("resumeNodeId", "")) == ("SANDBOX_PHASE_PAUSED", "node-a", "")
    assert stayed.sandbox_id in b.calls_of("KillSandbox") and stayed.sandbox_id in a.ids(C.SANDBOX_STATE_PAUSED)
    assert b.ids() == {arrived.sandbox_id}


def test_a_move_in_flight_loads_the_node_it_goes_to():
    moving = P.Sandbox(sandbox_id="x", node_id="node-a", resume_node_id="node-b", memory_mb=512,
                       phase=P.SANDBOX_PHASE_RESUMING)
    load = load_by_node([moving])
    assert "node-a" not in load and (load["node-b"].active, load["node-b"].pending_memory_mb) == (1, 512)
