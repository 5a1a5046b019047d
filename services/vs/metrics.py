"""Prometheus figures of CubeVS (served by its metrics listener, cube_common/metrics.py).

- Every CubeVS gRPC call: ``cube_grpc_server_handled_total`` / ``_handling_seconds`` (the
  thread-pool server's interceptor).
- The node's datapath, read under the network's lock at each scrape: ``cube_vs_networks`` (sandbox
  networks allocated, pool entries' included), ``cube_vs_warm_taps`` (taps made ahead),
  ``cube_vs_max_sandboxes`` and ``cube_vs_nat_flows`` (connections NATed on the uplinks now).

The per-sandbox counters of the datapath (drops by reason, counters.py) are reported by the
cubelet as ``cube_cubelet_sandbox_dropped_packets_total``: it reads them from here (Stats) and
alone knows which sandbox holds which network.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cube_common import metrics
from services.vs.network import NodeNetwork


def families(node: NodeNetwork) -> Iterable[Metric]:
    status = node.status()
    for name, doc, key in (("cube_vs_networks", "Sandbox networks CubeVS holds (pool entries' included)", "sandboxes"),
                           ("cube_vs_warm_taps", "Taps made ahead of allocations", "warm_taps"),
                           ("cube_vs_max_sandboxes", "Most sandbox networks this node's datapath holds",
                            "max_sandboxes"),
                           ("cube_vs_nat_flows", "Connections NATed on the uplinks now", "nat_flows")):
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(status[key]))
        yield g


def register(node: NodeNetwork) -> metrics.SourceHandle:
    return metrics.add_source(lambda: families(node))
