"""Serving this node's templates and paused sandboxes to other nodes: Cubelet.GetTemplateManifest
and Cubelet.FetchTemplateArtifact (the pulling side is pull.py), Cubelet.GetPausedManifest and
Cubelet.FetchPausedArtifact (paused_pull.py). Both kinds stream their files the same way
(``stream_file``).

Invariants:
- A peer names a template id (checked: ``valid_template_id``) and an artifact name. The name is
  looked up among the template's artifacts (template_manifest.py) and never joined to a path:
  anything else (``../x``, an absolute path, a name of another build) is NOT_FOUND.
- A fetch names the build its manifest described; a template rebuilt since is FAILED_PRECONDITION,
  so a receiver never mixes the files of two builds.
- A file goes out in chunks of at most CHUNK bytes, each read when the previous one was taken by
  gRPC's flow control (off the event loop): one chunk in memory per transfer, whatever the size.
  The holes of a sparse file (a snapshot's memory is mostly holes) are not sent.
- A template's digests are computed at most once at a time (template_manifest caches them), however
  many peers ask together; so are a paused sandbox's.
- A paused sandbox is served only while this node holds it PAUSED (not while it pauses, resumes or
  goes), by its id (checked) and a name of ``paused_manifest.ARTIFACTS``; a fetch names the save
  its manifest described (``save_id``), anything else is FAILED_PRECONDITION.
- Who may call: only role ``cubelet`` under mutual TLS (server.py's gate).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sdk.gen.cube.v1 import cubelet_pb2 as pb

from . import paused_manifest, template_manifest
from .artifact_files import CHUNK, data_ranges
from .keyed_locks import KeyedLocks
from .paused_manifest import PausedStateError
from .sandboxes import SandboxError, SandboxManager, SandboxRecord
from .template_manifest import ManifestError
from .templates import Template, TemplateStore, valid_template_id

log = logging.getLogger("cubelet.transfer")


class TransferError(Exception):
    """A refused or failed transfer, with the gRPC status the peer should see."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ArtifactSource:
    """The serving side: manifests and artifact streams of the templates in ``store``."""

    def __init__(self, store: TemplateStore) -> None:
        self.store = store
        self._hashing: dict[tuple[str, str], asyncio.Lock] = {}

    def _template(self, template_id: str) -> Template:
        if not valid_template_id(template_id):
            raise TransferError("INVALID_ARGUMENT", f"invalid template id {template_id!r}")
        tpl = self.store.get(template_id)
        if tpl is None:
            raise TransferError("NOT_FOUND", f"node {self.store.settings.node_id} has no template {template_id!r}")
        return tpl

    async def manifest(self, template_id: str, peer: str = "") -> pb.TemplateManifest:
        tpl = self._template(template_id)
        if tpl.info.base_template_id:
            # Its disk and memory read through its base's build by this node's paths; it stays here.
            raise TransferError("FAILED_PRECONDITION", f"template {template_id} is a snapshot of a sandbox; "
                                                       "it is only on the node that took it")
        lock = self._hashing.setdefault((tpl.template_id, tpl.build_key), asyncio.Lock())
        async with lock:  # the second asker finds the first one's digests in the cache
            try:
                m = await asyncio.to_thread(template_manifest.manifest, tpl)
            except ManifestError as e:
                log.error("template not servable", extra={"template_id": template_id, "error": str(e)})
                raise TransferError("FAILED_PRECONDITION", str(e)) from e
        log.info("template manifest served", extra={"template_id": template_id, "build_key": tpl.build_key,
                                                    "bytes": m.total_bytes, "peer": peer})
        return pb.TemplateManifest(
            template_id=tpl.template_id, build_key=tpl.build_key, info=tpl.info, env=tpl.env,
            artifacts=[pb.TemplateArtifact(name=f.name, size=f.size, sha256=f.sha256, mode=f.mode) for f in m.files])

    async def chunks(self, req: pb.FetchArtifactRequest, peer: str = "") -> AsyncIterator[pb.ArtifactChunk]:
        tpl = self._template(req.template_id)
        if req.build_key != tpl.build_key:
            raise TransferError("FAILED_PRECONDITION", f"template {tpl.template_id} is now build {tpl.build_key}, "
                                                       f"not {req.build_key!r}: fetch its manifest again")
        try:
            path = template_manifest.sources(tpl).get(req.name)
        except ManifestError as e:
            raise TransferError("FAILED_PRECONDITION", str(e)) from e
        if path is None:
            raise TransferError("NOT_FOUND", f"{req.name!r} is not an artifact of template {tpl.template_id}")
        sent = 0
        async for chunk in stream_file(path, f"template {tpl.template_id}: its {req.name}"):
            yield chunk
            sent += len(chunk.data)
        log.info("template artifact served", extra={"template_id": tpl.template_id, "artifact": req.name,
                                                    "bytes": sent, "peer": peer})


async def stream_file(path: Path, what: str) -> AsyncIterator[pb.ArtifactChunk]:
    """The data of the file at ``path`` in chunks of at most CHUNK bytes, its holes left out, each
    chunk read (off the loop) when the previous one was taken. ``what`` names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise TransferError("NOT_FOUND", f"{what} is unreadable: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        ranges = await asyncio.to_thread(lambda: list(data_ranges(fd, size)))
        for start, end in ranges:
            pos = start
            while pos < end:
                data = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
                if not data:  # shorter than it was a moment ago: the receiver's size check says so
                    break
                yield pb.ArtifactChunk(offset=pos, data=data)
                pos += len(data)
    finally:
        os.close(fd)


class PausedSource:
    """The serving side: manifests and file streams of the sandboxes paused on this node."""

    def __init__(self, sandboxes: SandboxManager) -> None:
        self.sandboxes = sandboxes
        self._hashing = KeyedLocks()

    def _paused(self, sandbox_id: str) -> tuple[SandboxRecord, Path]:
        try:
            return self.sandboxes.paused_state(sandbox_id)
        except SandboxError as e:
            raise TransferError(e.code, str(e)) from e

    async def manifest(self, sandbox_id: str, peer: str = "") -> pb.PausedManifest:
        _, saved = self._paused(sandbox_id)
        try:
            async with self._hashing.hold(sandbox_id):  # the second asker finds the first one's digests cached
                state = await asyncio.to_thread(paused_manifest.describe_paused, saved,
                                                self.sandboxes.settings.templates_dir, sandbox_id)
        except PausedStateError as e:
            log.error("paused sandbox not servable", extra={"sandbox_id": sandbox_id, "error": str(e)})
            raise TransferError("FAILED_PRECONDITION", str(e)) from e
        # Read again after the hashing: a sandbox resumed meanwhile is not described as paused.
        rec, _ = self._paused(sandbox_id)
        if rec.template_id != state.template_id:
            raise TransferError("FAILED_PRECONDITION", f"sandbox {sandbox_id} of template {rec.template_id} was "
                                                       f"saved from template {state.template_id}")
        log.info("paused manifest served", extra={"sandbox_id": sandbox_id, "template_id": state.template_id,
                                                  "build_key": state.build_key, "peer": peer,
                                                  "bytes": sum(f.size for f in state.files)})
        return pb.PausedManifest(
            sandbox_id=sandbox_id, template_id=state.template_id, build_key=state.build_key, save_id=state.save_id,
            sandbox=rec.status(self.sandboxes.settings.node_id), envd_access_token=rec.access_token,
            env_vars=rec.env_vars,
            artifacts=[pb.TemplateArtifact(name=f.name, size=f.size, sha256=f.sha256, mode=f.mode)
                       for f in state.files])

    async def chunks(self, req: pb.FetchPausedArtifactRequest, peer: str = "") -> AsyncIterator[pb.ArtifactChunk]:
        _, saved = self._paused(req.sandbox_id)
        if req.name not in paused_manifest.ARTIFACTS:
            raise TransferError("NOT_FOUND", f"{req.name!r} is not a file of a paused sandbox")
        try:
            current = await asyncio.to_thread(paused_manifest.save_id, saved)
        except OSError as e:
            raise TransferError("NOT_FOUND", f"sandbox {req.sandbox_id} is no longer paused here") from e
        if current != req.save_id:
            raise TransferError("FAILED_PRECONDITION", f"sandbox {req.sandbox_id} was resumed or paused again "
                                                       "since its manifest: fetch the manifest again")
        sent = 0
        async for chunk in stream_file(saved / req.name, f"sandbox {req.sandbox_id}: its {req.name}"):
            yield chunk
            sent += len(chunk.data)
        log.info("paused artifact served", extra={"sandbox_id": req.sandbox_id, "artifact": req.name,
                                                  "bytes": sent, "peer": peer})
