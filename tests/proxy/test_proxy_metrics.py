"""The real cube-proxy's /metrics (testkit.Proxy: its own metrics port), read with Prometheus' text
parser: its routes, the route revisions it read and its Envoy acknowledged, the time from one to
the other, its etcd calls, and Envoy's own stats on the same page, moving with the traffic."""

from __future__ import annotations

import pytest

from sdk.gen.cube.v1 import route_pb2
from tests.proxy.conftest import DOMAIN, http_request, new_id
from tests.support.prometheus import Page, scrape

pytestmark = pytest.mark.timeout(120)


def _envoy_2xx(page: Page) -> float:
    """Envoy's count of 2xx answers on its plain HTTP listener (its own name and labels; the
    parser names a counter's samples ..._total), not on its admin, which the scrapes use."""
    return page.value("envoy_http_downstream_rq_xx_total", envoy_response_code_class="2",
                      envoy_http_conn_manager_prefix="http")


async def test_routes_acks_and_envoy_stats_move_with_the_work(proxy, upstreams, routes):
    before = scrape(proxy.metrics_url)
    up = upstreams[0]
    running, paused = new_id(), new_id()
    await routes.put(running, host=up.host)
    rev = await routes.put(paused, state=route_pb2.ROUTE_STATE_PAUSED)
    r = http_request(proxy, "GET", "/echo", host=f"{up.port}-{running}.{DOMAIN}")
    assert r.status_code == 200, r.text

    after = scrape(proxy.metrics_url)
    assert after.value("cube_proxy_routes", state="running", where="local") >= 1
    assert after.value("cube_proxy_routes", state="paused", where="local") >= 1
    assert after.value("cube_proxy_applied_revision") >= rev and after.value("cube_proxy_route_revision") >= rev
    assert after.value("cube_proxy_envoy_connected") == 1
    # Each change was timed from its reading to Envoy's acknowledgement.
    applies = "cube_proxy_route_apply_seconds_count"
    assert after.value(applies) >= before.value(applies) + 1
    assert after.value("cube_etcd_request_duration_seconds_count", op="put") > 0  # its applied-revision key
    # Envoy's own stats follow the proxy's, on the same page, and count the request above.
    assert after.value("cube_proxy_envoy_stats_up") == 1
    assert any(name.startswith("envoy_") for name in after.families)
    assert _envoy_2xx(after) >= _envoy_2xx(before) + 1
    assert after.text.index("cube_proxy_routes") < after.text.index("envoy_")
    # No label holds a sandbox id.
    assert running not in after.text and paused not in after.text

    await routes.delete(running)
    await routes.delete(paused)
    gone = scrape(proxy.metrics_url)
    assert gone.value("cube_proxy_routes", state="paused", where="local") == \
        after.value("cube_proxy_routes", state="paused", where="local") - 1
