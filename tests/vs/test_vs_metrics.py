"""CubeVS's figures and the per-sandbox drop counters of its eBPF datapath on /metrics, against a
real node datapath in the lab, served over gRPC on a unix socket as the cubelet uses it.

The drops are reported by the cubelet (services/cubelet/metrics.py: it alone knows which sandbox
holds which network), which reads them from CubeVS's Stats at each scrape: here its real
``CubeletMetrics`` and ``VsClient`` run with a TEST DOUBLE for the rest of the cubelet (which
sandboxes run, on which network), and the page is read with Prometheus' text parser."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import pytest

from cube_common import metrics
from sdk.gen.cube.v1 import cubelet_pb2 as pb, network_pb2
from services.cubelet.metrics import CubeletMetrics
from services.cubelet.settings import CubeletSettings
from services.cubelet.vs_client import VsClient
from services.vs import metrics as vs_metrics
from services.vs.server import serve
from testkit.ports import free_port
from testkit.vs_lab import INET_IP, tcp_reachable, udp_request
from tests.support.prometheus import Page, ascrape
from tests.vs.conftest import needs_root

pytestmark = [needs_root, pytest.mark.timeout(180)]


class _Pool:
    def size(self, template_id: str) -> int:
        return 0


class _Templates:
    def list(self) -> list:
        return []


@dataclass
class _Sandboxes:
    """TEST DOUBLE of the cubelet's SandboxManager: only what its figures read."""

    vs: VsClient
    running: dict[str, str] = field(default_factory=dict)  # network id -> sandbox id
    pool: _Pool = field(default_factory=_Pool)

    def network_ids(self) -> dict[str, str]:
        return dict(self.running)

    def states(self) -> collections.Counter:
        return collections.Counter()


@dataclass
class _Cubelet:
    """TEST DOUBLE of CubeletService: a node with no templates."""

    sandboxes: _Sandboxes
    settings: CubeletSettings = field(default_factory=lambda: CubeletSettings(node_id="lab"))
    templates: _Templates = field(default_factory=_Templates)

    def node_status(self) -> pb.NodeStatus:
        return pb.NodeStatus(node_id="lab", accel="tcg")


def _drops(page: Page, sid: str, reason: str) -> float:
    return page.value("cube_cubelet_sandbox_dropped_packets_total", sandbox_id=sid, reason=reason)


def _vs_calls(page: Page, method: str, code: str = "OK") -> float:
    return page.value("cube_grpc_server_handled_total", service="cube.v1.CubeVS", method=method, code=code)


async def test_drops_by_egress_policy_per_sandbox_and_the_datapath_figures(lab, node, guest_endpoint, tmp_path):
    sock = f"unix://{tmp_path}/vs.sock"
    server = serve(node, sock, max_workers=4)
    vs = VsClient(sock)
    stand_in = _Cubelet(_Sandboxes(vs))
    datapath = vs_metrics.register(node)
    figures = CubeletMetrics(stand_in).register()  # type: ignore[arg-type]
    listener = metrics.serve(f"127.0.0.1:{free_port()}", loop=asyncio.get_running_loop())
    assert listener is not None
    url = f"http://127.0.0.1:{listener.port}/metrics"
    try:
        before = await ascrape(url)
        await vs.allocate("sbx-off", network_pb2.NetworkPolicy(allow_internet_access=False))
        await vs.allocate("sbx-on", network_pb2.NetworkPolicy())
        stand_in.sandboxes.running.update({"sbx-off": "sbx-off", "sbx-on": "sbx-on"})
        lab.server("inet", "0.0.0.0", 8080)
        off, on = guest_endpoint(node.get("sbx-off")), guest_endpoint(node.get("sbx-on"))
        assert await asyncio.to_thread(tcp_reachable, on.ns, INET_IP, 8080)
        assert not await asyncio.to_thread(tcp_reachable, off.ns, INET_IP, 8080)
        assert await asyncio.to_thread(udp_request, off.ns, INET_IP, 8080) is None

        page = await ascrape(url)
        assert _drops(page, "sbx-off", "policy") >= 2  # the SYN and the datagram, at least
        assert not page.has("cube_cubelet_sandbox_dropped_packets_total", sandbox_id="sbx-on", reason="policy")
        assert page.families["cube_cubelet_sandbox_dropped_packets"] == "counter"
        assert page.value("cube_vs_networks") == 2
        assert page.value("cube_vs_max_sandboxes") == node.settings.max_sandboxes
        assert page.has("cube_vs_warm_taps") and page.has("cube_vs_nat_flows")
        assert _vs_calls(page, "Allocate") - _vs_calls(before, "Allocate") == 2
        assert _vs_calls(page, "Stats") > _vs_calls(before, "Stats")  # the scrape's own read
        assert page.value("cube_node_info", node="lab", accel="tcg") == 1

        # More traffic the policy stops, more drops: the counter moves between scrapes.
        assert not await asyncio.to_thread(tcp_reachable, off.ns, INET_IP, 8080)
        assert _drops(await ascrape(url), "sbx-off", "policy") > _drops(page, "sbx-off", "policy")

        # A released network's series end with it, even while the cubelet still names it.
        assert await vs.release("sbx-off")
        page = await ascrape(url)
        assert page.label_values("cube_cubelet_sandbox_dropped_packets_total", "sandbox_id") <= {"sbx-on"}
        assert page.value("cube_vs_networks") == 1
        assert _vs_calls(page, "Release") - _vs_calls(before, "Release") == 1
    finally:
        listener.close()
        datapath.remove()
        figures.unregister()
        for sid in ("sbx-off", "sbx-on"):
            await vs.release(sid)
        await vs.close()
        server.stop(grace=1).wait()
