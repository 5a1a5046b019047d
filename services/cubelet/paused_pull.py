"""Pulling a sandbox paused on another node, to resume it here (the serving side is transfer.py's
PausedSource; what travels is paused_manifest.py's).

SandboxManager.resume, told where a sandbox it does not hold is paused (ResumeSandboxRequest.source),
asks ``manifest`` what that node holds, decides (room, the template's build), then ``pull``s the
files into this node's paused dir; the sandbox's record, written after that, makes it this node's
(sandboxes.py), and the resume goes on as for a sandbox paused here.

Invariants:
- Nothing half-made is ever taken for a paused sandbox. Files land in a staging dir
  ``<paused_dir>/.pull-<id>-*``, each checked against the manifest's size and SHA-256 while it
  streams (pull.receive); the saved machine is then made to run on this node's copy of its template
  build (vmm_core.rehome_saved: every path in its metadata rewritten, its overlay's backing file
  replaced, an overlay naming an external data file refused) and loaded as a restore would. Only
  then does the staging dir become ``<paused_dir>/<id>``, by one rename. Any failure removes the
  staging dir; a crash leaves a dir no record names, which the next start removes
  (SandboxManager.recover).
- Bounded: the files must fit above the disk watermark (RESOURCE_EXHAUSTED before a byte is
  written) and arrive within ``paused_pull_timeout_s`` (UNAVAILABLE). The pull is the resume's own
  work, not shared: a resume that is cancelled (its master gave up) cancels it, and nothing stays.
- Nothing a peer says becomes a path: file names are ``paused_manifest.ARTIFACTS``, the sandbox id
  must be the one asked for, the template id is checked and the build key is hex.
- Files keep the serving node's permission bits less any execute, setuid or group/other write bit,
  and are root's, as a local save leaves them; the staging dir is 0700.
- The holder is dialed with this node's cubelet certificate and must prove a cubelet certificate
  (plaintext when the node has no TLS directory, as every other hop).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from cube_common import mtls
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc
from vmm_core import Snapshot, VmmError, VmmSettings
from vmm_core.snapshots import rehome_saved

from . import paused_manifest
from .pull import (
    BUILD_KEY_RE,
    MANIFEST_TIMEOUT_S,
    MAX_META,
    SHA256_RE,
    PullError,
    check_artifacts,
    off_loop,
    private_dir,
    receive,
)
from .sandboxes import disk_free
from .settings import CubeletSettings
from .templates import Template, valid_template_id

log = logging.getLogger("cubelet.paused_pull")


@dataclass(frozen=True)
class Pulled:
    saved: Path        # <paused_dir>/<id>: a SAVED snapshot on this node's template copy
    received: int      # bytes that came over the wire (holes are not sent)
    total: int         # the files' sizes
    seconds: float


def _check_manifest(sandbox_id: str, m: pb.PausedManifest) -> None:
    def bad(why: str) -> PullError:
        return PullError("UNAVAILABLE", f"the manifest of paused sandbox {sandbox_id} is unusable: {why}")

    if m.sandbox_id != sandbox_id:
        raise bad(f"it describes sandbox {m.sandbox_id!r}")
    if not valid_template_id(m.template_id):
        raise bad(f"invalid template id {m.template_id!r}")
    if not BUILD_KEY_RE.fullmatch(m.build_key):
        raise bad(f"build key {m.build_key!r} is not hex")
    # A full pause's three files, or a filesystem-only pause's two.
    names = paused_manifest.ARTIFACTS if any(a.name == "state" for a in m.artifacts) else \
        paused_manifest.DISK_ARTIFACTS
    check_artifacts(f"paused sandbox {sandbox_id}", m.artifacts, names)
    meta = next(a for a in m.artifacts if a.name == "snapshot.json")
    if meta.size > MAX_META:
        raise bad(f"snapshot.json is {meta.size} bytes")
    if not SHA256_RE.fullmatch(m.save_id) or m.save_id != meta.sha256:
        raise bad(f"save id {m.save_id!r} is not its snapshot.json's digest")


class PausedStatePuller:
    """Brings sandboxes paused on other nodes to this one (see the module docstring)."""

    def __init__(self, settings: CubeletSettings, vmm: VmmSettings, tls: mtls.TlsFiles | None) -> None:
        self.settings = settings
        self.vmm = vmm
        self.tls = tls

    @asynccontextmanager
    async def _stub(self, source: pb.PausedSource) -> AsyncIterator[cubelet_pb2_grpc.CubeletStub]:
        channel = mtls.aio_channel(source.address, self.tls, mtls.Role.CUBELET, options=[("grpc.enable_retries", 0)])
        try:
            yield cubelet_pb2_grpc.CubeletStub(channel)
        finally:
            await channel.close(grace=None)

    async def manifest(self, source: pb.PausedSource, sandbox_id: str) -> pb.PausedManifest:
        """What ``source`` holds of the paused sandbox, checked. PullError: NOT_FOUND when it holds no
        such paused sandbox, UNAVAILABLE when it cannot tell."""
        async with self._stub(source) as stub:
            try:
                m = await stub.GetPausedManifest(pb.SandboxRef(sandbox_id=sandbox_id), timeout=MANIFEST_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                code = "NOT_FOUND" if e.code() == grpc.StatusCode.NOT_FOUND else "UNAVAILABLE"
                raise PullError(code, f"node {source.node_id} did not describe paused sandbox {sandbox_id}: "
                                      f"{e.code().name}: {e.details()}") from e
        _check_manifest(sandbox_id, m)
        return m

    async def pull(self, source: pb.PausedSource, m: pb.PausedManifest, tpl: Template) -> Pulled:
        """The files ``m`` lists, from ``source``, made a paused sandbox of this node on ``tpl`` (the
        build it was paused from: the caller checked). ``<paused_dir>/<id>`` must not exist."""
        t0 = time.monotonic()
        sid = m.sandbox_id
        limit = self.settings.paused_pull_timeout_s
        staging = self.settings.paused_dir / f".pull-{sid}-{secrets.token_hex(4)}"
        final = self.settings.paused_dir / sid
        try:
            try:
                async with asyncio.timeout(limit):
                    received = await self._transfer(source, m, staging)
                    await off_loop(self._rehome, staging, tpl, sid)
            except TimeoutError as e:
                raise PullError("UNAVAILABLE", f"pulling paused sandbox {sid} from node {source.node_id} did not "
                                               f"finish within {limit:g}s") from e
            # Outside the deadline: a rename, never left half-way.
            await off_loop(os.rename, staging, final)
        except OSError as e:
            raise PullError("UNAVAILABLE", f"writing paused sandbox {sid} failed: {e}") from e
        finally:
            await off_loop(shutil.rmtree, staging, True)  # gone already once renamed
        out = Pulled(final, received, sum(a.size for a in m.artifacts), time.monotonic() - t0)
        log.info("paused sandbox pulled", extra={
            "sandbox_id": sid, "peer": source.node_id, "template_id": m.template_id, "build_key": m.build_key,
            "seconds": round(out.seconds, 2), "bytes_received": out.received, "bytes_total": out.total})
        return out

    async def _transfer(self, source: pb.PausedSource, m: pb.PausedManifest, staging: Path) -> int:
        """Every file of ``m`` from ``source``, checked, into ``staging`` (made here)."""
        need = sum(a.size for a in m.artifacts)
        free, watermark = disk_free(self.settings), self.settings.min_free_disk_mb << 20
        if free - need < watermark:
            raise PullError("RESOURCE_EXHAUSTED", f"node {self.settings.node_id} has no room for paused sandbox "
                                                  f"{m.sandbox_id}: it needs {need >> 20} MiB, {free >> 20} MiB are "
                                                  f"free and the node keeps {watermark >> 20} MiB free")
        await off_loop(private_dir, staging)
        received = 0
        async with self._stub(source) as stub:
            for art in m.artifacts:
                def fetch(name: str = art.name) -> grpc.aio.UnaryStreamCall:
                    return stub.FetchPausedArtifact(pb.FetchPausedArtifactRequest(
                        sandbox_id=m.sandbox_id, save_id=m.save_id, name=name))
                try:
                    received += await receive(fetch, art, staging / art.name)
                except grpc.aio.AioRpcError as e:
                    raise PullError("UNAVAILABLE", f"fetching {art.name} of paused sandbox {m.sandbox_id} from node "
                                                   f"{source.node_id} failed: {e.code().name}: {e.details()}") from e
        return received

    def _rehome(self, staging: Path, tpl: Template, sandbox_id: str) -> Snapshot:
        """The received machine, on this node's copy of its template. Blocking."""
        # A sandbox of a template without shared memory had its memory file in its runtime dir
        # (gone with its VM): a restore makes it again, in the runtime dir it gets here.
        private = self.vmm.vms_dir / sandbox_id / "memory" if tpl.info.no_memory_sharing else None
        try:
            return rehome_saved(staging, tpl.load_snapshot(), private_memory=private, qemu_img=self.vmm.qemu_img)
        except VmmError as e:
            raise PullError("UNAVAILABLE", f"paused sandbox {sandbox_id} cannot run on this node: {e}") from e
