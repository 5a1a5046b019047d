"""Measure pull and unpack of a large Debian image (mmdebstrap root, ~300 MB) against a loopback
docker-registry, next to baselines from the same run (GNU tar + gzip/zstd, umoci unpack).

    .venv/bin/python -m tests.oci.bench_unpack [--keep]

Prints one JSON object. Not a test (no timing assertions anywhere)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.cubelet.oci import ImageRef, LayerCache, RegistryAccess, fetch_image, pull_image
from testkit.registry import Registry
from tests.oci.support import run
from vmm_core.guest.debian import apt_source_files, suite

PACKAGES = ["python3", "perl", "gcc", "libc6-dev"]
ROOT_CACHE = Path("/var/tmp/cube-oci-bench-rootfs")


def build_root() -> Path:
    if (ROOT_CACHE / "usr/bin/python3").exists():
        return ROOT_CACHE
    tmp = ROOT_CACHE.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run("mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=directory",
        f"--include={','.join(PACKAGES)}", suite(), str(tmp), *map(str, apt_source_files()),
        timeout=900)
    tmp.rename(ROOT_CACHE)
    return ROOT_CACHE


def du(path: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            if not os.path.islink(os.path.join(dirpath, n)):
                total += st.st_size
    return total, files


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cube-oci-bench-"))
    registry = None
    try:
        t = time.perf_counter()
        root = build_root()
        build_s = time.perf_counter() - t
        size, nfiles = du(root)
        layout = work / "layout"
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", f"{layout}:empty")
        run("umoci", "unpack", "--image", f"{layout}:empty", str(work / "bundle"))
        # cp -a, not shutil.copytree: the root has device nodes (/dev/zero...) to copy as nodes.
        run("cp", "-a", f"{root}/.", str(work / "bundle/rootfs"), timeout=600)
        run("umoci", "repack", "--image", f"{layout}:deb", str(work / "bundle"), timeout=900)
        shutil.rmtree(work / "bundle")
        run("skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd",
            f"oci:{layout}:deb", f"oci:{work}/layout-zstd:deb", timeout=900)
        registry = Registry(work / "reg", work / "storage").start()
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:deb",
            f"docker://{registry.host}/deb:gz", timeout=900)
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{work}/layout-zstd:deb",
            f"docker://{registry.host}/deb:zst", timeout=900)

        out: dict = {"image_bytes": size, "image_entries": nfiles, "mmdebstrap_s": round(build_s, 1)}
        for tag in ("gz", "zst"):
            ref = ImageRef.parse(f"{registry.host}/deb:{tag}", insecure=True)
            cache = LayerCache(work / f"cache-{tag}")
            access = RegistryAccess(allowlist=(registry.host,))  # a loopback registry
            pull_s = timed(lambda ref=ref, cache=cache, access=access: asyncio.run(
                pull_image(ref, cache, access=access)))
            image = asyncio.run(pull_image(ref, cache, access=access))
            blob = cache.path(image.manifest.layers[0].digest)
            compressed = blob.stat().st_size
            dest = work / f"root-{tag}"
            unpack_s = timed(lambda ref=ref, dest=dest, cache=cache, access=access: asyncio.run(
                fetch_image(ref, dest, cache, access=access)))
            shutil.rmtree(dest)
            # Baseline: GNU tar with the same decompressor, same blob, same disk.
            base_dir = work / "tar-baseline"
            base_dir.mkdir()
            flag = "--gzip" if tag == "gz" else "--zstd"
            tar_s = timed(lambda flag=flag, blob=blob, base_dir=base_dir: subprocess.run(
                ["tar", "-x", flag, "-f", str(blob), "-C", str(base_dir), "--same-owner", "--xattrs",
                 "--xattrs-include=*", "--numeric-owner"], check=True))
            shutil.rmtree(base_dir)
            out[tag] = {
                "compressed_bytes": compressed,
                "pull_s": round(pull_s, 2),
                "pull_MBps": round(compressed / pull_s / 1e6, 1),
                "unpack_s": round(unpack_s, 2),
                "unpack_MBps_uncompressed": round(size / unpack_s / 1e6, 1),
                "unpack_entries_per_s": round(nfiles / unpack_s),
                "gnu_tar_s": round(tar_s, 2),
                "ratio_to_gnu_tar": round(unpack_s / tar_s, 2),
            }
        umoci_s = timed(lambda: run("umoci", "unpack", "--image", f"{layout}:deb", str(work / "ub"),
                                    timeout=900))
        out["umoci_unpack_s"] = round(umoci_s, 2)
        out["gz"]["ratio_to_umoci_unpack"] = round(out["gz"]["unpack_s"] / umoci_s, 2)
        out["cpus"] = os.cpu_count()
        json.dump(out, sys.stdout, indent=1)
        print()
    finally:
        if registry:
            registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
