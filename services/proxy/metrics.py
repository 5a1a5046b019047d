"""Prometheus figures of CubeProxy, and its Envoy's own stats, on one metrics listener.

The page is the proxy's figures followed by Envoy's (``envoy_*``, from Envoy's admin
``/stats/prometheus?usedonly`` read at each scrape), so one scrape target per proxy covers both
and Envoy's admin port stays on loopback (it can stop Envoy and read every route).

- ``cube_proxy_routes{state, where}``: the routes this proxy serves, ``running`` or ``paused``,
  to a sandbox on this node (``local``) or through another node's proxy (``remote``).
- ``cube_proxy_route_revision`` / ``cube_proxy_applied_revision``: the etcd revision of the route
  table the proxy has read, and the last one its Envoy acknowledged (cube_common/route_ack.py);
  their difference is the lag in revisions.
- ``cube_proxy_route_apply_seconds``: from the proxy reading a route change to its Envoy
  acknowledging it (the proxy's part of the master's ``cube_master_route_ack_seconds``).
- ``cube_proxy_envoy_connected``: ADS streams from Envoy now (0: Envoy is not configured by us);
  ``cube_proxy_envoy_stats_up``: 1 when Envoy's admin gave its stats for this scrape.
"""

from __future__ import annotations

import collections
import time
import urllib.request
from collections.abc import Iterable

from prometheus_client import Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cube_common import metrics

from .routes import RouteState, RouteTable
from .settings import ProxySettings

APPLY_SECONDS = Histogram("cube_proxy_route_apply_seconds", "From this proxy reading a route change in etcd to its "
                          "Envoy acknowledging the configuration that has it", buckets=metrics.CALL_BUCKETS)
ENVOY_STATS_UP = Gauge("cube_proxy_envoy_stats_up", "1 when Envoy's admin answered with its stats for this scrape")

# Route changes read but not yet acknowledged, remembered at most this many (a burst is acked at once).
PENDING_KEPT = 1024
ENVOY_STATS_TIMEOUT_S = 3.0


class ProxyMetrics:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.table = RouteTable()
        self.applied_revision = 0
        self.streams = 0
        self._pending: collections.OrderedDict[int, float] = collections.OrderedDict()  # revision -> when read
        self._source: metrics.SourceHandle | None = None

    def register(self) -> None:
        self._source = metrics.add_source(self.families)

    def unregister(self) -> None:
        if self._source is not None:
            self._source.remove()
            self._source = None

    # ---- what the service tells ----

    def routes_read(self, table: RouteTable) -> None:
        self.table = table
        if table.revision > self.applied_revision and table.revision not in self._pending:
            self._pending[table.revision] = time.monotonic()
            while len(self._pending) > PENDING_KEPT:
                self._pending.popitem(last=False)

    def routes_applied(self, revision: int) -> None:
        self.applied_revision = max(self.applied_revision, revision)
        now = time.monotonic()
        while self._pending:
            rev, read_at = next(iter(self._pending.items()))
            if rev > revision:
                break
            del self._pending[rev]
            APPLY_SECONDS.observe(now - read_at)

    def streams_changed(self, n: int) -> None:
        self.streams = n

    # ---- what a scrape reads ----

    def families(self) -> Iterable[Metric]:
        routes = GaugeMetricFamily("cube_proxy_routes", "Routes this proxy serves, by the sandbox's state and where "
                                   "it runs (local: this node; remote: through its node's proxy)",
                                   labels=["state", "where"])
        tally = collections.Counter((r.state, r.is_local) for r in list(self.table.routes.values()))
        for state in RouteState:
            for local in (True, False):
                routes.add_metric([state.value, "local" if local else "remote"], float(tally.get((state, local), 0)))
        yield routes
        for name, doc, value in (
                ("cube_proxy_route_revision", "etcd revision of the route table this proxy has read",
                 self.table.revision),
                ("cube_proxy_applied_revision", "etcd revision of the routes its Envoy acknowledged last",
                 self.applied_revision),
                ("cube_proxy_envoy_connected", "ADS streams from Envoy now", self.streams)):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g

    def envoy_stats(self) -> bytes:
        """Envoy's own stats in the text format (empty when its admin does not answer)."""
        url = f"http://{self.settings.admin}/stats/prometheus?usedonly"
        try:
            with urllib.request.urlopen(url, timeout=ENVOY_STATS_TIMEOUT_S) as r:
                body: bytes = r.read()
        except OSError:
            ENVOY_STATS_UP.set(0)
            return b""
        ENVOY_STATS_UP.set(1)
        return body if body.endswith(b"\n") or not body else body + b"\n"
