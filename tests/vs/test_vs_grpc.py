"""The gRPC contract: every RPC against a real node datapath, and the status codes of bad input."""

from __future__ import annotations

import grpc
import pytest

from sdk.gen.cube.v1 import network_pb2, vs_pb2, vs_pb2_grpc
from services.vs.server import serve
from testkit.vs_lab import INET_IP, tcp_reachable
from tests.vs.conftest import needs_root

pytestmark = [needs_root, pytest.mark.timeout(180)]


@pytest.fixture
def stub(node, tmp_path):
    server = serve(node, f"unix://{tmp_path}/vs.sock", max_workers=4)
    channel = grpc.insecure_channel(f"unix://{tmp_path}/vs.sock")
    try:
        yield vs_pb2_grpc.CubeVSStub(channel)
    finally:
        channel.close()
        server.stop(grace=1).wait()


def code_of(fn, *args) -> tuple[grpc.StatusCode, str]:
    """The status code and message of the error the call must fail with."""
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, timeout=30)
    return ei.value.code(), ei.value.details() or ""


def test_allocate_get_list_update_stats_release(lab, stub, guest_endpoint, node):
    lab.server("inet", "0.0.0.0", 8080)
    r = stub.Allocate(vs_pb2.AllocateRequest(
        sandbox_id="sbx-1", policy=network_pb2.NetworkPolicy(allow_out=["203.0.113.0/24"], deny_out=["0.0.0.0/0"],
                                                             exposed_ports=[49983])), timeout=30)
    n = r.network
    assert r.warm and n.tap.startswith("cvs") and n.host_address == "198.19.0.2" and n.proxy_address == "198.19.0.1"
    assert (n.guest.ip, n.guest.prefix_len, n.guest.gateway_ip, n.guest.mac) == (
        "169.254.0.21", 30, "169.254.0.22", "02:fc:00:00:00:15")
    # Unset allow_internet_access means E2B's default: true.
    assert n.policy.allow_internet_access and list(n.policy.exposed_ports) == [49983]

    g = guest_endpoint(node.get("sbx-1"))
    assert tcp_reachable(g.ns, INET_IP, 8080)

    assert stub.Get(vs_pb2.GetRequest(sandbox_id="sbx-1"), timeout=30).network == n
    assert [x.sandbox_id for x in stub.List(vs_pb2.ListRequest(), timeout=30).networks] == ["sbx-1"]

    u = stub.UpdatePolicy(vs_pb2.UpdatePolicyRequest(
        sandbox_id="sbx-1", policy=network_pb2.NetworkPolicy(allow_internet_access=False)), timeout=30)
    assert u.network.policy.allow_internet_access is False
    assert not tcp_reachable(g.ns, INET_IP, 8080)

    st = stub.Stats(vs_pb2.StatsRequest(sandbox_ids=["sbx-1"]), timeout=30).stats[0]
    assert st.sandbox_id == "sbx-1" and st.egress_packets > 0 and st.ingress_packets > 0
    assert st.drops["policy"] > 0

    s = stub.Status(vs_pb2.StatusRequest(), timeout=30)
    assert s.sandboxes == 1 and s.pool_cidr == "198.19.0.0/16" and "up-inet" in s.uplinks

    stub.Release(vs_pb2.ReleaseRequest(sandbox_id="sbx-1"), timeout=30)
    assert not stub.List(vs_pb2.ListRequest(), timeout=30).networks


def test_reconcile_rpc(stub):
    for sid in ("a", "b"):
        stub.Allocate(vs_pb2.AllocateRequest(sandbox_id=sid), timeout=30)
    r = stub.Reconcile(vs_pb2.ReconcileRequest(cleanup_only=True), timeout=30)
    assert not r.released
    r = stub.Reconcile(vs_pb2.ReconcileRequest(live_sandbox_ids=["a", "zzz"]), timeout=30)
    assert list(r.released) == ["b"] and list(r.missing) == ["zzz"]


def test_errors_have_clear_codes(stub):
    C = grpc.StatusCode
    cases = [
        (stub.Allocate,
         vs_pb2.AllocateRequest(sandbox_id="x", policy=network_pb2.NetworkPolicy(allow_out=["1.2.3.4/40"])),
         C.INVALID_ARGUMENT, "not a valid IP address or CIDR"),
        (stub.Allocate, vs_pb2.AllocateRequest(sandbox_id="x", policy=network_pb2.NetworkPolicy(
            deny_out=[f"8.8.{i}.0/24" for i in range(200)])), C.INVALID_ARGUMENT, "at most 128"),
        (stub.Allocate,
         vs_pb2.AllocateRequest(sandbox_id="x", policy=network_pb2.NetworkPolicy(allow_out=["pypi.org"])),
         C.INVALID_ARGUMENT, "domain name"),
        (stub.Allocate, vs_pb2.AllocateRequest(sandbox_id=""), C.INVALID_ARGUMENT, "sandbox_id"),
        (stub.Allocate, vs_pb2.AllocateRequest(sandbox_id="x", guest=network_pb2.GuestNetwork(mac="zz")),
         C.INVALID_ARGUMENT, "MAC"),
        (stub.UpdatePolicy, vs_pb2.UpdatePolicyRequest(sandbox_id="ghost", policy=network_pb2.NetworkPolicy()),
         C.NOT_FOUND, "ghost"),
        (stub.Release, vs_pb2.ReleaseRequest(sandbox_id="ghost"), C.NOT_FOUND, "ghost"),
        (stub.Get, vs_pb2.GetRequest(sandbox_id="ghost"), C.NOT_FOUND, "ghost"),
        (stub.Stats, vs_pb2.StatsRequest(sandbox_ids=["ghost"]), C.NOT_FOUND, "ghost"),
    ]
    for fn, req, code, text in cases:
        got, details = code_of(fn, req)
        assert got == code and text in details, (req, got, details)
    stub.Allocate(vs_pb2.AllocateRequest(sandbox_id="x"), timeout=30)
    assert code_of(stub.Allocate, vs_pb2.AllocateRequest(sandbox_id="x"))[0] == C.ALREADY_EXISTS
    assert code_of(stub.UpdatePolicy, vs_pb2.UpdatePolicyRequest(sandbox_id="x"))[0] == C.INVALID_ARGUMENT


def test_exhaustion_is_resource_exhausted(make_node, tmp_path):
    node = make_node(max_sandboxes=2, pool_size=1)
    server = serve(node, f"unix://{tmp_path}/vs2.sock", max_workers=2)
    ch = grpc.insecure_channel(f"unix://{tmp_path}/vs2.sock")
    try:
        stub = vs_pb2_grpc.CubeVSStub(ch)
        stub.Allocate(vs_pb2.AllocateRequest(sandbox_id="a"), timeout=30)
        r = stub.Allocate(vs_pb2.AllocateRequest(sandbox_id="b"), timeout=30)
        assert r.network.tap
        code, details = code_of(stub.Allocate, vs_pb2.AllocateRequest(sandbox_id="c"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details
    finally:
        ch.close()
        server.stop(grace=1).wait()
