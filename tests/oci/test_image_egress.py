"""Registry pulls are not a way into the node's network: loopback, private, link-local and metadata
addresses are refused unless allowlisted, whether named in the reference, reached through a name,
a redirect or a token realm; the address checked is the one connected to; what a registry says
in an error body is not echoed; a manifest over 4 MiB and a config over 4 MiB are refused.

Every refusal here happens before a connection is opened (so the only traffic is to loopback:
the test registry and the hostile registry this file runs on 127.0.0.1)."""
from __future__ import annotations

import ipaddress
import json
import socket

import httpcore
import pytest
from aiohttp import web

from services.cubelet.oci import (
    AuthFailed,
    ImageNotFound,
    ImageRef,
    ImageTooLarge,
    RegistryAccess,
    RegistryError,
    RegistryNotAllowed,
    fetch_image,
)
from services.cubelet.oci.egress import GuardedBackend, refusal
from tests.oci.conftest import assert_nothing_left
from tests.oci.support import http_server

pytestmark = pytest.mark.timeout(60)
SECRET = "SECRET-INTERNAL-DATA"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fd00::1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local, cloud metadata"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared address space"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local, cloud metadata"),
    ("64:ff9b::a00:1", "private"), ("2002:a9fe:a9fe::1", "link-local, cloud metadata"),
    ("224.0.0.1", "multicast"), ("198.18.0.1", "not a global address"), ("240.0.0.1", "not a global address"),
])
def test_blocked_addresses(address, why):
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"])
def test_public_addresses(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_allowlist_entries():
    access = RegistryAccess(allowlist=("registry.lan", "127.0.0.1:5000", "[::1]:5001", "10.0.0.7"))
    assert access.allows_host("registry.lan", 443) and access.allows_host("REGISTRY.LAN.", 1)
    assert access.allows_host("127.0.0.1", 5000) and not access.allows_host("127.0.0.1", 5001)
    assert access.allows_host("::1", 5001) and not access.allows_host("::1", 5000)
    assert access.allows_host("10.0.0.7", 80) and not access.allows_host("10.0.0.8", 80)
    with pytest.raises(ValueError, match="bad registry allowlist entry"):
        RegistryAccess(allowlist=("host:port",))


async def test_the_checked_address_is_the_one_connected(monkeypatch):
    """The name is resolved once, by the guard, and the connection goes to that address: a second
    resolution (a DNS rebinding answer) never happens."""
    answers = {"public.test": [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
                               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))],
               "rebound.test": [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443)),
                                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%2", 443, 0, 2))]}
    resolved: list[str] = []
    connected: list[str] = []

    async def getaddrinfo(host, port, **kw):
        resolved.append(host)
        return answers[host]

    async def connect_tcp(self, host, port, **kw):
        connected.append(host)
        raise httpcore.ConnectError("not connecting anywhere in a test")

    import asyncio

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
    guard = GuardedBackend(RegistryAccess())
    with pytest.raises(httpcore.ConnectError):
        await guard.connect_tcp("public.test", 443)
    assert connected == ["93.184.216.34"]  # the address, not the name; never the loopback one
    with pytest.raises(RegistryNotAllowed, match=r"127\.0\.0\.1 \(loopback\), fe80::1 \(link-local\)"):
        await guard.connect_tcp("rebound.test", 443)
    assert resolved == ["public.test", "rebound.test"] and connected == ["93.184.216.34"]


@pytest.mark.parametrize("reference, match", [
    ("169.254.169.254/latest/meta-data:1", r"169\.254\.169\.254 \(link-local, cloud metadata\)"),
    ("10.0.0.1:5000/app:1", r"10\.0\.0\.1 \(private\)"),
    ("192.168.0.10/app:1", r"192\.168\.0\.10 \(private\)"),
    ("[fd12::1]:5000/app:1", r"fd12::1 \(private\)"),
    ("[::ffff:127.0.0.1]:5000/app:1", r"::ffff:127\.0\.0\.1 \(loopback\)"),
    ("100.100.100.200/app:1", r"100\.100\.100\.200 \(shared address space\)"),  # Alibaba's metadata
    ("0.0.0.0:5000/app:1", r"0\.0\.0\.0 \(unspecified\)"),
])
async def test_refused_registries(reference, match, cache, tmp_path):
    dest = tmp_path / "root"
    for insecure in (True, False):
        with pytest.raises(RegistryNotAllowed, match=match):
            await fetch_image(ImageRef.parse(reference, insecure=insecure), dest, cache)
    assert_nothing_left(dest, cache)


async def test_loopback_registry_needs_the_allowlist(oci_env, cache, tmp_path):
    mark = oci_env.anon.mark()
    for host in (oci_env.anon.host, f"localhost:{oci_env.anon.port}"):  # by address and by name
        with pytest.raises(RegistryNotAllowed, match=r"loopback.*registry_allowlist"):
            await fetch_image(ImageRef.parse(f"{host}/bb:1", insecure=True), tmp_path / "root", cache)
    assert oci_env.anon.requests_since(mark) == []  # refused before connecting
    # An allowlisted name lets that name through (on that port only), whatever it resolves to.
    named = RegistryAccess(allowlist=(f"localhost:{oci_env.anon.port}",))
    unpacked = await fetch_image(ImageRef.parse(f"localhost:{oci_env.anon.port}/bb:1", insecure=True),
                                 tmp_path / "root", cache, access=named)
    assert (unpacked.root / "bin/busybox").is_file()
    with pytest.raises(RegistryNotAllowed):
        await fetch_image(ImageRef.parse(f"{oci_env.anon.host}/bb:1", insecure=True), tmp_path / "root2",
                          cache, access=named)
    # An operator's build (allow_private) may pull from anywhere.
    await fetch_image(ImageRef.parse(f"{oci_env.anon.host}/bb:1", insecure=True), tmp_path / "root3", cache,
                      access=RegistryAccess(allow_private=True))


@pytest.fixture
async def hostile_registry(oci_env):
    """A registry on 127.0.0.1 (allowlisted by the tests) that misbehaves by repository."""
    upstream = f"http://{oci_env.anon.host}"
    anon_by_name = f"http://localhost:{oci_env.anon.port}"

    async def forward(request: web.Request, path: str) -> web.Response:
        import httpx

        async with httpx.AsyncClient() as c:
            r = await c.get(upstream + path, headers={"Accept": request.headers.get("Accept", "*/*")})
        headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "docker-content-digest")}
        return web.Response(status=r.status_code, body=r.content, headers=headers)

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        repo = path.split("/")[2] if path.count("/") >= 3 else ""
        if repo == "huge":  # a 5 MiB manifest
            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "annotations": {"pad": "x" * (5 << 20)}}
            return web.Response(body=json.dumps(doc).encode(), content_type=OCI_MANIFEST)
        if repo == "bigconfig":  # a config descriptor of 5 MiB: refused before it is fetched
            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 5 << 20,
                              "digest": "sha256:" + "ab" * 32}}
            if "/blobs/" in path:
                raise AssertionError("the config must not be fetched")
            return web.Response(body=json.dumps(doc).encode(), content_type=OCI_MANIFEST)
        if repo == "secret":  # an internal service's answer: its body must not reach the user
            return web.Response(status=500, reason=f"Oops {SECRET}", text=f"{SECRET}: db password hunter2",
                                headers={"X-Debug": SECRET})
        if repo == "secret404":
            body = {"errors": [{"code": "NAME_UNKNOWN", "message": SECRET, "detail": SECRET}]}
            return web.json_response(body, status=404)
        if repo == "hugeerror":  # a 32 MiB error body: read only as far as a status line needs
            return web.Response(status=502, body=b"x" * (32 << 20))
        if repo == "to-metadata":
            raise web.HTTPTemporaryRedirect("http://169.254.169.254/latest/meta-data/iam/")
        if repo == "to-loopback-name":  # the test registry, by a name that resolves to loopback
            raise web.HTTPTemporaryRedirect(anon_by_name + path.replace("/to-loopback-name/", "/bb/"))
        if repo == "blobs-to-private":
            if "/blobs/" in path:
                raise web.HTTPTemporaryRedirect("http://10.20.30.40:9000/bucket" + path)
            return await forward(request, path.replace("/blobs-to-private/", "/bb/"))
        if repo == "token-to-metadata":
            return web.Response(status=401, headers={
                "WWW-Authenticate": 'Bearer realm="http://169.254.169.254/token",service="x",scope="y"'})
        raise web.HTTPNotFound()

    async with http_server(handle) as address:
        yield address, RegistryAccess(allowlist=(address,))


@pytest.mark.parametrize("repo, error, match", [
    ("to-metadata", RegistryNotAllowed, r"169\.254\.169\.254:80 resolves only to .*cloud metadata"),
    ("to-loopback-name", RegistryNotAllowed, r"localhost:\d+ resolves only to .*loopback"),
    ("blobs-to-private", RegistryNotAllowed, r"10\.20\.30\.40:9000 .*private"),
    ("token-to-metadata", RegistryNotAllowed, r"169\.254\.169\.254:80"),
    ("huge", ImageTooLarge, "manifest: larger than the limit of 4194304 bytes"),
    ("bigconfig", ImageTooLarge, "config sha256:abab.* is 5242880 bytes, more than the limit of 4194304"),
])
async def test_hostile_registry(hostile_registry, cache, tmp_path, repo, error, match):
    host, access = hostile_registry
    dest = tmp_path / "root"
    with pytest.raises(error, match=match):
        await fetch_image(ImageRef.parse(f"{host}/{repo}:1", insecure=True), dest, cache, access=access)
    assert_nothing_left(dest, cache)


@pytest.mark.parametrize("repo, error, expected", [
    ("secret", RegistryError, "manifest 1: HTTP 500 Internal Server Error"),
    ("secret404", ImageNotFound, "manifest 1: not found: HTTP 404 Not Found (NAME_UNKNOWN)"),
    ("hugeerror", RegistryError, "manifest 1: HTTP 502 Bad Gateway"),
])
async def test_error_bodies_are_not_echoed(hostile_registry, cache, tmp_path, repo, error, expected):
    host, access = hostile_registry
    with pytest.raises(error) as info:
        await fetch_image(ImageRef.parse(f"{host}/{repo}:1", insecure=True), tmp_path / "root", cache,
                          access=access)
    assert str(info.value) == f"{host}/{repo}:1: {expected}"
    assert SECRET not in str(info.value)


async def test_auth_errors_carry_codes_only(oci_env, cache, tmp_path):
    """The token-auth registry's refusal names the RFC 6750 error and the distribution code, and
    nothing else of what it answered."""
    with pytest.raises(AuthFailed) as info:
        await fetch_image(ImageRef.parse(f"{oci_env.token.host}/bb:1", insecure=True), tmp_path / "root",
                          cache, access=oci_env.access)
    assert "insufficient_scope" in str(info.value) and "HTTP 401 Unauthorized (UNAUTHORIZED)" in str(info.value)
    assert "authentication required" not in str(info.value)  # the registry's message text
