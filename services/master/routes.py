"""Sandbox routes for the proxies: built from a sandbox record and its node, written by the
store together with the record, then waited on until every proxy has applied them."""

from __future__ import annotations

import time

from cube_common.etcd import EtcdUnavailable
from cube_common.route_ack import RoutesNotApplied, wait_routes_applied
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2, route_pb2
from services.master import metrics
from services.master.errors import Unavailable
from services.master.log import get_logger

log = get_logger("routes")


def build_route(rec: master_pb2.Sandbox, node: cubelet_pb2.NodeStatus, paused: bool = False) -> route_pb2.SandboxRoute:
    return route_pb2.SandboxRoute(
        sandbox_id=rec.sandbox_id, node_id=rec.node_id, node_proxy_address=node.proxy_address,
        host_address=rec.host_address, proxy_source_address=rec.proxy_source_address,
        state=route_pb2.ROUTE_STATE_PAUSED if paused else route_pb2.ROUTE_STATE_RUNNING,
        traffic_access_token=rec.traffic_access_token,
        # A filesystem-only pause cold-boots on resume: never on the say-so of stray traffic.
        auto_resume=paused and rec.auto_resume and not rec.paused_filesystem_only,
        mask_request_host=rec.network.mask_request_host, https_ports=rec.network.https_ports)


async def wait_applied(store, revision: int, timeout_s: float, sandbox_id: str = "") -> None:
    """Return once every live proxy has applied the etcd state up to ``revision``; raise
    Unavailable when they have not within ``timeout_s`` (or etcd failed meanwhile). The wait is
    the route ack lag of /metrics (``cube_master_route_ack_seconds``)."""
    t0 = time.monotonic()
    try:
        await wait_routes_applied(store.etcd, store.keys, revision, timeout_s)
        metrics.route_acked("applied", time.monotonic() - t0)
    except RoutesNotApplied as e:
        metrics.route_acked("timeout", time.monotonic() - t0)
        log.warning("route not applied in time", extra={"sandbox_id": sandbox_id, "error": str(e)})
        raise Unavailable(f"the proxies did not apply the route within {timeout_s:g}s") from e
    except EtcdUnavailable as e:
        metrics.route_acked("etcd_unavailable", time.monotonic() - t0)
        raise Unavailable(f"cluster state unavailable while waiting for the route: {e}") from e
