"""The master under mutual TLS: a real cube-master and cube-api (subprocesses) on an etcd that
requires client certificates, with certificates from deploy/pki.py. Who may call what is decided by
the peer's certificate (services/master/caller.py), and a peer without one is not served at all."""

from __future__ import annotations

import grpc
import httpx
import pytest

from cube_common.mtls import Role, TlsFiles, sync_channel
from cube_common.teams import ROLE_METADATA, TEAM_METADATA
from deploy.pki import node_dirs
from sdk.client import CubeClient, CubeError, Status
from sdk.gen.cube.v1 import master_pb2 as P, master_pb2_grpc
from testkit.etcd import EtcdServer
from tests.control.cluster import Cluster, code_of


@pytest.fixture(scope="module")
def secure(pki):
    etcd = EtcdServer(pki=pki).start()
    c = Cluster(etcd.endpoint, pki=pki)
    try:
        c.start_master()
        c.start_api(CUBE_AUTH="on")
        yield c
    finally:
        c.stop()
        etcd.destroy()


def stub(c: Cluster, pki, role: Role | None) -> tuple[grpc.Channel, master_pb2_grpc.MasterStub]:
    tls = TlsFiles(node_dirs(pki)[role]) if role else None
    ch = sync_channel(c.masters[0].address, tls, Role.MASTER)
    return ch, master_pb2_grpc.MasterStub(ch)


def test_a_peer_without_a_certificate_is_not_served(secure, pki):
    ch, m = stub(secure, pki, None)
    with ch:
        assert code_of(lambda: m.ListTeams(P.ListTeamsRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        assert code_of(lambda: m.CreateApiKey(P.CreateApiKeyRequest(name="x", team_id="local"),
                                              timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # The operator's client says what to do about it.
    with CubeClient(secure.masters[0].address, tls_dir="") as cube, pytest.raises(CubeError) as e:
        cube.list_teams()
    assert e.value.code == Status.UNAVAILABLE and "CUBE_TLS_DIR" in e.value.message


def test_the_operator_certificate_is_admin(secure, pki):
    with CubeClient(secure.masters[0].address, tls_dir=node_dirs(pki)[Role.OPERATOR]) as cube:
        cube.create_team("acme")
        assert "acme" in {t.team_id for t in cube.list_teams()}
        key, _secret = cube.create_api_key("ci", team="acme")
        assert key.team_id == "acme"


API_AS_TEAM = ((TEAM_METADATA, "acme"), (ROLE_METADATA, "admin"))
API_AS_USER = ((TEAM_METADATA, "acme"), (ROLE_METADATA, "user"))


@pytest.mark.parametrize("role,metadata,rpc,want", [
    # The API acts for the team it names, even with an admin key never for operator-only calls.
    (Role.API, API_AS_TEAM, "ListSandboxRecords", grpc.StatusCode.OK),
    (Role.API, API_AS_TEAM, "ListTeams", grpc.StatusCode.PERMISSION_DENIED),
    (Role.API, API_AS_TEAM, "CreateApiKey", grpc.StatusCode.PERMISSION_DENIED),
    # Its one operator read (GET /nodes, the web console), for an admin caller only.
    (Role.API, API_AS_TEAM, "ListNodes", grpc.StatusCode.OK),
    (Role.API, API_AS_USER, "ListNodes", grpc.StatusCode.PERMISSION_DENIED),
    (Role.API, (), "ListNodes", grpc.StatusCode.PERMISSION_DENIED),
    (Role.PROXY, (), "ListNodes", grpc.StatusCode.PERMISSION_DENIED),
    # Without naming a team it may only validate keys.
    (Role.API, (), "ValidateApiKey", grpc.StatusCode.UNAUTHENTICATED),  # reached the check: bad key
    (Role.API, (), "ListSandboxRecords", grpc.StatusCode.PERMISSION_DENIED),
    # The proxy only wakes sandboxes, as the cluster.
    (Role.PROXY, (), "GetSandbox", grpc.StatusCode.NOT_FOUND),
    (Role.PROXY, (), "ListSandboxRecords", grpc.StatusCode.PERMISSION_DENIED),
    (Role.PROXY, API_AS_TEAM, "GetSandbox", grpc.StatusCode.PERMISSION_DENIED),
    # Components that never call the master are refused, whatever they claim.
    (Role.CUBELET, (), "ListTeams", grpc.StatusCode.PERMISSION_DENIED),
    (Role.VS, API_AS_TEAM, "ListSandboxRecords", grpc.StatusCode.PERMISSION_DENIED),
    (Role.ENVOY, (), "GetSandbox", grpc.StatusCode.PERMISSION_DENIED),
])
def test_what_each_certificate_may_do(secure, pki, role, metadata, rpc, want):
    requests = {"ListSandboxRecords": P.ListSandboxRecordsRequest(), "ListTeams": P.ListTeamsRequest(),
                "CreateApiKey": P.CreateApiKeyRequest(name="x", team_id="acme"),
                "ValidateApiKey": P.ValidateApiKeyRequest(key="e2b_" + "1" * 40),
                "GetSandbox": P.GetSandboxRequest(sandbox_id="inohere0000000000000"),
                "ListNodes": P.ListNodesRequest()}
    ch, m = stub(secure, pki, role)
    with ch:
        got = code_of(lambda: getattr(m, rpc)(requests[rpc], metadata=metadata, timeout=10))
    assert got == want


def test_the_api_reaches_the_master_with_its_certificate(secure, pki):
    with CubeClient(secure.masters[0].address, tls_dir=node_dirs(pki)[Role.OPERATOR]) as cube:
        cube.create_team("beta")
        _key, secret = cube.create_api_key("sdk", team="beta")
    r = httpx.get(f"{secure.api_url}/sandboxes", headers={"X-API-KEY": secret}, timeout=30)
    assert r.status_code == 200 and r.json() == []
    r = httpx.get(f"{secure.api_url}/sandboxes", headers={"X-API-KEY": "e2b_" + "2" * 40}, timeout=30)
    assert r.status_code == 401 and set(r.json()) == {"code", "message"}


def test_the_api_lists_nodes_for_admin_keys_only(secure, pki):
    """GET /nodes reaches the master's ListNodes with the API's certificate for an admin key."""
    with CubeClient(secure.masters[0].address, tls_dir=node_dirs(pki)[Role.OPERATOR]) as cube:
        cube.create_team("gamma")
        _key, user = cube.create_api_key("user", team="gamma")
        _key, admin = cube.create_api_key("ops", team="gamma", admin=True)
    r = httpx.get(f"{secure.api_url}/nodes", headers={"X-API-KEY": admin}, timeout=30)
    assert r.status_code == 200 and r.json() == []  # this cluster has no node
    r = httpx.get(f"{secure.api_url}/nodes", headers={"X-API-KEY": user}, timeout=30)
    assert r.status_code == 403 and set(r.json()) == {"code", "message"}
