"""Bad input: each fails with a typed error that says why, and leaves nothing behind."""
from __future__ import annotations

import shutil

import pytest

from services.cubelet.oci import (
    AuthFailed,
    Credentials,
    DigestMismatch,
    ImageNotFound,
    ImageRef,
    InvalidImage,
    RegistryAccess,
    RegistryError,
    UnpackedImage,
    UnsafeLayer,
    WrongArchitecture,
    fetch_image,
    pull_image,
)
from testkit.ports import free_port
from tests.oci.conftest import USER, assert_nothing_left

pytestmark = pytest.mark.timeout(120)


def ref(registry, name: str) -> ImageRef:
    return ImageRef.parse(f"{registry.host}/{name}", insecure=True)


async def expect(error, reference, tmp_path, cache, *, auth=None, match: str, access=None):
    dest = tmp_path / "root"
    with pytest.raises(error, match=match) as info:
        await fetch_image(reference, dest, cache, auth=auth, access=access)
    assert_nothing_left(dest, cache)
    return info.value


async def test_unknown_repository(oci_env, cache, tmp_path):
    await expect(ImageNotFound, ref(oci_env.anon, "nosuch:1"), tmp_path, cache,
                 match="NAME_UNKNOWN|MANIFEST_UNKNOWN", access=oci_env.access)


async def test_unknown_tag(oci_env, cache, tmp_path):
    await expect(ImageNotFound, ref(oci_env.anon, "bb:nosuchtag"), tmp_path, cache,
                 match="MANIFEST_UNKNOWN", access=oci_env.access)


async def test_unknown_digest(oci_env, cache, tmp_path):
    await expect(ImageNotFound, ref(oci_env.anon, "bb@sha256:" + "0" * 64), tmp_path, cache,
                 match="not found", access=oci_env.access)


async def test_basic_auth_wrong_password(oci_env, cache, tmp_path):
    await expect(AuthFailed, ref(oci_env.basic, "bb:1"), tmp_path, cache,
                 auth=Credentials(USER, "wrong"), match="credentials rejected", access=oci_env.access)


async def test_basic_auth_missing_credentials(oci_env, cache, tmp_path):
    await expect(AuthFailed, ref(oci_env.basic, "bb:1"), tmp_path, cache,
                 match="requires credentials", access=oci_env.access)


async def test_token_service_refuses_bad_credentials(oci_env, cache, tmp_path):
    await expect(AuthFailed, ref(oci_env.token, "bb:1"), tmp_path, cache,
                 auth=Credentials(USER, "wrong"), match="token service refused credentials.*401",
                 access=oci_env.access)


async def test_token_without_access_is_refused(oci_env, cache, tmp_path):
    # Anonymous tokens grant nothing outside public/: the registry says insufficient_scope.
    await expect(AuthFailed, ref(oci_env.token, "bb:1"), tmp_path, cache,
                 match="insufficient_scope|UNAUTHORIZED", access=oci_env.access)


async def test_corrupt_layer_in_registry(oci_env, cache, tmp_path):
    image = await pull_image(ref(oci_env.anon, "corrupt:1"), cache, access=oci_env.access)
    layer = image.manifest.layers[0]
    cache.remove(layer.digest)
    blob = oci_env.anon.blob_path(layer.digest)
    saved = blob.read_bytes()
    tampered = bytearray(saved)
    tampered[len(tampered) // 2] ^= 0xFF  # same size, different bytes
    blob.write_bytes(bytes(tampered))
    try:
        error = await expect(DigestMismatch, ref(oci_env.anon, "corrupt:1"), tmp_path, cache,
                             match="digest mismatch", access=oci_env.access)
    finally:
        blob.write_bytes(saved)
    assert error.expected == layer.digest and error.actual != layer.digest
    assert not cache.has(layer.digest)


async def test_arm64_only_manifest(oci_env, cache, tmp_path):
    err = await expect(WrongArchitecture, ref(oci_env.anon, "armonly:1"), tmp_path, cache,
                       match="no linux/amd64", access=oci_env.access)
    assert err.available == ["linux/arm64"]


async def test_arm64_only_index(oci_env, cache, tmp_path):
    err = await expect(WrongArchitecture, ref(oci_env.anon, "armidx:1"), tmp_path, cache,
                       match=r"available: linux/arm64", access=oci_env.access)
    assert err.available == ["linux/arm64"]


async def test_layer_with_path_traversal(oci_env, cache, tmp_path):
    await expect(UnsafeLayer, ref(oci_env.anon, "traversal:1"), tmp_path, cache, match=r"'\.\.'",
                 access=oci_env.access)


async def test_registry_unreachable(cache, tmp_path):
    port = free_port()
    dead = ImageRef.parse(f"127.0.0.1:{port}/bb:1", insecure=True)
    await expect(RegistryError, dead, tmp_path, cache, match="cannot reach",
                 access=RegistryAccess(allowlist=(f"127.0.0.1:{port}",)))


async def test_https_to_plain_http_registry(oci_env, cache, tmp_path):
    # Without insecure=True the client speaks TLS, which a plain registry cannot answer.
    await expect(RegistryError, ImageRef.parse(f"{oci_env.anon.host}/bb:1"), tmp_path, cache,
                 match="cannot reach", access=oci_env.access)


async def test_dest_root_must_be_empty(oci_env, cache, tmp_path):
    dest = tmp_path / "root"
    dest.mkdir()
    (dest / "x").write_text("mine")
    with pytest.raises(FileExistsError):
        await fetch_image(ref(oci_env.anon, "bb:1"), dest, cache, access=oci_env.access)
    assert (dest / "x").read_text() == "mine"


async def test_missing_local_files(cache, tmp_path):
    for text, error in ((f"oci-archive:{tmp_path}/none.tar", ImageNotFound),
                        (f"docker-archive:{tmp_path}/none.tar", ImageNotFound),
                        (f"oci:{tmp_path}/none", ImageNotFound)):
        await expect(error, ImageRef.parse(text), tmp_path, cache, match="does not exist")


async def test_local_unknown_tag(oci_env, cache, tmp_path):
    await expect(ImageNotFound, ImageRef.parse(f"oci-archive:{oci_env.archives['oci-archive']}:nope"),
                 tmp_path, cache, match="no image tagged 'nope'", access=oci_env.access)
    await expect(ImageNotFound,
                 ImageRef.parse(f"docker-archive:{oci_env.archives['docker-archive']}:other:2"),
                 tmp_path, cache, match="no image tagged", access=oci_env.access)


async def test_not_an_archive(cache, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 100)
    await expect(InvalidImage, ImageRef.parse(f"oci-archive:{junk}"), tmp_path, cache,
                 match="not a readable tar")


async def test_corrupt_blob_in_local_layout(oci_env, cache, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(oci_env.layout, layout)
    image = await pull_image(ImageRef.parse(f"oci:{layout}:corrupt"), cache)
    digest = image.manifest.layers[0].digest
    cache.remove(digest)
    path = layout / "blobs/sha256" / digest[7:]
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    await expect(DigestMismatch, ImageRef.parse(f"oci:{layout}:corrupt"), tmp_path, cache,
                 match="digest mismatch")


@pytest.mark.parametrize("phase", ["PULLING", "UNPACKING"])
async def test_cancelled_fetch_leaves_nothing(oci_env, cache, tmp_path, phase):
    import asyncio

    dest = tmp_path / "root"
    task: asyncio.Task[UnpackedImage] | None = None

    def on_progress(p):
        if p.phase.value == phase and task is not None:
            task.cancel()

    task = asyncio.ensure_future(fetch_image(ref(oci_env.anon, "features:1"), dest, cache,
                                             progress=on_progress, access=oci_env.access))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_left(dest, cache)
