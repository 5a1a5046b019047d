"""Blob downloads that the registry redirects to another origin (as registries backed by object
storage do) are followed, and the unpacked image is the same."""
from __future__ import annotations

import httpx
import pytest
from aiohttp import web

from services.cubelet.oci import ImageRef, RegistryAccess, fetch_image
from tests.oci.support import declared_tree, http_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def redirecting_registry(oci_env):
    """Answers manifests itself (forwarded from the real registry) and sends every blob GET to
    the real registry under another host name with a 307, recording what it saw."""
    seen: list[tuple[str, int]] = []
    upstream = f"http://{oci_env.anon.host}"
    other_origin = f"http://localhost:{oci_env.anon.port}"

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if "/blobs/" in path:
            seen.append((path, 307))
            raise web.HTTPTemporaryRedirect(other_origin + path)
        async with httpx.AsyncClient() as c:
            r = await c.get(upstream + path, headers={"Accept": request.headers.get("Accept", "*/*")})
        seen.append((path, r.status_code))
        headers = {k: v for k, v in r.headers.items()
                   if k.lower() in ("content-type", "docker-content-digest")}
        return web.Response(status=r.status_code, body=r.content, headers=headers)

    async with http_server(handle) as address:
        yield address, seen


async def test_blob_redirects_are_followed(oci_env, redirecting_registry, cache, tmp_path):
    host, seen = redirecting_registry
    mark = oci_env.anon.mark()
    # Both origins are allowlisted: every redirect's address is checked like the first.
    access = RegistryAccess(allowlist=(host, f"localhost:{oci_env.anon.port}"))
    redirected_tree = await fetch_image(ImageRef.parse(f"{host}/features:1", insecure=True), tmp_path / "root",
                                        cache, access=access)
    redirected = [p for p, code in seen if code == 307]
    assert len(redirected) == 5  # config + 4 layers
    served = [p for m, p, s in oci_env.anon.requests_since(mark) if "/blobs/" in p]
    assert sorted(served) == sorted(redirected)
    direct = await fetch_image(ImageRef.parse(f"{oci_env.anon.host}/features:1", insecure=True),
                               tmp_path / "direct", cache, access=oci_env.access)
    assert declared_tree(redirected_tree.tree) == declared_tree(direct.tree)
