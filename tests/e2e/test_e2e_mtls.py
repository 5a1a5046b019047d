"""The node `make up` runs proves who is calling on every internal hop: raw calls to the master,
the cubelet, CubeVS and etcd without a certificate from the node's CA, or with one of a role that
has no business there, are refused before anything happens; the node's own certificates work."""
from __future__ import annotations

import os
import ssl
import subprocess

import grpc
import httpx
import pytest

from cube_common.mtls import Role, TlsFiles, server_name, sync_channel
from deploy.pki import Pki, node_dirs
from sdk.gen.cube.v1 import cubelet_pb2, cubelet_pb2_grpc, master_pb2, master_pb2_grpc, vs_pb2, vs_pb2_grpc
from testkit.etcd import gateway
from tests.e2e.cluster import CFG, REPO


def tls(role: Role) -> TlsFiles:
    return CFG.tls(role)


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> TlsFiles:
    """An operator certificate with the right names from another CA."""
    root = tmp_path_factory.mktemp("other-ca")
    Pki(root).node("intruder")
    return TlsFiles(node_dirs(root)[Role.OPERATOR])


def code_of(address: str, cert: TlsFiles | None, server: Role, call) -> grpc.StatusCode:
    with sync_channel(address, cert, server) as ch:
        try:
            call(ch)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def master_call(ch):
    master_pb2_grpc.MasterStub(ch).ListTeams(master_pb2.ListTeamsRequest(), timeout=10)


def cubelet_call(ch):
    cubelet_pb2_grpc.CubeletStub(ch).GetNode(cubelet_pb2.GetNodeRequest(), timeout=10)


def vs_call(ch):
    vs_pb2_grpc.CubeVSStub(ch).Status(vs_pb2.StatusRequest(), timeout=10)


VS = f"unix://{CFG.vs_socket_path}"


def test_the_node_keeps_its_certificates_private():
    assert (CFG.pki / "ca").stat().st_mode & 0o777 == 0o700
    for role in Role:
        d = tls(role).dir
        assert d.stat().st_mode & 0o777 == 0o700, d
        assert tls(role).key.stat().st_mode & 0o777 == 0o600
        assert tls(role).identity().role is role


@pytest.mark.parametrize("address,server,call,allowed,refused", [
    (CFG.master_addr, Role.MASTER, master_call, Role.OPERATOR, Role.CUBELET),
    (CFG.cubelet_addr, Role.CUBELET, cubelet_call, Role.MASTER, Role.API),
    (VS, Role.VS, vs_call, Role.CUBELET, Role.MASTER),
])
def test_every_grpc_hop_checks_its_peer(stranger, address, server, call, allowed, refused):
    assert code_of(address, tls(allowed), server, call) == grpc.StatusCode.OK
    assert code_of(address, None, server, call) == grpc.StatusCode.UNAVAILABLE  # no certificate
    assert code_of(address, stranger, server, call) == grpc.StatusCode.UNAVAILABLE  # another CA
    assert code_of(address, tls(refused), server, call) == grpc.StatusCode.PERMISSION_DENIED


def test_etcd_requires_a_client_certificate(stranger):
    url = f"https://{CFG.etcd_endpoint}"
    body = {"key": "L2N1YmUv", "range_end": "L2N1YmUw", "count_only": True}  # /cube/ .. /cube0
    assert int(gateway(url, "/v3/kv/range", body, tls(Role.OPERATOR)).get("count", 0)) > 0  # the node's state
    with pytest.raises(httpx.HTTPError):  # a certificate from another CA
        gateway(url, "/v3/kv/range", body, stranger)
    # Trusting etcd but presenting no certificate: no TLS session either.
    no_cert = ssl.create_default_context(cafile=str(tls(Role.OPERATOR).ca))
    with httpx.Client(verify=no_cert, trust_env=False) as c, pytest.raises(httpx.HTTPError):
        c.post(f"{url}/v3/kv/range", json=body, extensions={"sni_hostname": server_name(Role.ETCD)}, timeout=10)
    with pytest.raises(httpx.HTTPError):  # nor plaintext
        gateway(f"http://{CFG.etcd_endpoint}", "/v3/kv/range", body)


def test_cubemastercli_finds_the_operator_certificate_by_itself():
    """After `make up`, the CLI works with nothing set (sdk.client finds
    $CUBE_STATE_DIR/pki/operator); CUBE_TLS_DIR= (empty) forces plaintext, which the master refuses."""
    env = {k: v for k, v in os.environ.items() if k != "CUBE_TLS_DIR"}
    env["CUBE_STATE_DIR"] = str(CFG.state_dir)
    cli = [str(REPO / ".venv/bin/cubemastercli"), "--master", CFG.master_addr, "team", "list"]
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "local" in r.stdout, r.stderr
    r = subprocess.run(cli, env={**env, "CUBE_TLS_DIR": ""}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "CUBE_TLS_DIR" in r.stderr


def test_no_service_logs_a_sandboxes_secrets(sandboxes):
    """Env vars and access tokens live in etcd and on the node; no log line may carry them, even
    after the sandbox ran, was paused, resumed and killed."""
    secret = "cube-secret-" + os.urandom(8).hex()
    sbx = sandboxes.create(envs={"CUBE_TEST_SECRET": secret})
    assert sbx.commands.run("echo $CUBE_TEST_SECRET").stdout.strip() == secret
    token = sbx._envd_access_token
    assert token
    sbx.pause()
    sbx.connect()
    sbx.kill()
    for log in CFG.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert secret not in text and token not in text, f"{log.name} holds a sandbox's secret"
