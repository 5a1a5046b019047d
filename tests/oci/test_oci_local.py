"""Local sources (OCI layout directory, oci-archive, docker-archive, all written by skopeo/umoci)
give the same image as the registry."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from services.cubelet.oci import ImageRef, Phase, Progress, fetch_image, pull_image
from tests.oci.support import declared_tree


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo | str) -> bytes:
    f = tf.extractfile(member)
    assert f is not None, f"{member} is not a regular file"
    return f.read()

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def registry_tree(oci_env, tmp_path_factory):
    import asyncio

    from services.cubelet.oci import LayerCache

    base = tmp_path_factory.mktemp("registry-tree")
    root = base / "root"
    unpacked = asyncio.run(fetch_image(ImageRef.parse(f"{oci_env.anon.host}/features:1", insecure=True),
                                       root, LayerCache(base / "cache"), access=oci_env.access))
    return declared_tree(unpacked.tree), unpacked.config


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker-archive"])
async def test_local_source_matches_registry(oci_env, registry_tree, cache, tmp_path, kind):
    if kind == "oci":
        text = f"oci:{oci_env.layout}:features"
    else:
        text = f"{kind}:{oci_env.archives[kind]}"
    events: list[Progress] = []
    unpacked = await fetch_image(ImageRef.parse(text), tmp_path / "root", cache, progress=events.append)
    config = unpacked.config
    tree, registry_config = registry_tree
    assert declared_tree(unpacked.tree) == tree
    assert config.env == registry_config.env and config.entrypoint == registry_config.entrypoint
    assert config.diff_ids == registry_config.diff_ids
    pulled = [e for e in events if e.phase is Phase.PULLING][-1]
    assert pulled.layers_done == pulled.layers_total == 4


async def test_docker_archive_selection(oci_env, cache, tmp_path):
    path = oci_env.archives["docker-archive"]
    by_tag = await pull_image(ImageRef.parse(f"docker-archive:{path}:features:1"), cache)
    by_full_name = await pull_image(
        ImageRef.parse(f"docker-archive:{path}:docker.io/library/features:1"), cache)
    by_index = await pull_image(ImageRef.parse(f"docker-archive:{path}:@0"), cache)
    assert by_tag.config.digest == by_full_name.config.digest == by_index.config.digest


async def test_layout_index_picks_amd64(oci_env, cache, tmp_path):
    config = (await fetch_image(ImageRef.parse(f"oci:{oci_env.layout}:multi"), tmp_path / "root", cache)).config
    assert config.architecture == "amd64"
    assert (tmp_path / "root/bin/busybox").is_file()


async def test_local_and_registry_share_the_cache(oci_env, cache, tmp_path):
    await fetch_image(ImageRef.parse(f"oci-archive:{oci_env.archives['oci-archive']}"),
                      tmp_path / "a", cache)
    mark = oci_env.anon.mark()
    await fetch_image(ImageRef.parse(f"{oci_env.anon.host}/features:1", insecure=True),
                      tmp_path / "b", cache, access=oci_env.access)
    blob_gets = [p for m, p, s in oci_env.anon.requests_since(mark) if "/blobs/" in p]
    assert blob_gets == []  # the archive brought every layer and the config


async def test_docker_archive_with_compressed_layers(oci_env, registry_tree, cache, tmp_path):
    """A docker-archive may hold its layers gzip-compressed under names that are not their digests
    (the format does not forbid it): the image must still unpack, verified against the diff_ids."""
    src = oci_env.archives["docker-archive"]
    manifest = json.loads(_member_bytes(tarfile.open(src), "manifest.json"))
    layer_names = set(manifest[0]["Layers"])
    out = tmp_path / "compressed.docker.tar"
    with tarfile.open(src) as tin, tarfile.open(out, "w") as tout:
        for member in tin.getmembers():
            data = _member_bytes(tin, member) if member.isfile() else None
            if member.name in layer_names:
                assert data is not None
                data = gzip.compress(data, mtime=0)
            if data is not None:
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))
            else:
                tout.addfile(member)
    unpacked = await fetch_image(ImageRef.parse(f"docker-archive:{out}"), tmp_path / "root", cache)
    config = unpacked.config
    tree, registry_config = registry_tree
    assert declared_tree(unpacked.tree) == tree
    assert config.diff_ids == registry_config.diff_ids
