"""Reference parsing, image config, manifests and the blob cache (no processes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cubelet.oci import (
    DigestMismatch,
    ImageConfig,
    ImageRef,
    InvalidImage,
    InvalidReference,
    LayerCache,
    Transport,
    WrongArchitecture,
)
from services.cubelet.oci.auth import parse_challenge
from services.cubelet.oci.manifest import Index, parse_manifest, select_platform

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, registry, repo, tag, digest", [
    ("127.0.0.1:5000/app:1.0", "127.0.0.1:5000", "app", "1.0", None),
    ("localhost/ns/app", "localhost", "ns/app", "latest", None),
    ("registry.example.com/a/b/c:v2", "registry.example.com", "a/b/c", "v2", None),
    (f"ghcr.io/org/img@{D}", "ghcr.io", "org/img", None, D),
    (f"ghcr.io/org/img:1@{D}", "ghcr.io", "org/img", "1", D),
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("python:3.12-slim", "docker.io", "library/python", "3.12-slim", None),
    ("myorg/app:x", "docker.io", "myorg/app", "x", None),
    ("docker://[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
])
def test_registry_references(text, registry, repo, tag, digest):
    r = ImageRef.parse(text)
    assert (r.transport, r.registry, r.repository, r.tag, r.digest) == \
        (Transport.REGISTRY, registry, repo, tag, digest)
    assert r.reference == (digest or tag)
    assert ImageRef.parse(str(r)) == r


def test_endpoints():
    assert ImageRef.parse("busybox").endpoint == "https://registry-1.docker.io"
    assert ImageRef.parse("127.0.0.1:5000/a", insecure=True).endpoint == "http://127.0.0.1:5000"


@pytest.mark.parametrize("text, transport, path, selector", [
    ("oci:/srv/layout", Transport.OCI_LAYOUT, "/srv/layout", None),
    ("oci:/srv/layout:v1", Transport.OCI_LAYOUT, "/srv/layout", "v1"),
    ("oci-archive:/tmp/img.tar:latest", Transport.OCI_ARCHIVE, "/tmp/img.tar", "latest"),
    ("docker-archive:/tmp/d.tar", Transport.DOCKER_ARCHIVE, "/tmp/d.tar", None),
    ("docker-archive:/tmp/d.tar:app:1", Transport.DOCKER_ARCHIVE, "/tmp/d.tar", "app:1"),
    ("docker-archive:/tmp/d.tar:@2", Transport.DOCKER_ARCHIVE, "/tmp/d.tar", "@2"),
])
def test_local_references(text, transport, path, selector):
    r = ImageRef.parse(text)
    assert (r.transport, r.path, r.selector) == (transport, Path(path), selector)
    assert r.is_local and str(r) == text


@pytest.mark.parametrize("text", ["", "Upper", "ns/Upper", "host:5000/Bad", "a@sha256:short",
                                  "a@md5:" + "0" * 32, "host/repo:bad tag", "oci:", "oci:/x:",
                                  "docker-archive:/x:@a", "x" * 300, "host/a//b"])
def test_bad_references(text):
    with pytest.raises(InvalidReference):
        ImageRef.parse(text)


def test_challenge_parsing():
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                        'scope="repository:a/b:pull,push",error="insufficient_scope"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push", "error": "insufficient_scope"}
    assert parse_challenge('Basic realm="Registry Realm"').params == {"realm": "Registry Realm"}


def _desc(mt, arch=None):
    d = {"mediaType": mt, "digest": D, "size": 1}
    if arch:
        d["platform"] = {"os": arch.split("/")[0], "architecture": arch.split("/")[1]}
    return d


def test_platform_selection():
    idx = parse_manifest(json.dumps({"schemaVersion": 2, "manifests": [
        _desc("application/vnd.oci.image.manifest.v1+json", "linux/arm64"),
        _desc("application/vnd.oci.image.manifest.v1+json", "unknown/unknown"),
        {**_desc("application/vnd.oci.image.manifest.v1+json", "linux/amd64"), "digest": "sha256:" + "b" * 64},
    ]}).encode(), "application/vnd.oci.image.index.v1+json", "x")
    assert isinstance(idx, Index)
    assert select_platform(idx, "x").digest == "sha256:" + "b" * 64
    only_arm = parse_manifest(json.dumps({"manifests": [
        _desc("application/vnd.docker.distribution.manifest.v2+json", "linux/arm64"),
        _desc("application/vnd.docker.distribution.manifest.v2+json", "windows/amd64")]}).encode(),
        "application/vnd.docker.distribution.manifest.list.v2+json", "x")
    assert isinstance(only_arm, Index)
    with pytest.raises(WrongArchitecture, match="linux/arm64, windows/amd64"):
        select_platform(only_arm, "x")


@pytest.mark.parametrize("doc, match", [
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"config": _desc("application/vnd.cncf.helm.config.v1+json"), "layers": []}, "not a container image"),
    ({"config": _desc("application/vnd.oci.image.config.v1+json"),
      "layers": [_desc("application/x-unknown")]}, "unsupported layer"),
    ({"config": {**_desc("application/vnd.oci.image.config.v1+json"), "digest": "sha256:../../x"},
      "layers": []}, "malformed digest"),
])
def test_bad_manifests(doc, match):
    with pytest.raises(InvalidImage, match=match):
        parse_manifest(json.dumps(doc).encode(), "", "x")


def test_config_model():
    c = ImageConfig.from_json(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["A=1", "B=x=y"], "User": "nobody", "WorkingDir": "/w",
                   "Entrypoint": ["/e"], "Cmd": ["c1", "c2"], "ExposedPorts": {"80/tcp": {}, "9/udp": {}},
                   "Labels": {"k": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [D]}}).encode())
    assert c.env_map() == {"A": "1", "B": "x=y"}
    assert c.argv() == ["/e", "c1", "c2"] and c.argv(cmd=["z"]) == ["/e", "z"]
    assert c.argv(entrypoint=["/n"]) == ["/n"] and c.argv(entrypoint=["/n"], cmd=["a"]) == ["/n", "a"]
    assert c.tcp_ports() == [80] and c.diff_ids == (D,)
    with pytest.raises(WrongArchitecture):
        ImageConfig.from_json(b'{"architecture":"arm64","os":"linux"}').check_platform("x")
    ImageConfig.from_json(b"{}").check_platform("x")  # no platform: accepted


def test_cache_writes_are_verified_and_atomic(tmp_path):
    cache = LayerCache(tmp_path / "c")
    import hashlib

    data = b"hello"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(DigestMismatch):
        cache.put_bytes("sha256:" + "0" * 64, data)
    assert cache.digests() == [] and cache.partials() == []
    w = cache.writer(digest, 5)
    w.write(b"hel")
    assert not cache.has(digest) and len(cache.partials()) == 1  # invisible until committed
    w.write(b"lo")
    w.commit()
    assert cache.read_bytes(digest) == data and cache.partials() == []
    with pytest.raises(DigestMismatch, match="more than the declared"):
        with cache.writer(digest, 2) as w2:
            w2.write(b"toolong")
    assert cache.partials() == []
    with pytest.raises(InvalidImage):
        cache.path("sha256:../../etc")
