"""Prometheus figures of cube-master (served by its metrics listener, cube_common/metrics.py).

- Every Master gRPC call: ``cube_grpc_server_handled_total`` / ``_handling_seconds`` (the
  interceptor in cube_common/metrics.py); every etcd call: ``cube_etcd_*`` (cube_common/etcd.py).
- ``cube_master_leader``: 1 on the master that leads, 0 on a standby.
- The cluster's state, counted from the records in etcd by the leader every ``metrics_refresh_s``
  (``count_loop``, one of its duties): ``cube_master_sandboxes{phase}``,
  ``cube_master_template_builds{phase}`` (the jobs kept, by their phase) and
  ``cube_master_nodes{state}``. A standby reports none of them, so a sum over the masters is the
  cluster's figure; a master that stops leading drops them with its duties.
- ``cube_master_route_ack_seconds{result}``: how long a create, resume or move waited for every
  proxy to apply its route (routes.py), ``applied``, ``timeout`` or ``etcd_unavailable``.
- Template builds this master ran to their end: ``cube_master_template_builds_finished_total
  {result}``, ``cube_master_template_build_seconds{result}`` (queued to verdict) and
  ``cube_master_template_build_phase_seconds{phase}`` (the node's per-phase times of a build
  that became READY).
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cube_common import metrics
from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master.leader import Election
from services.master.log import get_logger
from services.master.store import Store

log = get_logger("metrics")

ROUTE_ACK_SECONDS = Histogram("cube_master_route_ack_seconds", "How long the master waited for every live proxy "
                              "to apply a route it wrote, by outcome (applied, timeout, etcd_unavailable)",
                              ["result"], buckets=metrics.CALL_BUCKETS)
BUILDS_FINISHED = Counter("cube_master_template_builds_finished_total", "Template builds this master ran that "
                          "ended, by result (ready, failed)", ["result"])
BUILD_SECONDS = Histogram("cube_master_template_build_seconds", "Template builds from their job's creation to "
                          "their verdict, by result", ["result"], buckets=metrics.BUILD_BUCKETS)
BUILD_PHASE_SECONDS = Histogram("cube_master_template_build_phase_seconds", "How long each phase of a template "
                                "build that became READY took on its node", ["phase"],
                                buckets=metrics.BUILD_BUCKETS)


def _phase(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


# Every value of each label, reported at 0 too: a phase that empties shows 0, not a gap.
SANDBOX_PHASES = [_phase(n, "SANDBOX_PHASE_") for n in P.SandboxPhase.keys()]
BUILD_PHASES = ["queued", *(_phase(n, "") for n in C.TemplateBuildPhase.keys()[1:])]
NODE_STATES = ["ready", "draining"]  # a lost node has no record left to count


def build_phase(phase: int) -> str:
    """A build's phase as a label: ``queued`` before the node's first event (UNSPECIFIED)."""
    return "queued" if phase == C.TEMPLATE_BUILD_PHASE_UNSPECIFIED else C.TemplateBuildPhase.Name(phase).lower()


@dataclass(frozen=True)
class ClusterCounts:
    """The cluster's records counted once (a value: the scrape reads whichever count is current)."""

    sandboxes: Tally[str] = field(default_factory=Tally)
    builds: Tally[str] = field(default_factory=Tally)
    nodes: Tally[str] = field(default_factory=Tally)


async def count(store: Store) -> ClusterCounts:
    sandboxes, builds, nodes, draining = await asyncio.gather(
        store.list_sandboxes(), store.list_builds(), store.list_nodes(), store.draining_nodes())
    return ClusterCounts(
        sandboxes=Tally(_phase(P.SandboxPhase.Name(v.value.phase), "SANDBOX_PHASE_") for v in sandboxes),
        builds=Tally(build_phase(v.value.phase) for v in builds),
        # A registered node takes sandboxes unless an operator drains it; a lost one has no record.
        nodes=Tally("draining" if n.node_id in draining else "ready" for n in nodes))


class MasterMetrics:
    """The figures one master process reports from its own state (see the module docstring)."""

    def __init__(self, store: Store, election: Election, refresh_s: float) -> None:
        self.store = store
        self.election = election
        self.refresh_s = refresh_s
        self.counts: ClusterCounts | None = None  # None: not leading, or not counted yet
        self._source: metrics.SourceHandle | None = None

    def register(self) -> None:
        self._source = metrics.add_source(self.families)

    def unregister(self) -> None:
        if self._source is not None:
            self._source.remove()
            self._source = None

    def families(self) -> Iterable[Metric]:
        leader = GaugeMetricFamily("cube_master_leader", "1 on the master that leads the cluster, 0 on a standby")
        leader.add_metric([], 1.0 if self.election.is_leader else 0.0)
        yield leader
        counts = self.counts
        if counts is None or not self.election.is_leader:
            return
        for name, doc, label, values, tally in (
                ("cube_master_sandboxes", "Sandbox records by phase (counted by the leader)", "phase",
                 SANDBOX_PHASES, counts.sandboxes),
                ("cube_master_template_builds", "Template build jobs kept in etcd by phase (counted by the leader)",
                 "phase", BUILD_PHASES, counts.builds),
                ("cube_master_nodes", "Registered nodes by state (counted by the leader)", "state", NODE_STATES,
                 counts.nodes)):
            g = GaugeMetricFamily(name, doc, labels=[label])
            for value in values:
                g.add_metric([value], float(tally.get(value, 0)))
            yield g

    async def count_loop(self) -> None:
        """A leader's duty: count the cluster's records every ``refresh_s``; cancelled with the lead."""
        try:
            while True:
                try:
                    self.counts = await count(self.store)
                except EtcdUnavailable as e:
                    log.warning("cluster state not counted for /metrics", extra={"error": str(e)})
                except Exception:  # noqa: BLE001 - figures are no reason to lose a leader duty
                    log.exception("cluster state not counted for /metrics")
                await asyncio.sleep(self.refresh_s)
        finally:
            self.counts = None


def route_acked(result: str, seconds: float) -> None:
    ROUTE_ACK_SECONDS.labels(result).observe(seconds)


def build_finished(job: P.TemplateBuild, result: str, seconds: float) -> None:
    """A build this master ran reached its verdict ``result`` (ready, failed) after ``seconds``."""
    BUILDS_FINISHED.labels(result).inc()
    BUILD_SECONDS.labels(result).observe(max(0.0, seconds))
    if result == "ready":
        for phase, ms in job.template.phase_ms.items():
            BUILD_PHASE_SECONDS.labels(phase.lower()).observe(ms / 1000)
