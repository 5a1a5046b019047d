"""This node in etcd: ``Keys.node`` (`<prefix>/nodes/<node_id>`) = NodeStatus (proto JSON) under a lease.

The lease is the node's heartbeat: if the cubelet dies the record disappears after the TTL and
the master stops scheduling here. The record is rewritten with fresh capacity on every beat.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from google.protobuf import json_format

from cube_common import mtls
from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from sdk.gen.cube.v1 import cubelet_pb2 as pb

from .settings import CubeletSettings

log = logging.getLogger("cubelet.registration")


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
        # One client for the cubelet's life: a failed call moves it to the next endpoint.
        tls = mtls.files(self.settings.mtls_dir, mtls.Role.CUBELET)
        etcd = EtcdClient(self.settings.etcd_endpoints, timeout_s=5.0, tls=tls)
        key = Keys(self.settings.etcd_prefix).node(self.settings.node_id)
        while True:
            try:
                lease = await etcd.lease(ttl)
                while True:
                    value = json_format.MessageToJson(self.status(), indent=None).encode()
                    await etcd.put(key, value, lease=lease)
                    await etcd.refresh_lease(lease.id)
                    self._poked.clear()
                    try:
                        await asyncio.wait_for(self._poked.wait(), max(1.0, ttl / 3))
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                await etcd.close()
                raise
            except Exception as e:  # noqa: BLE001 - etcd away: keep trying; the lease lapses meanwhile, by design
                log.warning("node registration failed; retrying", extra={"error": str(e), "etcd": etcd.endpoint})
                await asyncio.sleep(1.0)


# ``EtcdClient.call`` operations bound to one beat's value and lease (not to the loop's variables).
def vcpus() -> int:
    return os.cpu_count() or 1
