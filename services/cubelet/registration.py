"""This node in etcd: `<prefix>/nodes/<node_id>` = NodeStatus (proto JSON) under a lease.

The lease is the node's heartbeat: if the cubelet dies the record disappears after the TTL and
the master stops scheduling here. The record is rewritten with fresh capacity on every beat.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import aetcd
from google.protobuf import json_format

from sdk.gen.cube.v1 import cubelet_pb2 as pb

from .settings import CubeletSettings

log = logging.getLogger("cubelet.registration")


def node_key(prefix: str, node_id: str) -> bytes:
    return f"/{prefix.strip('/')}/nodes/{node_id}".encode()


def _etcd_client(endpoints: str) -> aetcd.Client:
    host, _, port = endpoints.split(",")[0].strip().rpartition(":")
    return aetcd.Client(host=host or "127.0.0.1", port=int(port or 2379), timeout=5)


def host_memory() -> tuple[int, int]:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"], info["MemAvailable"]


class NodeRegistration:
    def __init__(self, settings: CubeletSettings, status: Callable[[], pb.NodeStatus]) -> None:
        self.settings = settings
        self.status = status
        self._task: asyncio.Task | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Publish the node's status now (templates changed), not at the next heartbeat."""
        self._poked.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        ttl = self.settings.node_lease_ttl_s
        while True:
            try:
                async with _etcd_client(self.settings.etcd_endpoints) as etcd:
                    lease = await etcd.lease(ttl)
                    while True:
                        value = json_format.MessageToJson(self.status(), indent=None)
                        await etcd.put(node_key(self.settings.etcd_prefix, self.settings.node_id), value.encode(), lease=lease)
                        await lease.refresh()
                        self._poked.clear()
                        try:
                            await asyncio.wait_for(self._poked.wait(), max(1.0, ttl / 3))
                        except asyncio.TimeoutError:
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away: keep trying; the lease lapses meanwhile, by design
                log.warning("node registration failed; retrying", extra={"error": str(e)})
                await asyncio.sleep(1.0)


def vcpus() -> int:
    return os.cpu_count() or 1
