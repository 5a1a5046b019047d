"""cube_common/metrics.py: the /metrics listener, scrape-time sources, the gRPC server figures, the
etcd client's figures against a real etcd, and the naming rules every service's figures follow.
Every page is read with prometheus_client's own parser (tests/support/prometheus.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from cube_common import defaults, metrics
from cube_common.etcd import EtcdClient, EtcdUnavailable
from cube_common.listen import is_local
from cube_common.settings import Settings, SettingsError
from deploy.supervisor import NodeConfig
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc
from services.api import metrics as api_metrics
from services.api.settings import Settings as ApiSettings
from services.cubelet import metrics as cubelet_metrics
from services.cubelet.settings import CubeletSettings
from services.master import metrics as master_metrics
from services.master.settings import Settings as MasterSettings
from services.proxy import metrics as proxy_metrics
from services.proxy.settings import ProxySettings
from services.vs import metrics as vs_metrics
from services.vs.settings import Settings as VsSettings
from testkit.ports import free_port
from tests.support.prometheus import ascrape, parse, scrape

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "cube-dashboard.json"
SERVICE_SETTINGS: list[type[Settings]] = [ApiSettings, MasterSettings, CubeletSettings, VsSettings, ProxySettings]
FIGURE_MODULES = (api_metrics, cubelet_metrics, master_metrics, proxy_metrics, vs_metrics)  # imported: registered


@pytest.fixture
def listener() -> Iterator[metrics.MetricsListener]:
    lst = metrics.MetricsListener(f"127.0.0.1:{free_port()}").start()
    yield lst
    lst.close()


def url(lst: metrics.MetricsListener, path: str = "/metrics") -> str:
    return f"http://127.0.0.1:{lst.port}{path}"


def test_the_listener_serves_metrics_and_nothing_else(listener):
    page = scrape(url(listener))
    assert "process_cpu_seconds_total" in page.families or "process_cpu_seconds" in page.families
    assert not any(name.endswith("_created") for name in page.families)  # no _created series
    r = httpx.get(url(listener, "/"), timeout=5)
    assert r.status_code == 404 and "only" in r.text
    assert httpx.get(url(listener, "/metrics/../debug"), timeout=5).status_code == 404
    assert httpx.post(url(listener), timeout=5).status_code == 501  # it changes nothing
    assert "Python" not in httpx.get(url(listener), timeout=5).headers.get("server", "")
    assert scrape(url(listener, "/metrics?x=1")).families  # a query string is no other page


def test_an_empty_setting_means_no_listener_and_a_taken_port_fails_naming_the_setting():
    assert metrics.serve("") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=r"metrics_listen='127\.0\.0\.1:\d+'"):
            metrics.serve(address)


def test_ipv6_loopback():
    try:
        lst = metrics.serve("[::1]:0")  # the kernel's pick
    except OSError:
        pytest.skip("no ::1 here")
    assert lst is not None
    try:
        assert scrape(f"http://[::1]:{lst.port}/metrics").families
    finally:
        lst.close()


def test_sources_are_read_at_each_scrape_merged_by_name_and_removed(listener):
    state = {"a": 1.0}

    def gauge(value: float, who: str) -> GaugeMetricFamily:
        g = GaugeMetricFamily("cube_test_things", "things", labels=["who"])
        g.add_metric([who], value)
        return g

    def broken() -> list[GaugeMetricFamily]:
        raise RuntimeError("a bug in one figure")

    one = metrics.add_source(lambda: [gauge(state["a"], "one")])
    two = metrics.add_source(lambda: [gauge(2.0, "two")])
    bad = metrics.add_source(broken)
    try:
        page = scrape(url(listener))
        assert page.value("cube_test_things", who="one") == 1.0 and page.value("cube_test_things", who="two") == 2.0
        assert page.text.count("# TYPE cube_test_things gauge") == 1  # one family, both samples
        state["a"] = 5.0
        assert scrape(url(listener)).value("cube_test_things", who="one") == 5.0
        one.remove()
        page = scrape(url(listener))
        assert not page.has("cube_test_things", who="one") and page.has("cube_test_things", who="two")
    finally:
        for h in (one, two, bad):
            h.remove()
    assert "cube_test_things" not in scrape(url(listener)).families


async def test_in_a_loop_scrapes_run_there_after_the_refreshes():
    """Sources read the loop's state in the loop; a refresh that fails or hangs leaves the scrape
    to what was read before, within the refresh deadline."""
    loop = asyncio.get_running_loop()
    seen: dict[str, object] = {}
    read = {"n": 0.0}

    async def refresh() -> None:
        seen["refresh_loop"] = asyncio.get_running_loop()
        read["n"] += 1

    async def hangs() -> None:
        await asyncio.sleep(60)

    def families() -> list[GaugeMetricFamily]:
        seen["collect_loop"] = asyncio.get_running_loop()
        g = GaugeMetricFamily("cube_test_refreshed", "refreshes seen")
        g.add_metric([], read["n"])
        return [g]

    lst = metrics.serve(f"127.0.0.1:{free_port()}", loop=loop)
    assert lst is not None
    handles = [metrics.add_source(families, refresh=refresh), metrics.add_source(list, refresh=hangs)]
    old = metrics.REFRESH_TIMEOUT_S
    metrics.REFRESH_TIMEOUT_S = 0.2
    try:
        page = await ascrape(url(lst))
        assert page.value("cube_test_refreshed") == 1.0
        assert seen["refresh_loop"] is loop and seen["collect_loop"] is loop
        assert (await ascrape(url(lst))).value("cube_test_refreshed") == 2.0
    finally:
        metrics.REFRESH_TIMEOUT_S = old
        for h in handles:
            h.remove()
        lst.close()


# ---- gRPC servers -------------------------------------------------------------------------------

class _Node(cubelet_pb2_grpc.CubeletServicer):
    async def GetNode(self, request, context):
        return pb.NodeStatus(node_id="n")

    async def KillSandbox(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such sandbox")

    async def GetSandbox(self, request, context):
        raise RuntimeError("a bug")

    async def BuildTemplate(self, request, context):
        yield pb.TemplateBuildEvent(message="pulling")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad image")


def _handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("cube_grpc_server_handled_total",
                                     {"service": "cube.v1.Cubelet", "method": method, "code": code}) or 0.0


async def test_grpc_calls_are_counted_by_method_and_code_and_timed():
    port = free_port()
    server = grpc.aio.server(interceptors=[metrics.GrpcServerMetrics()])
    cubelet_pb2_grpc.add_CubeletServicer_to_server(_Node(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    cases = [("GetNode", "OK"), ("KillSandbox", "NOT_FOUND"), ("GetSandbox", "UNKNOWN"),
             ("ListTemplates", "UNIMPLEMENTED"), ("BuildTemplate", "INVALID_ARGUMENT")]
    before = {c: _handled(*c) for c in cases}
    timed = REGISTRY.get_sample_value("cube_grpc_server_handling_seconds_count",
                                      {"service": "cube.v1.Cubelet", "method": "GetNode"}) or 0.0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = cubelet_pb2_grpc.CubeletStub(ch)
            await stub.GetNode(pb.GetNodeRequest())
            for call, req in ((stub.KillSandbox, pb.SandboxRef()), (stub.GetSandbox, pb.SandboxRef()),
                              (stub.ListTemplates, pb.ListTemplatesRequest())):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(req)
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stub.BuildTemplate(pb.BuildTemplateRequest()):
                    pass
    finally:
        await server.stop(None)
    assert {c: _handled(*c) - before[c] for c in cases} == dict.fromkeys(cases, 1.0)
    assert REGISTRY.get_sample_value("cube_grpc_server_handling_seconds_count",
                                     {"service": "cube.v1.Cubelet", "method": "GetNode"}) == timed + 1


def test_a_thread_pool_server_is_counted_too(tmp_path):
    from concurrent import futures

    class Sync(cubelet_pb2_grpc.CubeletServicer):
        def GetNode(self, request, context):
            return pb.NodeStatus()

        def KillSandbox(self, request, context):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")

    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[metrics.SyncGrpcServerMetrics()])
    cubelet_pb2_grpc.add_CubeletServicer_to_server(Sync(), server)
    sock = f"unix://{tmp_path}/s.sock"
    server.add_insecure_port(sock)
    server.start()
    before = _handled("GetNode", "OK"), _handled("KillSandbox", "FAILED_PRECONDITION")
    try:
        with grpc.insecure_channel(sock) as ch:
            stub = cubelet_pb2_grpc.CubeletStub(ch)
            stub.GetNode(pb.GetNodeRequest(), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.KillSandbox(pb.SandboxRef(), timeout=5)
    finally:
        server.stop(None)
    assert (_handled("GetNode", "OK") - before[0], _handled("KillSandbox", "FAILED_PRECONDITION") - before[1]) \
        == (1.0, 1.0)


# ---- etcd ---------------------------------------------------------------------------------------

def _etcd(op: str, suffix: str) -> float:
    return REGISTRY.get_sample_value(f"cube_etcd_request_{suffix}", {"op": op}) or 0.0


async def test_etcd_calls_are_timed_and_failures_counted_by_operation(etcd_server):
    client = EtcdClient([etcd_server.endpoint], timeout_s=2.0)
    key = f"/metrics-test/{uuid.uuid4().hex}".encode()
    puts, gets = _etcd("put", "duration_seconds_count"), _etcd("get", "duration_seconds_count")
    try:
        await client.put(key, b"1")
        await client.get(key)
        await client.delete(key)
    finally:
        await client.close()
    assert _etcd("put", "duration_seconds_count") == puts + 1 and _etcd("get", "duration_seconds_count") == gets + 1

    dead = EtcdClient([f"127.0.0.1:{free_port()}"], timeout_s=0.5)
    errors, failovers = _etcd("txn", "errors_total"), REGISTRY.get_sample_value("cube_etcd_failovers_total") or 0.0
    try:
        with pytest.raises(EtcdUnavailable):
            await dead.call(lambda c: c.get(b"x"), op="txn")
    finally:
        await dead.close()
    assert _etcd("txn", "errors_total") == errors + 1
    assert (REGISTRY.get_sample_value("cube_etcd_failovers_total") or 0.0) > failovers


# ---- names and settings -------------------------------------------------------------------------

def test_our_figures_follow_prometheus_naming():
    """Every figure of ours is cube_..., in base units, counters end in _total; the rest of the page
    is prometheus_client's process and Python collectors."""
    page = parse(metrics.render().decode())
    ours = {n: t for n, t in page.families.items() if not n.startswith(("process_", "python_"))}
    assert {"cube_grpc_server_handled", "cube_etcd_request_duration_seconds", "cube_api_request_duration_seconds",
            "cube_master_route_ack_seconds", "cube_cubelet_sandbox_start_seconds",
            "cube_proxy_route_apply_seconds"} <= set(ours)
    for name, kind in ours.items():
        assert name.startswith("cube_"), name
        assert not name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    for s in page.samples:
        if page.families.get(s.name.removesuffix("_total")) == "counter":
            assert s.name.endswith("_total"), s.name


def test_every_service_has_its_own_loopback_metrics_port():
    listens = [getattr(cls(), "metrics_listen") for cls in SERVICE_SETTINGS]  # noqa: B009 - not on the base class
    assert all(is_local(a) for a in listens)
    assert len({a.rsplit(":", 1)[1] for a in listens}) == len(SERVICE_SETTINGS)
    assert sorted(int(a.rsplit(":", 1)[1]) for a in listens) == sorted(defaults.METRICS_PORTS.values())
    node = NodeConfig().metrics_listen()
    assert node == {f"CUBE_{svc}_METRICS_LISTEN": f"127.0.0.1:{port}" for svc, port in defaults.METRICS_PORTS.items()}
    # Every service reads its own variable; '' turns the listener off; a malformed one fails at start-up.
    for cls in SERVICE_SETTINGS:
        prefix = cls.ENV_PREFIX
        env = {f"{prefix}METRICS_LISTEN": "", "CUBE_PROXY_ETCD": "127.0.0.1:2379"}
        assert cls.from_env(env).metrics_listen == ""  # type: ignore[attr-defined]
        with pytest.raises(SettingsError, match="metrics_listen"):
            cls.from_env({f"{prefix}METRICS_LISTEN": "nowhere"})
    assert "metrics_listen" in {f.name for f in dataclasses.fields(ApiSettings)}


def _declared_figures() -> set[str]:
    """Every cube_ name our code declares (a Counter, Histogram or Gauge, or a family made at
    scrape time), as written in its module."""
    sources = [REPO / "cube_common" / "metrics.py", REPO / "cube_common" / "etcd.py",
               *(REPO / "services").glob("*/metrics.py")]
    return {m for path in sources for m in re.findall(r'"(cube_[a-z0-9_]+)"', path.read_text())}


def test_the_dashboard_queries_figures_cube_serves():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    targets = [t for p in panels for t in p.get("targets", [])]
    assert len(targets) >= 40
    declared = _declared_figures()
    for p in panels:
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    for target in targets:
        expr = target["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for name in re.findall(r"\b(cube_[a-z0-9_]+)", expr):
            base = re.sub(r"_(bucket|count|sum|total)$", "", name)
            assert name in declared or base in declared, f"{name} in {expr!r} is no figure of ours"
        assert all(n.startswith(("cube_", "envoy_")) for n in re.findall(r"\b([a-z_]+)(?=\{|\[)", expr)), expr
    used = {re.sub(r"_(bucket|count|sum|total)$", "", n) for t in targets for n in re.findall(r"\b(cube_[a-z0-9_]+)",
                                                                                             t["expr"])}
    # The figures each have a panel.
    assert {"cube_api_request_duration_seconds", "cube_cubelet_sandbox_start_seconds",
            "cube_cubelet_warm_pool_ready", "cube_cubelet_warm_pool_claims", "cube_master_sandboxes",
            "cube_cubelet_sandboxes", "cube_node_memory_bytes", "cube_master_template_builds",
            "cube_etcd_request_duration_seconds", "cube_etcd_request_errors", "cube_cubelet_sandbox_dropped_packets",
            "cube_master_route_ack_seconds", "cube_grpc_server_handled"} <= used
