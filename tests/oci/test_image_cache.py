"""The layer cache's size limit: least recently used blobs go first, and never a blob a running
build pinned (its whole image, from manifest to unpacked tree), even when the image alone is
larger than the limit."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from services.cubelet.oci import ImageRef, LayerCache, Phase, fetch_image

pytestmark = pytest.mark.timeout(60)


def put(cache: LayerCache, data: bytes, age_s: float = 0.0) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache.put_bytes(digest, data)
    t = time.time() - age_s
    os.utime(cache.path(digest), (t, t))
    return digest


def test_least_recently_used_blobs_are_evicted(tmp_path):
    cache = LayerCache(tmp_path / "cache", max_bytes=300)
    old, middle, new = (put(cache, bytes([i]) * 100, age_s=100 - 10 * i) for i in range(3))
    assert set(cache.digests()) == {old, middle, new} and cache.size() == 300
    with cache.pin([old]):  # pinning marks it used now, and keeps it
        newest = put(cache, b"n" * 100)
        assert set(cache.digests()) == {old, new, newest}  # middle was the least recently used
        put(cache, b"m" * 150)
        assert old in cache.digests() and new not in cache.digests()
    # Unpinned, the cache goes back under its limit, oldest use first.
    assert cache.size() <= 300 and cache.pinned() == set()


def test_pinned_blobs_stay_over_the_limit(tmp_path):
    cache = LayerCache(tmp_path / "cache", max_bytes=10)
    with cache.pin(["sha256:" + hashlib.sha256(b"a" * 100).hexdigest()]):
        a = put(cache, b"a" * 100)
        b = put(cache, b"b" * 100)  # just written: kept until something newer needs the room
        assert set(cache.digests()) == {a, b}
        put(cache, b"c" * 100)
        assert a in cache.digests() and b not in cache.digests()
    assert cache.digests() == []


async def test_a_running_build_keeps_its_layers(oci_env, tmp_path):
    """A cache of 1 byte: every blob of the image is pinned while it is pulled and unpacked, so
    another build's blob arriving mid-unpack evicts none of them; afterwards the cache empties."""
    cache = LayerCache(tmp_path / "cache", max_bytes=1)
    ref = ImageRef.parse(f"{oci_env.anon.host}/features:1", insecure=True)
    seen: list[list[str]] = []

    def on_progress(p) -> None:
        if p.phase is Phase.UNPACKING and not seen:
            put(cache, os.urandom(1024))  # another build's blob: the cache is over its limit
            seen.append(cache.digests())

    unpacked = await fetch_image(ref, tmp_path / "root", cache, access=oci_env.access, progress=on_progress)
    assert (unpacked.root / "data/file.txt").read_text() == "hello\n"
    assert len(seen[0]) == 6  # config, four layers and the newcomer: nothing of the build evicted
    assert cache.digests() == [] and cache.pinned() == set()
