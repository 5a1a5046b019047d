"""GET /nodes: the cluster's nodes and their capacity, for admin keys only (Cube's own; E2B has none).

A team key is refused here with 403 before the master is asked, and the master refuses a non-admin
caller too (services/master/caller.py lets the API's certificate make this one read, and only for an
admin caller). The body names no internal address (cubelet and proxy host:port): what the console
and an operator's dashboard need is capacity and state; `cubemastercli node list` has the rest.
"""

from __future__ import annotations

from sanic import Blueprint, response

from sdk.gen.cube.v1 import master_pb2 as P
from services.api.errors import ApiError
from services.api.models import rfc3339
from services.api.routes import master_call

bp = Blueprint("nodes")

_STATES = {P.NODE_STATE_READY: "ready", P.NODE_STATE_DRAINING: "draining", P.NODE_STATE_LOST: "lost"}


def node_body(n: P.Node) -> dict:
    s = n.status
    return {
        "nodeID": s.node_id, "state": _STATES.get(n.state, "unknown"),
        "draining": n.admin.draining, "drainReason": n.admin.reason,
        "accel": s.accel, "cpuCount": s.vcpus_total,
        "memoryTotalBytes": s.memory_total_bytes, "memoryAvailableBytes": s.memory_available_bytes,
        "diskFreeBytes": s.disk_free_bytes, "diskWatermarkBytes": s.disk_watermark_bytes,
        "maxSandboxes": s.max_sandboxes, "sandboxesRunning": n.sandboxes_running,
        # How many more it can take now (measured headroom); null from a node that does not say.
        "canTake": s.sandboxes_can_take if s.HasField("sandboxes_can_take") else None,
        "sandboxMemoryEstimateBytes": s.sandbox_memory_estimate_bytes,
        "sandboxesPaused": n.sandboxes_paused, "sandboxesLost": n.sandboxes_lost,
        "templates": sorted(s.templates),
        "heartbeatAt": rfc3339(n.heartbeat_at) if n.HasField("heartbeat_at") else None,
    }


@bp.get("/nodes")
async def list_nodes(request):
    if not request.ctx.caller.admin:
        raise ApiError(403, "listing nodes needs an admin key")
    resp = await master_call(request, "ListNodes", P.ListNodesRequest())
    return response.json([node_body(n) for n in sorted(resp.nodes, key=lambda n: n.status.node_id)])
