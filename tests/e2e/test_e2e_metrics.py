"""Prometheus /metrics of the node that `make up` runs (deploy/supervisor.py gives each service its
loopback port, NodeConfig.metrics_listen), read with Prometheus' text parser: a sandbox the
unmodified SDK creates moves the cubelet's create counter and histogram (by path) and the API's
request figures for the create's route; every service answers on its port, the proxy with its
Envoy's stats.

A node started before these listeners existed has none: restart it (`make down && make up`)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.cluster import CFG
from tests.support.prometheus import Page, scrape

PATHS = ("warm_pool", "clone", "standby", "cold_boot")


def _page(port: int) -> Page:
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        return scrape(url)
    except httpx.ConnectError:
        pytest.fail(f"nothing serves {url}: the node runs code from before its /metrics listeners; restart it "
                    "(make down && make up)")


def _creates(page: Page) -> float:
    return sum(page.value("cube_cubelet_sandbox_start_seconds_count", op="create", path=p) for p in PATHS)


def _api_creates(page: Page, suffix: str = "count", **labels: str) -> float:
    """Creates the API answered 201, by either of its create routes (the Python SDK posts to
    /v2/sandboxes, older clients to /sandboxes)."""
    return sum(page.value(f"cube_api_request_duration_seconds_{suffix}", route=route, method="POST", status="201",
                          **labels) for route in ("/v2/sandboxes", "/sandboxes"))


def test_a_create_moves_the_cubelet_and_api_figures(sandboxes):
    cubelet, api = CFG.cubelet_metrics_port, CFG.api_metrics_port
    before_cubelet, before_api = _page(cubelet), _page(api)
    sbx = sandboxes.create({"case": "metrics"})
    assert sbx.run_code("6 * 7").text == "42"

    after_cubelet, after_api = _page(cubelet), _page(api)
    assert _creates(after_cubelet) >= _creates(before_cubelet) + 1
    assert after_cubelet.families["cube_cubelet_sandbox_start_seconds"] == "histogram"
    assert sum(after_cubelet.value("cube_cubelet_sandbox_start_seconds_bucket", op="create", path=p, le="+Inf")
               for p in PATHS) == _creates(after_cubelet)
    assert after_cubelet.value("cube_cubelet_sandboxes", state="running") >= 1
    assert after_cubelet.value("cube_grpc_server_handled_total", method="RunSandbox", code="OK") >= 1
    assert after_cubelet.value("cube_node_vcpus") >= 1
    # The API counted the create by its route and status, in its latency histogram.
    assert _api_creates(after_api) >= _api_creates(before_api) + 1
    assert _api_creates(after_api, "bucket", le="+Inf") == _api_creates(after_api)
    # No label names the sandbox but the per-sandbox drop series of the cubelet.
    assert sbx.sandbox_id not in after_api.text
    assert {s.name for s in after_cubelet.samples if sbx.sandbox_id in s.labels.values()} <= {
        "cube_cubelet_sandbox_dropped_packets_total"}


def test_every_service_of_the_node_serves_its_figures():
    master = _page(CFG.master_metrics_port)
    assert master.has("cube_master_leader") and master.has("cube_etcd_request_duration_seconds_count")
    vs = _page(CFG.vs_metrics_port)
    assert vs.value("cube_vs_max_sandboxes") >= 1
    proxy = _page(CFG.proxy_metrics_port)
    assert proxy.value("cube_proxy_envoy_connected") >= 1 and proxy.value("cube_proxy_envoy_stats_up") == 1
    assert any(name.startswith("envoy_") for name in proxy.families)
