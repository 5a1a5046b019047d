"""Nodes as operators run them, and sandboxes whose node is lost: real cube-master (and cube-api)
processes on a real etcd, with fake nodes (fake_cubelet.py, a TEST DOUBLE of the node agent).

A node's registration lapsing is simulated by deleting its key (what its lease expiry does), its
return by registering it again; the fake keeps its sandboxes meanwhile, as a cubelet re-adopts its
VMs.
"""

from __future__ import annotations

import functools
import json

import grpc
import httpx
import pytest
from e2b.api.client.models import ListedSandbox, SandboxDetail, SandboxState
from google.protobuf import json_format

from cube_common.mtls import Role, TlsFiles, sync_channel
from deploy.pki import node_dirs
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P, master_pb2_grpc
from services.master import errors
from services.master.node_admin import check_node_id, node_views
from services.master.scheduler import rank
from testkit.etcd import EtcdServer
from tests.control.cli import cubemastercli
from tests.control.cluster import Cluster, code_of, rpc, wait_until
from tests.control.teams_support import as_caller

pytestmark = pytest.mark.timeout(120)
H = {"X-API-KEY": "e2b_" + "0" * 40}


# ---- helpers ------------------------------------------------------------------------------------

def create(c: Cluster, n: int = 1, metadata=()) -> list[P.Sandbox]:
    ch, stub = c.master_stub()
    with ch:
        return [stub.CreateSandbox(P.CreateSandboxRequest(template="tiny"), metadata=metadata, timeout=30)
                for _ in range(n)]


def nodes_json(c: Cluster) -> dict[str, dict]:
    return {n["status"]["nodeId"]: n for n in json.loads(cubemastercli(c.masters[0].address, "--json", "node",
                                                                       "list").stdout)}


def node_table(c: Cluster) -> dict[str, dict[str, str]]:
    lines = cubemastercli(c.masters[0].address, "node", "list").stdout.splitlines()
    head = lines[0].split()
    return {row.split()[0]: dict(zip(head, row.split(), strict=True)) for row in lines[1:]}


def phase(c: Cluster, sid: str) -> str | None:
    rec = c.record(sid)
    return rec["phase"] if rec else None


def lose(c: Cluster, node_id: str) -> None:
    """The node's registration goes, as when its lease lapses."""
    c.etcd.delete(f"{c.prefix}/nodes/{node_id}")


def fails_in_one_line(p, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], p.stderr


# ---- drain, undrain ----------------------------------------------------------------------------

def test_a_draining_node_gets_no_new_sandboxes_and_keeps_its_own(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    m = own_cluster.masters[0].address
    running, paused = create(own_cluster, 2)
    rpc(own_cluster, "PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=paused.sandbox_id))
    b = own_cluster.add_cubelet("node-b")

    out = cubemastercli(m, "node", "drain", "node-a", "--reason", "kernel upgrade").stdout
    assert "node-a draining" in out and "1 running and 1 paused" in out
    admin = own_cluster.etcd.get_json(f"{own_cluster.prefix}/node-admin/node-a")
    assert admin["draining"] is True and admin["reason"] == "kernel upgrade"
    # The drain is the master's record: the node rewriting its registration (every heartbeat) keeps it.
    a.register(own_cluster.etcd, own_cluster.prefix)
    table = node_table(own_cluster)
    assert (table["node-a"]["STATE"], table["node-b"]["STATE"]) == ("draining", "ready")
    assert (table["node-a"]["RUNNING"], table["node-a"]["PAUSED"], table["node-a"]["TEMPLATES"]) == ("1", "1", "2")
    assert nodes_json(own_cluster)["node-a"]["admin"]["reason"] == "kernel upgrade"

    made = create(own_cluster, 8)
    assert {s.node_id for s in made} == {"node-b"} and not set(a.calls_of("RunSandbox")) - {running.sandbox_id,
                                                                                              paused.sandbox_id}
    # What runs there stays; the paused one resumes on another node, which pulls its state
    # (test_control_moves.py has the details).
    assert phase(own_cluster, running.sandbox_id) == "SANDBOX_PHASE_RUNNING"
    resumed = rpc(own_cluster, "ConnectSandbox", P.ConnectSandboxRequest(sandbox_id=paused.sandbox_id))
    assert resumed.resumed and resumed.sandbox.node_id == "node-b"
    assert b.sandboxes[paused.sandbox_id].state == C.SANDBOX_STATE_RUNNING and paused.sandbox_id not in a.ids()

    # Draining again is no error and changes nothing but the reason.
    cubemastercli(m, "node", "drain", "node-a")
    # With every node draining, a create has nowhere to go.
    cubemastercli(m, "node", "drain", "node-b")
    ch, stub = own_cluster.master_stub()
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.CreateSandbox(P.CreateSandboxRequest(template="tiny"), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    out = cubemastercli(m, "node", "undrain", "node-a").stdout
    assert "node-a ready" in out
    assert own_cluster.etcd.get(f"{own_cluster.prefix}/node-admin/node-a") is None
    assert {s.node_id for s in create(own_cluster, 3)} == {"node-a"}
    cubemastercli(m, "node", "undrain", "node-a")  # idempotent too
    assert b.ids() == {s.sandbox_id for s in made} | {paused.sandbox_id}


def test_template_builds_avoid_a_draining_node_unless_named(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.add_cubelet("node-b")
    own_cluster.start_master()
    rpc(own_cluster, "DrainNode", P.DrainNodeRequest(node_id="node-a"))
    build = C.BuildTemplateRequest(oci_image=C.OciImageSource(reference="registry.example/app:1"),
                                   writable_layer_mb=256, probe_port=8080, expose_ports=[8080])
    jobs = [rpc(own_cluster, "CreateTemplateBuild", P.CreateTemplateBuildRequest(build=build)) for _ in range(3)]
    assert {j.node_id for j in jobs} == {"node-b"}
    named = rpc(own_cluster, "CreateTemplateBuild", P.CreateTemplateBuildRequest(build=build, node_id="node-a"))
    assert named.node_id == "node-a"


# ---- errors -----------------------------------------------------------------------------------

def test_node_commands_refuse_bad_input_in_one_line(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    m = own_cluster.masters[0].address
    for args in (("drain", "node-x"), ("undrain", "node-x"), ("remove", "node-x"), ("remove", "node-x", "--force")):
        fails_in_one_line(cubemastercli(m, "node", *args, check=False), "NOT_FOUND", "node 'node-x' not found")
    for bad in ("a/b", "tab\there", "x" * 254):
        fails_in_one_line(cubemastercli(m, "node", "drain", bad, check=False), "INVALID_ARGUMENT", "invalid node id")
    fails_in_one_line(cubemastercli(m, "node", "drain", "node-a", "--reason", "x" * 300, check=False),
                      "INVALID_ARGUMENT", "reason")
    # Nothing was written by a refused call.
    assert own_cluster.keys("node-admin/") == []
    assert nodes_json(own_cluster)["node-a"]["state"] == "NODE_STATE_READY"
    # The same codes over gRPC.
    assert code_of(lambda: rpc(own_cluster, "DrainNode", P.DrainNodeRequest())) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: rpc(own_cluster, "RemoveNode", P.RemoveNodeRequest(node_id="nope"))) == \
        grpc.StatusCode.NOT_FOUND


def test_node_rpcs_are_for_admins(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    user = as_caller("local", "user")
    for method, req in (("DrainNode", P.DrainNodeRequest(node_id="node-a")),
                        ("UndrainNode", P.UndrainNodeRequest(node_id="node-a")),
                        ("RemoveNode", P.RemoveNodeRequest(node_id="node-a", force=True))):
        assert code_of(functools.partial(rpc, own_cluster, method, req, user)) == grpc.StatusCode.PERMISSION_DENIED, \
            method
    assert own_cluster.keys("nodes/") == [f"{own_cluster.prefix}/nodes/node-a"]


# ---- remove -----------------------------------------------------------------------------------

def test_remove_refuses_a_node_with_sandboxes_unless_forced(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    m = own_cluster.masters[0].address
    running, paused = create(own_cluster, 2)
    rpc(own_cluster, "PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=paused.sandbox_id))
    cubemastercli(m, "node", "drain", "node-a")

    p = cubemastercli(m, "node", "remove", "node-a", check=False)
    fails_in_one_line(p, "FAILED_PRECONDITION", "holds 2 sandbox(es)", "1 paused", "1 running", "--force")
    assert own_cluster.etcd.get(f"{own_cluster.prefix}/nodes/node-a") is not None
    assert own_cluster.route_ids() == {running.sandbox_id, paused.sandbox_id}

    p = cubemastercli(m, "node", "remove", "node-a", "--force")
    assert "removed node node-a" in p.stdout and running.sandbox_id in p.stdout and paused.sandbox_id in p.stdout
    assert own_cluster.keys("nodes/") == [] and own_cluster.keys("node-admin/") == []
    for s in (running, paused):
        rec = own_cluster.record(s.sandbox_id)
        assert rec["phase"] == "SANDBOX_PHASE_LOST" and "removed by an operator" in rec["lostReason"]
    assert own_cluster.route_ids() == set()
    # The records still name it: listed as lost, with them.
    assert node_table(own_cluster)["node-a"]["STATE"] == "lost" and node_table(own_cluster)["node-a"]["LOST"] == "2"

    # Its cubelet was still running after all: it registers again, and the leader restores both.
    a.register(own_cluster.etcd, own_cluster.prefix)
    wait_until(lambda: (phase(own_cluster, running.sandbox_id), phase(own_cluster, paused.sandbox_id)) ==
               ("SANDBOX_PHASE_RUNNING", "SANDBOX_PHASE_PAUSED"), what="both restored")
    assert own_cluster.route_ids() == {running.sandbox_id, paused.sandbox_id}
    assert own_cluster.etcd.get_json(f"{own_cluster.prefix}/routes/{paused.sandbox_id}")["state"] == \
        "ROUTE_STATE_PAUSED"
    assert node_table(own_cluster)["node-a"]["STATE"] == "ready"  # the drain went with the removal

    # Without sandboxes it goes at once; a node gone for good stays gone.
    rpc(own_cluster, "KillSandboxRecord", P.KillSandboxRecordRequest(sandbox_id=running.sandbox_id))
    rpc(own_cluster, "KillSandboxRecord", P.KillSandboxRecordRequest(sandbox_id=paused.sandbox_id))
    r = rpc(own_cluster, "RemoveNode", P.RemoveNodeRequest(node_id="node-a"))
    assert r.removed and not r.sandboxes_lost and not r.still_heartbeating  # the fake holds no lease
    assert nodes_json(own_cluster) == {}


# ---- lost nodes and their sandboxes ----------------------------------------------------------

def test_a_lost_node_and_its_return(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    own_cluster.start_api()
    m, api = own_cluster.masters[0].address, own_cluster.api_url
    kept, vanishing, paused = (s.sandbox_id for s in create(own_cluster, 3))
    rpc(own_cluster, "PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=paused))
    own_cluster.add_cubelet("node-b")

    lose(own_cluster, "node-a")
    wait_until(lambda: phase(own_cluster, kept) == phase(own_cluster, vanishing) == "SANDBOX_PHASE_LOST",
               what="node-a's running sandboxes lost")
    # Traffic stops: no route to a node that may be gone. The paused one keeps its state there.
    assert own_cluster.route_ids() == {paused}
    assert phase(own_cluster, paused) == "SANDBOX_PHASE_PAUSED"

    # The E2B API says so with E2B's state (its SDK's own models parse the answers) and the reason.
    got = httpx.get(f"{api}/sandboxes/{kept}", headers=H)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["state"] == "running" and body["lost"] is True and "node 'node-a' was lost" in body["lostReason"]
    assert SandboxDetail.from_dict(body).state == SandboxState.RUNNING
    listed = {s["sandboxID"]: s for s in httpx.get(f"{api}/v2/sandboxes", headers=H).json()}
    assert listed.keys() == {kept, vanishing, paused}
    assert listed[kept]["lost"] is True and "lost" not in listed[paused]
    assert all(ListedSandbox.from_dict(s).sandbox_id for s in listed.values())
    running_only = httpx.get(f"{api}/v2/sandboxes", params={"state": "running"}, headers=H).json()
    assert {s["sandboxID"] for s in running_only} == {kept, vanishing}
    # What cannot be done now answers 503 with the reason, and changes nothing.
    for path in (f"/sandboxes/{kept}/connect", f"/sandboxes/{kept}/timeout"):
        r = httpx.post(api + path, headers=H, json={"timeout": 60})
        assert r.status_code == 503 and "unreachable" in r.json()["message"], r.text
    r = httpx.post(f"{api}/sandboxes/{paused}/connect", headers=H, json={})
    assert r.status_code == 503 and "paused on node 'node-a'" in r.json()["message"], r.text
    assert phase(own_cluster, paused) == "SANDBOX_PHASE_PAUSED"
    # The operator sees it too.
    table = cubemastercli(m, "sandbox", "list").stdout
    row = next(line for line in table.splitlines() if line.startswith(kept))
    assert " lost " in row and "registration lapsed" in row
    assert {s["sandboxId"] for s in json.loads(cubemastercli(m, "--json", "sandbox", "list", "--state",
                                                             "lost").stdout)} == {kept, vanishing}
    assert "registration lapsed" in cubemastercli(m, "sandbox", "info", kept).stdout
    nodes = node_table(own_cluster)
    assert (nodes["node-a"]["STATE"], nodes["node-a"]["LOST"], nodes["node-a"]["PAUSED"]) == ("lost", "2", "1")
    # New sandboxes go elsewhere.
    assert {s.node_id for s in create(own_cluster, 3)} == {"node-b"}

    # The node comes back: what it still runs is restored (record and route), what it lost is gone.
    with a._lock:
        del a.sandboxes[vanishing]
    a.register(own_cluster.etcd, own_cluster.prefix)
    wait_until(lambda: phase(own_cluster, kept) == "SANDBOX_PHASE_RUNNING", what="restored")
    wait_until(lambda: phase(own_cluster, vanishing) is None, what="the vanished one removed")
    assert {kept, paused} <= own_cluster.route_ids() and vanishing not in own_cluster.route_ids()
    body = httpx.get(f"{api}/sandboxes/{kept}", headers=H).json()
    assert body["state"] == "running" and "lost" not in body
    assert httpx.post(f"{api}/sandboxes/{paused}/connect", headers=H, json={}).status_code == 201
    assert node_table(own_cluster)["node-a"]["STATE"] == "ready"


def test_kill_of_a_lost_sandbox(own_cluster):
    a = own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    own_cluster.start_api()
    gone, back = (s.sandbox_id for s in create(own_cluster, 2))
    lose(own_cluster, "node-a")
    wait_until(lambda: phase(own_cluster, gone) == phase(own_cluster, back) == "SANDBOX_PHASE_LOST", what="lost")

    # Its node away: the record goes; nothing can be told to the node.
    assert httpx.delete(f"{own_cluster.api_url}/sandboxes/{gone}", headers=H).status_code == 204
    assert phase(own_cluster, gone) is None
    assert httpx.get(f"{own_cluster.api_url}/sandboxes/{gone}", headers=H).status_code == 404

    # Its node back but not answering the leader yet (the record stays lost): the kill reaches the node.
    a.fail_calls["ListSandboxes"] = grpc.StatusCode.UNAVAILABLE
    asked = len(a.calls_of("ListSandboxes"))
    a.register(own_cluster.etcd, own_cluster.prefix)
    wait_until(lambda: len(a.calls_of("ListSandboxes")) >= asked + 4, what="the leader asking the returning node")
    assert phase(own_cluster, back) == "SANDBOX_PHASE_LOST"
    assert httpx.delete(f"{own_cluster.api_url}/sandboxes/{back}", headers=H).status_code == 204
    assert phase(own_cluster, back) is None and back in a.calls_of("KillSandbox") and back not in a.ids()
    # The VM of the one killed while its node was away is an orphan now: the reconciler kills it.
    a.fail_calls.clear()
    wait_until(lambda: gone not in a.ids(), timeout=20, what="the orphan killed")
    assert own_cluster.sandbox_ids() == set() and own_cluster.route_ids() == set()


def test_lost_sandboxes_hold_no_quota_and_expire(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master(CUBE_MASTER_LOST_RETENTION_S="3")
    rpc(own_cluster, "SetTeamQuota", P.SetTeamQuotaRequest(team_id="local", max_running=1))
    team = as_caller("local", "user")
    (first,) = create(own_cluster, 1, metadata=team)
    assert code_of(lambda: create(own_cluster, 1, metadata=team)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    own_cluster.add_cubelet("node-b")
    lose(own_cluster, "node-a")
    wait_until(lambda: phase(own_cluster, first.sandbox_id) == "SANDBOX_PHASE_LOST", what="lost")
    # The team replaces it at once.
    (second,) = create(own_cluster, 1, metadata=team)
    assert second.node_id == "node-b"
    used = rpc(own_cluster, "ListTeams", P.ListTeamsRequest()).teams
    assert next(t for t in used if t.team_id == "local").usage.running == 1
    # And the lost record goes after the retention (3 s here).
    wait_until(lambda: phase(own_cluster, first.sandbox_id) is None, timeout=15, what="lost record expired")
    assert own_cluster.sandbox_ids() == {second.sandbox_id}


def test_node_list_shows_the_last_heartbeat(own_cluster):
    own_cluster.add_cubelet("node-a")
    b = own_cluster.add_cubelet("node-b")
    own_cluster.start_master()
    # node-b registers the way a cubelet does: under a lease it renews (granted here, never renewed).
    lease = int(own_cluster.etcd._post("/v3/lease/grant", {"TTL": 60})["ID"])
    own_cluster.etcd.put(f"{own_cluster.prefix}/nodes/node-b", json_format.MessageToJson(b.node_status(),
                                                                                         indent=None), lease=lease)
    nodes = nodes_json(own_cluster)
    assert "heartbeatAt" in nodes["node-b"] and "heartbeatAt" not in nodes["node-a"]
    table = node_table(own_cluster)
    assert table["node-a"]["HEARTBEAT"] == "-" and table["node-b"]["HEARTBEAT"].endswith("s")
    assert int(table["node-b"]["HEARTBEAT"][:-1]) < 30
    assert table["node-b"]["MEMORY"] == "6.0G/8.0G" and table["node-b"]["MAX"] == "-"
    assert table["node-b"]["CAN-TAKE"] == "-"  # a node that does not say (the fake reports no headroom)


# ---- who may call ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secure(pki):
    etcd = EtcdServer(pki=pki).start()
    c = Cluster(etcd.endpoint, pki=pki)
    try:
        c.add_cubelet("node-a")
        c.start_master()
        yield c
    finally:
        c.stop()
        etcd.destroy()


NODE_CALLS = [("DrainNode", P.DrainNodeRequest(node_id="node-a")),
              ("UndrainNode", P.UndrainNodeRequest(node_id="node-a")),
              ("RemoveNode", P.RemoveNodeRequest(node_id="node-a", force=True))]


@pytest.mark.parametrize("role,metadata", [(Role.API, as_caller("acme", "admin")), (Role.API, ()),
                                           (Role.PROXY, ()), (Role.CUBELET, ())],
                         ids=["api-as-admin", "api", "proxy", "cubelet"])
@pytest.mark.parametrize("method,request_", NODE_CALLS, ids=[m for m, _ in NODE_CALLS])
def test_only_an_operator_certificate_administers_nodes(secure, pki, role, metadata, method, request_):
    with sync_channel(secure.masters[0].address, TlsFiles(node_dirs(pki)[role]), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        got = code_of(lambda: getattr(stub, method)(request_, metadata=metadata, timeout=10))
    assert got == grpc.StatusCode.PERMISSION_DENIED
    assert secure.keys("nodes/") == [f"{secure.prefix}/nodes/node-a"] and secure.keys("node-admin/") == []


def test_the_operator_certificate_administers_nodes(secure, pki):
    with sync_channel(secure.masters[0].address, TlsFiles(node_dirs(pki)[Role.OPERATOR]), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        assert stub.DrainNode(P.DrainNodeRequest(node_id="node-a"), timeout=10).state == P.NODE_STATE_DRAINING
        assert stub.UndrainNode(P.UndrainNodeRequest(node_id="node-a"), timeout=10).state == P.NODE_STATE_READY


# ---- units ---------------------------------------------------------------------------------------

def _node(nid: str, templates=("tiny",)) -> C.NodeStatus:
    return C.NodeStatus(node_id=nid, address=f"{nid}:1", templates=list(templates), memory_total_bytes=8 << 30,
                        memory_available_bytes=6 << 30)


def test_rank_never_offers_a_draining_node():
    nodes = [_node("a"), _node("b", templates=())]
    # Locality would pick a; drained, b is the only candidate.
    assert [c.node.node_id for c in rank(nodes, "tiny", 512, {}, draining={"a"})] == ["b"]
    with pytest.raises(errors.Exhausted):
        rank(nodes, "tiny", 512, {}, draining={"a", "b"})


def test_node_views_join_registration_admin_and_records():
    sb = [P.Sandbox(sandbox_id="s1", node_id="a", phase=P.SANDBOX_PHASE_RUNNING),
          P.Sandbox(sandbox_id="s2", node_id="gone", phase=P.SANDBOX_PHASE_LOST),
          P.Sandbox(sandbox_id="s3", node_id="gone", phase=P.SANDBOX_PHASE_PAUSED)]
    admins = [P.NodeAdmin(node_id="b", draining=True), P.NodeAdmin(node_id="old", draining=True)]
    views = {v.status.node_id: v for v in node_views([_node("a"), _node("b")], admins, sb, {"a": 1e9})}
    assert {k: v.state for k, v in views.items()} == {"a": P.NODE_STATE_READY, "b": P.NODE_STATE_DRAINING,
                                                      "gone": P.NODE_STATE_LOST, "old": P.NODE_STATE_LOST}
    assert (views["a"].sandboxes_running, views["gone"].sandboxes_lost, views["gone"].sandboxes_paused) == (1, 1, 1)
    assert views["a"].HasField("heartbeat_at") and not views["b"].HasField("heartbeat_at")
    assert views["old"].admin.draining and not views["a"].HasField("admin")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 254, "new\nline", "nul\x00"])
def test_malformed_node_ids(bad):
    with pytest.raises(errors.InvalidArgument):
        check_node_id(bad)
    check_node_id("node-a.example.com")
