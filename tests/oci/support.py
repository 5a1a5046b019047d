"""Test helpers for the image layer: an OCI layout writer for images umoci cannot express, tar
layers built entry by entry, tree comparison, and `run` for the tools the tests drive. The
registries the tests pull from are in `testkit.registry`."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path


def run(*argv: str, timeout: float = 120) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


# -- OCI layouts made by hand ------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class LayoutWriter:
    """Writes blobs, manifests and indexes into an OCI image layout (creating it if needed),
    for images umoci cannot express (other architectures, indexes, broken ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        if not (path / "oci-layout").exists():
            (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        if not (path / "index.json").exists():
            (path / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')

    def blob(self, data: bytes, media_type: str, **extra) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(self, layers: list[bytes], *, arch: str = "amd64", config: dict | None = None,
              compress: bool = True, diff_ids: list[str] | None = None) -> dict:
        """A manifest for `layers` (uncompressed tars), returning its descriptor."""
        descs = []
        for tar in layers:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            descs.append(self.blob(blob, LAYER_GZIP if compress else LAYER_TAR))
        cfg = {"architecture": arch, "os": "linux", "config": config or {},
               "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else
                          ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]}}
        config_desc = self.blob(json.dumps(cfg).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                    "layers": descs}
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)

    def index(self, entries: list[tuple[dict, str]]) -> dict:
        """An index over (manifest descriptor, "os/arch") pairs."""
        manifests = []
        for desc, platform in entries:
            os_, arch = platform.split("/")
            manifests.append({**desc, "platform": {"os": os_, "architecture": arch}})
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def manifest_of(self, tag: str) -> dict:
        for m in json.loads((self.path / "index.json").read_text())["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return {k: m[k] for k in ("mediaType", "digest", "size")}
        raise KeyError(tag)

    def tag(self, desc: dict, name: str) -> None:
        index = json.loads((self.path / "index.json").read_text())
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(
            "org.opencontainers.image.ref.name") != name]
        index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
        (self.path / "index.json").write_text(json.dumps(index))


@dataclass
class Entry:
    """A tar entry to build test layers with."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] | None = None


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


# -- comparing trees --------------------------------------------------------------------------------

def snapshot_tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size-or-target-or-rdev, content hash, xattrs, inode group)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            what: str | tuple[int, int] | None  # link target, content hash or (major, minor)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
                xattrs = {}
            else:
                xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                          for k in os.listxattr(p, follow_symlinks=False)}
                if stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    what = (os.major(st.st_rdev), os.minor(st.st_rdev))
                else:
                    what = None
            link_group = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link_group = inodes.setdefault(st.st_ino, rel)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what,
                        tuple(sorted(xattrs.items())), link_group)
    return out
