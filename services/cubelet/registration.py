"""This node in etcd: ``Keys.node`` (`<prefix>/nodes/<node_id>`) = NodeStatus (proto JSON) under a lease.

The lease is the node's heartbeat: if the cubelet dies the record disappears after the TTL and
the master stops scheduling here. The record is rewritten with fresh capacity on every beat.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from google.protobuf import json_format

from cube_common import mtls
from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from cube_common.leased_key import LeasedKey
from sdk.gen.cube.v1 import cubelet_pb2 as pb

from .settings import CubeletSettings


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
        self._key: LeasedKey | None = None

    def poke(self) -> None:
        """Publish the node's status now (templates changed), not at the next heartbeat."""
        if self._key is not None:
            self._key.poke()

    async def start(self) -> None:
        # One client for the cubelet's life: a failed call moves it to the next endpoint.
        tls = mtls.files(self.settings.mtls_dir, mtls.Role.CUBELET)
        etcd = EtcdClient(self.settings.etcd_endpoints, timeout_s=5.0, tls=tls)
        self._key = LeasedKey(etcd, Keys(self.settings.etcd_prefix).node(self.settings.node_id),
                              lambda: json_format.MessageToJson(self.status(), indent=None).encode(),
                              self.settings.node_lease_ttl_s)
        self._task = asyncio.create_task(self._run(self._key))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    @staticmethod
    async def _run(key: LeasedKey) -> None:
        # A stopped cubelet's record lapses with its lease rather than going at once: a restart
        # within the TTL (an upgrade) is never seen as a lost node.
        try:
            await key.run()
        finally:
            await key.etcd.close()


def vcpus() -> int:
    return os.cpu_count() or 1
