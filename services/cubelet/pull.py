"""Pulling a template this node lacks from a node that has it (the serving side is transfer.py).

A create for a template this node has not built (RunSandbox) asks ``TemplatePuller.pull``: the
nodes that hold it are read from etcd (their NodeStatus.templates), one of them sends its manifest
(template_manifest.py) and then every file, and the template becomes this node's as if built here.

Invariants:
- Nothing half-made ever looks ready. Files land in a staging dir ``<templates_dir>/.pull-<id>-*``
  (TemplateStore.list skips dot names), each checked against the manifest's size and SHA-256 while
  it streams; any failure removes the staging dir. It then becomes ``builds/<key>`` by one rename,
  and info.json is written last (``TemplateStore.write_info``): the same commit point as a local
  build, taken under the template's lock, so never beside a build of the same template.
- One pull per template at a time: concurrent askers wait for the same pull and share its outcome.
  A pull outlives the asker that started it (a create the master gave up on), bounded by
  ``template_pull_timeout_s``, so the next create finds the template.
- A pull that would take the free space under the state dir below the node's watermark is refused
  (RESOURCE_EXHAUSTED) before a byte is written.
- Nothing a peer says becomes a path: artifact names come from a fixed table
  (``template_manifest.ARTIFACTS``), the build key must be hex, and every path in the snapshot's
  metadata is rewritten to this node's copy (disks as raw images: no backing file is followed).
- Files keep the serving node's permission bits less any execute, setuid or group/other write bit:
  a snapshot's files stay read-only and root's (0444), exactly as a local build leaves them, which
  the VMM jail relies on (vmm_core/jail.py). Directories are 0700, everything is root's.
- Peers are dialed with this node's cubelet certificate and must prove a cubelet certificate
  themselves (plaintext when the node has no TLS directory, as every other hop).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.protobuf import json_format

from cube_common import mtls
from cube_common.etcd import EtcdClient, EtcdUnavailable
from cube_common.keys import Keys
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc
from vmm_core import DiskFormat, MachineSpec, Snapshot, SnapshotKind, VmmError
from vmm_core.disks import cow_overlay

from . import template_manifest
from .artifact_files import CHUNK, sha256_of, write_cache
from .sandboxes import SandboxError, disk_free
from .settings import CubeletSettings
from .template_manifest import ARTIFACTS, ManifestError
from .templates import Template, TemplateStore, valid_template_id

log = logging.getLogger("cubelet.pull")
T = TypeVar("T")

BUILD_KEY_RE = re.compile(r"[0-9a-f]{8,64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_META = 1 << 20          # snapshot.json is read into memory: a few KB in practice
MANIFEST_TIMEOUT_S = 120.0  # the peer may hash the template first (seconds per GB)
_ZEROS = memoryview(bytes(CHUNK))


class PullError(SandboxError):
    """A pull that failed, with the gRPC status a create that needed it answers."""


@dataclass
class PullStats:
    received: int = 0  # bytes that came over the wire (holes are not sent)
    linked: int = 0    # bytes of files this node already had (hard links)
    total: int = 0     # the template's files' sizes


@dataclass(frozen=True)
class Peer:
    node_id: str
    address: str


class Peers(Protocol):
    async def holders(self, template_id: str) -> list[Peer]: ...

    async def close(self) -> None: ...


class EtcdPeers:
    """The nodes whose registration (``Keys.node``) lists a template, least busy first."""

    def __init__(self, settings: CubeletSettings, tls: mtls.TlsFiles | None) -> None:
        self.node_id = settings.node_id
        self.keys = Keys(settings.etcd_prefix)
        self.etcd = EtcdClient(settings.etcd_endpoints, timeout_s=5.0, tls=tls)

    async def others(self) -> list[pb.NodeStatus]:
        """Every other registered node, as its registration says (unparsable ones left out)."""
        rows = await self.etcd.get_prefix(self.keys.nodes())
        out: list[pb.NodeStatus] = []
        for kv in rows.kvs:
            try:
                node = json_format.Parse(kv.value, pb.NodeStatus(), ignore_unknown_fields=True)
            except json_format.ParseError:
                continue
            if node.node_id != self.node_id:
                out.append(node)
        return out

    async def holders(self, template_id: str) -> list[Peer]:
        found = [n for n in await self.others() if n.address and template_id in n.templates]
        random.shuffle(found)  # spread the pulls of many nodes over the holders ...
        found.sort(key=lambda n: n.sandboxes_running)  # ... the least busy first
        return [Peer(n.node_id, n.address) for n in found]

    async def close(self) -> None:
        await self.etcd.close()


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a thread. A cancellation waits for it to return before it propagates, so
    the clean-up that follows never races a write still under way (nor a reused descriptor)."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait({fut})
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller sees
        raise


def file_mode(mode: int) -> int:
    return mode & 0o644


def private_dir(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # whatever the umask


class _Incoming:
    """One artifact as it arrives: written where each chunk says, hashed in file order, holes
    (offsets no chunk covers) hashed as the zeros they read as. Blocking methods."""

    def __init__(self, path: Path, art: pb.TemplateArtifact) -> None:
        self.path = path
        self.art = art
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.pos = 0
        self.sha = hashlib.sha256()
        self.data_bytes = 0

    def _zeros(self, n: int) -> None:
        while n > 0:
            k = min(n, CHUNK)
            self.sha.update(_ZEROS[:k])
            n -= k

    def write(self, offset: int, data: bytes) -> None:
        if offset < self.pos or offset + len(data) > self.art.size:
            raise PullError("UNAVAILABLE", f"{self.art.name}: the peer sent bytes {offset}..{offset + len(data)}, "
                                           f"after {self.pos} of {self.art.size}: not a stream of this file")
        self._zeros(offset - self.pos)
        self.sha.update(data)
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.pos = offset
        self.data_bytes += len(data)

    def finish(self) -> None:
        """Check the whole file against the manifest, then make it durable and final."""
        self._zeros(self.art.size - self.pos)
        os.ftruncate(self.fd, self.art.size)  # a trailing hole
        digest = self.sha.hexdigest()
        if digest != self.art.sha256:
            raise PullError("UNAVAILABLE", f"{self.art.name}: sha256 digest mismatch: got {digest}, the manifest "
                                           f"says {self.art.sha256}")
        os.fsync(self.fd)  # before the commit makes it part of a ready template
        os.fchmod(self.fd, file_mode(self.art.mode))
        if os.geteuid() == 0:
            os.fchown(self.fd, 0, 0)

    def close(self) -> None:
        os.close(self.fd)


async def receive(fetch: Callable[[], AsyncIterable[pb.ArtifactChunk]], art: pb.TemplateArtifact,
                  dest: Path) -> int:
    """The file ``art`` describes, streamed by ``fetch()`` into the new file ``dest`` and checked
    against its size and digest (PullError when it does not match; ``dest`` is then the caller's to
    remove). Returns the bytes received. What a template's and a paused sandbox's pulls share."""
    incoming = await off_loop(_Incoming, dest, art)
    try:
        async for chunk in fetch():
            await off_loop(incoming.write, chunk.offset, chunk.data)
        await off_loop(incoming.finish)
    finally:
        await off_loop(incoming.close)
    return incoming.data_bytes


def check_artifacts(what: str, artifacts: Iterable[pb.TemplateArtifact], names: Iterable[str]) -> None:
    """The manifest of ``what`` lists exactly ``names``, each with a well-formed digest."""
    listed = sorted(a.name for a in artifacts)
    if listed != sorted(names):
        raise PullError("UNAVAILABLE", f"the manifest of {what} is unusable: its artifacts are {listed}, "
                                       f"not {sorted(names)}")
    for a in artifacts:
        if not SHA256_RE.fullmatch(a.sha256):
            raise PullError("UNAVAILABLE", f"the manifest of {what} is unusable: {a.name}: {a.sha256!r} is not "
                                           "a sha256 digest")


def _check_manifest(template_id: str, m: pb.TemplateManifest) -> None:
    def bad(why: str) -> PullError:
        return PullError("UNAVAILABLE", f"the manifest of template {template_id} is unusable: {why}")

    if m.template_id != template_id:
        raise bad(f"it describes template {m.template_id!r}")
    if not BUILD_KEY_RE.fullmatch(m.build_key):
        raise bad(f"build key {m.build_key!r} is not hex")
    check_artifacts(f"template {template_id}", m.artifacts, ARTIFACTS)
    meta = next(a for a in m.artifacts if a.name == "snapshot.json")
    if meta.size > MAX_META:
        raise bad(f"snapshot.json is {meta.size} bytes")


def _relocate_snapshot(staging: Path, final: Path) -> str:
    """Rewrite the received snapshot metadata so that every file it names is this node's copy (at
    its place after the commit, ``final``). Returns the digest of the rewritten file. Blocking."""
    snap_dir = staging / "snapshot"
    try:
        raw = json.loads((snap_dir / "snapshot.json").read_text())
        snap = Snapshot(snap_dir, SnapshotKind(raw["kind"]), MachineSpec.from_dict(raw["spec"]),
                        float(raw["created_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PullError("UNAVAILABLE", f"snapshot.json is unusable: {e}") from e
    if snap.kind is not SnapshotKind.TEMPLATE:
        raise PullError("UNAVAILABLE", f"snapshot.json describes a {snap.kind.value} snapshot, not a template's")
    try:
        template_manifest.check_disks(snap)
    except ManifestError as e:
        raise PullError("UNAVAILABLE", str(e)) from e
    base, image, rw = snap.spec.disks
    spec = replace(
        snap.spec, kernel=final / ARTIFACTS["kernel"], initramfs=final / ARTIFACTS["initramfs"], network=None,
        memory_file=final / ARTIFACTS["memory"],
        disks=(replace(base, path=final / ARTIFACTS["base.img"], format=DiskFormat.RAW),
               replace(image, path=final / ARTIFACTS["image.ext4"], format=DiskFormat.RAW),
               replace(rw, path=final / ARTIFACTS["disk.img"], format=DiskFormat.RAW)))
    mode = os.stat(snap.meta).st_mode
    Snapshot(snap_dir, SnapshotKind.TEMPLATE, spec, snap.created_at).write_meta()
    os.chmod(snap.meta, mode)
    try:
        Snapshot.load(snap_dir)  # the checks a clone makes first (device state, memory size)
    except VmmError as e:
        raise PullError("UNAVAILABLE", str(e)) from e
    return sha256_of(snap.meta)


class TemplatePuller:
    """Brings templates to this node from the nodes that hold them (see the module docstring)."""

    def __init__(self, settings: CubeletSettings, store: TemplateStore, tls: mtls.TlsFiles | None,
                 peers: Peers | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tls = tls
        self.peers = peers if peers is not None else EtcdPeers(settings, tls)
        self._pulls: dict[str, asyncio.Task[Template]] = {}
        self._sweep()

    def _sweep(self) -> None:
        """Staging dirs of pulls that a dead cubelet left."""
        root = self.settings.templates_dir
        for d in root.glob(".pull-*") if root.is_dir() else []:
            shutil.rmtree(d, ignore_errors=True)

    async def close(self) -> None:
        for task in list(self._pulls.values()):
            task.cancel()
        await asyncio.gather(*self._pulls.values(), return_exceptions=True)
        await self.peers.close()

    async def pull(self, template_id: str) -> Template:
        """The template, pulled now unless this node has it. Raises PullError (with the status a
        create should answer: NOT_FOUND when no node has it, RESOURCE_EXHAUSTED when it does not fit,
        UNAVAILABLE when every holder failed or the deadline passed)."""
        if not valid_template_id(template_id):
            raise PullError("INVALID_ARGUMENT", f"invalid template id {template_id!r}")
        tpl = self.store.get(template_id)
        if tpl is not None:
            return tpl
        task = self._pulls.get(template_id)
        if task is None:
            task = asyncio.create_task(self._pull(template_id), name=f"pull-template-{template_id}")
            self._pulls[template_id] = task
            task.add_done_callback(functools.partial(self._pulled, template_id))
        # Shielded: an asker that goes away (its create was cancelled) leaves the pull running.
        return await asyncio.shield(task)

    def _pulled(self, template_id: str, task: asyncio.Task[Template]) -> None:
        if self._pulls.get(template_id) is task:
            del self._pulls[template_id]
        if not task.cancelled():
            task.exception()  # retrieved: its askers got it, or had gone away

    async def _pull(self, template_id: str) -> Template:
        t0 = time.monotonic()
        limit = self.settings.template_pull_timeout_s
        staging = self.settings.templates_dir / f".pull-{template_id}-{secrets.token_hex(4)}"
        try:
            try:
                async with asyncio.timeout(limit):
                    peer, m, stats = await self._from_any(template_id, staging)
            except TimeoutError as e:
                raise PullError("UNAVAILABLE", f"pulling template {template_id!r} to node {self.settings.node_id} "
                                               f"did not finish within {limit:g}s") from e
            # Outside the deadline: a commit is a rename and a small file, never left half-way.
            tpl = await self._commit(template_id, m, staging)
        finally:
            await off_loop(shutil.rmtree, staging, True)  # gone already once committed
        log.info("template pulled", extra={
            "template_id": template_id, "build_key": m.build_key, "peer": peer.node_id,
            "seconds": round(time.monotonic() - t0, 2), "bytes_received": stats.received,
            "bytes_linked": stats.linked, "bytes_total": stats.total})
        return tpl

    async def _from_any(self, template_id: str, staging: Path) -> tuple[Peer, pb.TemplateManifest, PullStats]:
        """The template's files in ``staging`` from the first holder that delivers them intact."""
        try:
            peers = await self.peers.holders(template_id)
        except EtcdUnavailable as e:
            raise PullError("UNAVAILABLE", f"template {template_id!r} is not on node {self.settings.node_id}, and "
                                           f"etcd (where the nodes holding it are listed) is unavailable: {e}") from e
        if not peers:
            raise PullError("NOT_FOUND", f"template {template_id!r} is not built on node {self.settings.node_id}, "
                                         "nor on any other node")
        errors = []
        for peer in peers:
            try:
                m, stats = await self._transfer(peer, template_id, staging)
                return peer, m, stats
            except PullError as e:
                if e.code == "RESOURCE_EXHAUSTED":  # no other holder makes it fit
                    raise
                errors.append(f"from node {peer.node_id}: {e}")
                log.warning("template pull from a peer failed", extra={
                    "template_id": template_id, "peer": peer.node_id, "error": str(e)})
        raise PullError("UNAVAILABLE", f"template {template_id!r} is not on node {self.settings.node_id} and "
                                       "pulling it failed: " + "; ".join(errors))

    async def _transfer(self, peer: Peer, template_id: str,
                        staging: Path) -> tuple[pb.TemplateManifest, PullStats]:
        """Every artifact of ``template_id`` from ``peer``, checked, into ``staging`` (made afresh)."""
        channel = mtls.aio_channel(peer.address, self.tls, mtls.Role.CUBELET, options=[("grpc.enable_retries", 0)])
        stub = cubelet_pb2_grpc.CubeletStub(channel)
        try:
            m = await stub.GetTemplateManifest(pb.GetTemplateManifestRequest(template_id=template_id),
                                               timeout=MANIFEST_TIMEOUT_S)
            _check_manifest(template_id, m)
            known = await off_loop(template_manifest.known_files, self.store.list())
            linkable = {a.name: known[a.sha256] for a in m.artifacts
                        if a.sha256 in known and a.name != "snapshot.json"  # rewritten below: never shared
                        and known[a.sha256].size == a.size and known[a.sha256].mode == file_mode(a.mode)}
            self._check_room(template_id, sum(a.size for a in m.artifacts if a.name not in linkable))
            await off_loop(self._make_staging, staging)
            stats = PullStats()
            digests: dict[str, tuple[Path, str]] = {}
            for art in m.artifacts:
                dest = staging / ARTIFACTS[art.name]
                source = linkable.get(art.name)
                if source is not None and await off_loop(_link, source.path, dest):
                    stats.linked += art.size
                else:
                    stats.received += await self._fetch(stub, m, art, dest)
                stats.total += art.size
                digests[art.name] = (dest, art.sha256)
            final = self.settings.templates_dir / template_id / "builds" / m.build_key
            meta_digest = await off_loop(_relocate_snapshot, staging, final)
            digests["snapshot.json"] = (staging / ARTIFACTS["snapshot.json"], meta_digest)
            await off_loop(write_cache, staging, digests)
            return m, stats
        except grpc.aio.AioRpcError as e:
            raise PullError("UNAVAILABLE", f"{e.code().name}: {e.details()}") from e
        except OSError as e:
            raise PullError("UNAVAILABLE", f"writing the template's files failed: {e}") from e
        finally:
            await channel.close(grace=None)

    @staticmethod
    def _make_staging(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)  # what an attempt on another holder left
        private_dir(staging)
        for sub in {str(Path(rel).parent) for rel in ARTIFACTS.values()} - {"."}:
            private_dir(staging / sub)

    def _check_room(self, template_id: str, need: int) -> None:
        free, watermark = disk_free(self.settings), self.settings.min_free_disk_mb << 20
        if free - need < watermark:
            raise PullError("RESOURCE_EXHAUSTED", f"node {self.settings.node_id} has no room for template "
                                                  f"{template_id!r}: it needs {need >> 20} MiB, {free >> 20} MiB "
                                                  f"are free and the node keeps {watermark >> 20} MiB free")

    async def _fetch(self, stub: cubelet_pb2_grpc.CubeletStub, m: pb.TemplateManifest, art: pb.TemplateArtifact,
                     dest: Path) -> int:
        """One artifact streamed into ``dest`` and checked. Returns the bytes received."""
        return await receive(lambda: stub.FetchTemplateArtifact(pb.FetchArtifactRequest(
            template_id=m.template_id, build_key=m.build_key, name=art.name)), art, dest)

    async def _commit(self, template_id: str, m: pb.TemplateManifest, staging: Path) -> Template:
        async with self.store.lock(template_id):
            existing = self.store.get(template_id)
            if existing is not None:  # built here, or pulled by an earlier pull, meanwhile
                return existing
            await off_loop(self._place, template_id, m, staging)
        self.store.changed()  # the node registration publishes it now
        tpl = self.store.get(template_id)
        if tpl is None:
            raise PullError("UNAVAILABLE", f"template {template_id!r} vanished right after its pull")
        return tpl

    def _place(self, template_id: str, m: pb.TemplateManifest, staging: Path) -> None:
        """Blocking; under the template's lock, with no info.json in place."""
        tdir = self.settings.templates_dir / template_id
        created = not tdir.exists()
        if created:
            private_dir(tdir)
        builds = tdir / "builds"
        if not builds.exists():
            private_dir(builds)
        final = builds / m.build_key
        # No info.json names it: what a crashed build or pull of the same key left.
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        try:
            snap = final / "snapshot"
            overlay = cow_overlay(snap / "disk.img", snap / "overlay.qcow2", self.store.vmm.qemu_img)
            os.chmod(overlay, 0o444)
            info = pb.TemplateInfo()
            info.CopyFrom(m.info)
            info.template_id = template_id
            self.store.write_info(template_id, info, m.build_key, dict(m.env))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            if created:
                shutil.rmtree(tdir, ignore_errors=True)
            raise


def _link(source: Path, dest: Path) -> bool:
    """Hard-link a file this node already has (same digest, size and mode) instead of fetching it."""
    try:
        os.link(source, dest)
        return True
    except OSError:  # another filesystem, or gone meanwhile: fetch it
        return False
