"""Mutual TLS between components (cube_common/mtls.py, deploy/pki.py) over real gRPC connections."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import ssl
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from cube_common import certs, mtls
from cube_common.mtls import Identity, Role, TlsFiles
from deploy.pki import Pki, node_dirs

SERVICE = "cube.test.Echo"


def tls(root, role: Role) -> TlsFiles:
    return TlsFiles(node_dirs(root)[role])


async def _say(request: bytes, context) -> bytes:
    peer = mtls.peer_identity(context)
    return f"{peer} said {request.decode()}".encode()


async def _count(request: bytes, context):
    for i in range(int(request)):
        yield str(i).encode()


async def serve(server_tls: TlsFiles | None, gate: mtls.RoleGate | None):
    server = grpc.aio.server(interceptors=[gate] if gate else [])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
    })])
    port = mtls.add_port(server, "127.0.0.1:0", server_tls)
    await server.start()
    return server, f"127.0.0.1:{port}"


async def call(address: str, client_tls: TlsFiles | None, server_role: Role, method: str = "Say",
               body: bytes = b"hi"):
    async with mtls.aio_channel(address, client_tls, server_role) as ch:
        if method == "Say":
            return await ch.unary_unary(f"/{SERVICE}/Say", None, None)(body, timeout=5)
        return [x async for x in ch.unary_stream(f"/{SERVICE}/Count", None, None)(body, timeout=5)]


def test_the_node_command_issues_private_directories_with_one_identity_each(pki):
    assert (pki / "ca").stat().st_mode & 0o777 == 0o700
    for role, path in node_dirs(pki).items():
        assert path.stat().st_mode & 0o777 == 0o700
        assert (path / "tls.key").stat().st_mode & 0o777 == 0o600
        assert TlsFiles(path).identity() == Identity(role, "n1")
        leaf = x509.load_pem_x509_certificate((path / "tls.crt").read_bytes())
        names = certs.sans(leaf)
        assert names is not None
        if role in (Role.OPERATOR, Role.API, Role.ENVOY):  # clients only: no server name to claim
            assert names.get_values_for_type(x509.DNSName) == []
        else:
            assert f"{role.value}.cube.internal" in names.get_values_for_type(x509.DNSName)


def test_the_node_command_keeps_what_is_still_good(pki, tmp_path):
    before = {r: (p / "tls.crt").read_bytes() for r, p in node_dirs(pki).items()}
    Pki(pki).node("n1")
    assert {r: (p / "tls.crt").read_bytes() for r, p in node_dirs(pki).items()} == before
    # A directory gone bad (here: a key others can read) is issued again, the rest kept.
    other = Pki(tmp_path)
    other.node("n1")
    os.chmod(tmp_path / "vs" / "tls.key", 0o644)
    kept = (tmp_path / "api" / "tls.crt").read_bytes()
    other.node("n1")
    assert (tmp_path / "vs" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "api" / "tls.crt").read_bytes() == kept


def test_the_cluster_ca_vouches_only_for_its_names(pki, tmp_path):
    ca = Pki(pki).ensure_ca()
    # Even a certificate the CA's own key signs fails a real verifier outside its names.
    for dns, ips, name in ((["example.com"], [], "example.com"),
                           ([], [ipaddress.ip_address("10.1.2.3")], "10.1.2.3")):
        key, leaf = ca.issue("evil", days=1, dns=dns, ips=ips, server=True)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)name constraint|permitted|excluded"):
            _handshake(ca, key, leaf, name, tmp_path)
    key, leaf = ca.issue("ok", days=1, dns=["master.cube.internal"], server=True)
    _handshake(ca, key, leaf, "master.cube.internal", tmp_path)


def _handshake(ca: certs.Authority, key, leaf, name: str, tmp: Path) -> None:
    """A TLS handshake over a socket pair: the server presents ``leaf``, the client trusts ``ca``
    and expects ``name``; raises what the client's verifier says."""
    certs.write_key(tmp / "k", key)
    (tmp / "c").write_bytes(certs.cert_pem(leaf))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(tmp / "c"), str(tmp / "k"))
    client_ctx = ssl.create_default_context(cadata=certs.cert_pem(ca.cert).decode())
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def server_side():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=server_side)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=name) as c:
            c.sendall(b"x")
    finally:
        b.close()
        t.join(5)


async def test_a_peer_with_an_allowed_role_is_served_and_named(pki):
    server, addr = await serve(tls(pki, Role.CUBELET), mtls.RoleGate({Role.MASTER}))
    try:
        assert await call(addr, tls(pki, Role.MASTER), Role.CUBELET) == b"master/n1 said hi"
    finally:
        await server.stop(None)


async def test_peers_without_a_valid_certificate_or_role_are_refused(pki, other_pki):
    server, addr = await serve(tls(pki, Role.CUBELET),
                               mtls.RoleGate({Role.MASTER}, {"Count": {Role.OPERATOR}}))
    try:
        # No certificate at all: the handshake fails, no handler runs.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(addr, None, Role.CUBELET)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # A certificate from another CA (same role and names).
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(addr, tls(other_pki, Role.MASTER), Role.CUBELET)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # A valid certificate of a role the service does not serve.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(addr, tls(pki, Role.VS), Role.CUBELET)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "vs certificate" in str(e.value.details())
        # Per-method rules, on a streaming method too.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(addr, tls(pki, Role.MASTER), Role.CUBELET, "Count", b"3")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await call(addr, tls(pki, Role.OPERATOR), Role.CUBELET, "Count", b"3") == [b"0", b"1", b"2"]
    finally:
        await server.stop(None)


async def test_a_client_checks_the_role_of_the_server_it_reaches(pki):
    # A vs certificate answering where the master should be: the client refuses it.
    server, addr = await serve(tls(pki, Role.VS), None)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(addr, tls(pki, Role.API), Role.MASTER)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await call(addr, tls(pki, Role.API), Role.VS) == b"api/n1 said hi"
    finally:
        await server.stop(None)


async def test_a_plaintext_server_sees_no_peer(pki):
    server, addr = await serve(None, None)
    try:
        assert await call(addr, None, Role.MASTER) == b"None said hi"
    finally:
        await server.stop(None)


def test_a_key_others_can_read_is_refused(pki, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(node_dirs(pki)[Role.API], d)
    os.chmod(d / "tls.key", 0o644)
    with pytest.raises(mtls.TlsError, match="chmod 600"):
        mtls.files(d)
    with pytest.raises(mtls.TlsError, match="No such file"):
        mtls.files(tmp_path / "missing")
    assert mtls.files(None) is None


def test_identities_are_bounded():
    assert mtls.parse_uri("spiffe://cube.internal/master/n1") == Identity(Role.MASTER, "n1")
    for bad in ("spiffe://cube.internal/root/n1", "spiffe://cube.internal/master/a/b",
                "spiffe://other/master/n1", "spiffe://cube.internal/master/" + "x" * 64,
                "spiffe://cube.internal/master/"):
        assert mtls.parse_uri(bad) is None
