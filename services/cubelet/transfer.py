"""Serving this node's templates to other nodes: Cubelet.GetTemplateManifest and
Cubelet.FetchTemplateArtifact (the pulling side is pull.py).

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
  many peers ask together.
- Who may call: only role ``cubelet`` under mutual TLS (server.py's gate).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from sdk.gen.cube.v1 import cubelet_pb2 as pb

from . import template_manifest
from .template_manifest import CHUNK, ManifestError
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
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise TransferError("NOT_FOUND", f"template {tpl.template_id}: its {req.name} is unreadable: "
                                             f"{e.strerror}") from e
        sent = 0
        try:
            size = os.fstat(fd).st_size
            ranges = await asyncio.to_thread(lambda: list(template_manifest.data_ranges(fd, size)))
            for start, end in ranges:
                pos = start
                while pos < end:
                    data = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
                    if not data:  # shorter than it was a moment ago: the receiver's size check says so
                        break
                    yield pb.ArtifactChunk(offset=pos, data=data)
                    pos += len(data)
                    sent += len(data)
        finally:
            os.close(fd)
        log.info("template artifact served", extra={"template_id": tpl.template_id, "artifact": req.name,
                                                    "bytes": sent, "peer": peer})
