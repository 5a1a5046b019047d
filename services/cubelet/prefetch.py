"""Templates pulled ahead of any create: every ready template another node holds and this one lacks.

A create on a node without its template pulls it first (pull.py), which costs that create seconds
and makes placement favour the node that built the template (locality), piling creates onto it.
Prefetching makes each template local on every node soon after it is built, so the scheduler
spreads creates by load and none of them waits for a pull.

Invariants:
- Only templates whose cluster record (``Keys.template``, the master's) is READY are fetched: one
  being deleted (record gone) or still building is never pulled back from a node that lags behind.
- One pull at a time from this loop; the puller merges it with any create's pull of the same
  template and bounds it (deadline, disk watermark). A failure is logged, and that template waits
  a growing backoff before the next try; a template some node has but no record names is ignored.
- etcd away: the round is skipped, the loop goes on.
"""
from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf import json_format

from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import master_pb2

from .pull import EtcdPeers, TemplatePuller
from .sandboxes import SandboxError
from .settings import CubeletSettings
from .templates import TemplateStore

log = logging.getLogger("cubelet.prefetch")
MAX_BACKOFF_S = 600.0


class Prefetcher:
    def __init__(self, settings: CubeletSettings, store: TemplateStore, puller: TemplatePuller,
                 peers: EtcdPeers) -> None:
        self.settings = settings
        self.store = store
        self.puller = puller
        self.peers = peers  # the puller's: one etcd client and one reading of the nodes for both (it closes it)
        self._task: asyncio.Task | None = None
        self._retry_at: dict[str, tuple[float, float]] = {}  # template id -> (when, current backoff)

    async def start(self) -> None:
        if self.settings.template_prefetch_s > 0:
            self._task = asyncio.create_task(self._run(), name="template-prefetch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wanted(self) -> list[str]:
        """Ready templates of the cluster that another node holds and this one does not."""
        held = {tid for node in await self.peers.others() for tid in node.templates}
        out = []
        for tid in sorted(held):
            if self.store.get(tid) is not None:
                continue
            rec = await self.peers.etcd.get(self.peers.keys.template(tid))
            if rec is None:
                continue
            try:
                tpl = json_format.Parse(rec.value, master_pb2.Template(), ignore_unknown_fields=True)
            except json_format.ParseError:
                continue
            if tpl.status == master_pb2.TEMPLATE_STATUS_READY:
                out.append(tid)
        return out

    async def run_once(self) -> list[str]:
        """One round; returns the templates pulled."""
        pulled = []
        now = time.monotonic()
        for tid in await self.wanted():
            when, backoff = self._retry_at.get(tid, (0.0, 0.0))
            if now < when:
                continue
            t0 = time.monotonic()
            try:
                await self.puller.pull(tid)
            except SandboxError as e:
                backoff = min(MAX_BACKOFF_S, max(self.settings.template_prefetch_s, backoff * 2))
                self._retry_at[tid] = (time.monotonic() + backoff, backoff)
                log.warning("template prefetch failed", extra={"template_id": tid, "error": str(e),
                                                               "retry_in_s": backoff})
                continue
            self._retry_at.pop(tid, None)
            pulled.append(tid)
            log.info("template prefetched", extra={"template_id": tid, "seconds": round(time.monotonic() - t0, 2)})
        return pulled

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except EtcdUnavailable as e:
                log.warning("template prefetch skipped: etcd unavailable", extra={"error": str(e)})
            except Exception:  # noqa: BLE001 - a bug here must not end prefetching for the node's life
                log.exception("template prefetch round failed")
            await asyncio.sleep(self.settings.template_prefetch_s)
