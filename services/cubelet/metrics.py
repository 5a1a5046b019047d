"""Prometheus figures of the cubelet: this node's sandboxes, warm pool and capacity. (Not the E2B
sandbox metrics, CPU and memory per sandbox, that sandboxes.py samples for the API.)

- Every Cubelet gRPC call: ``cube_grpc_server_*`` (cube_common/metrics.py); etcd: ``cube_etcd_*``.
- ``cube_cubelet_sandbox_start_seconds{op, path}``: how long a sandbox took to come up here, from
  the moment its template was at hand to running with its identity. ``op`` is ``create`` or
  ``resume``; ``path`` is how: ``warm_pool`` (a pooled clone claimed), ``clone`` (a fresh
  copy-on-write clone of the template's snapshot), ``standby`` (such a clone restored into the
  QEMU the pool started ahead), ``cold_boot`` (booted: a filesystem-only
  snapshot, or a resume without memory), ``restore`` (a paused sandbox's memory restored).
- ``cube_cubelet_sandbox_create_step_seconds{step}``: the steps of those creates (the ``steps_ms``
  of the ``sandbox running`` log line).
- ``cube_cubelet_warm_pool_claims_total{template, result}``: creates that found a pooled clone of
  their template (``hit``) or not (``miss``); ``cube_cubelet_warm_pool_ready{template}``: clones
  pooled now; ``cube_cubelet_warm_pool_target{template}``: how many it keeps now;
  ``cube_cubelet_warm_pool_standby{template}``: 1 while a QEMU waits for a miss (warm_pool.py).
- ``cube_cubelet_sandboxes{state}``: the sandboxes this node holds, by state.
- ``cube_cubelet_sandbox_dropped_packets_total{sandbox_id, reason}``: packets CubeVS's eBPF
  datapath dropped for a running sandbox, by reason (services/vs/counters.py: ``policy`` is the
  sandbox's own egress rules or ``allow_internet_access=false``; ``infra``, ``node`` and
  ``sandbox`` the egress every sandbox is denied; ``ingress`` unsolicited traffic to it; the
  rest malformed or unsupported packets). Read from CubeVS (its Stats call) at each scrape, for
  the sandboxes running then, and reported here because only the cubelet knows which sandbox
  holds a network (a sandbox that began as a pooled clone has the pool entry's). Only reasons
  that dropped something appear; a sandbox's series end when it stops running here.
- ``cube_node_*``: the node's capacity as its NodeStatus reports it to the masters, and
  ``cube_node_ksm_saved_bytes``: what the host's page merging saves (vmm_core.accounting.ksm_state).

Invariant: ``template`` labels name templates this node holds at the scrape, ``sandbox_id`` ones
sandboxes running here at the scrape. Both are computed when scraped, so a template's series end
with the template (a fork's snapshot goes with its last sandbox) and a sandbox's with the sandbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cube_common import metrics
from sdk.gen.cube.v1 import vs_pb2
from vmm_core import accounting

from .steps import Steps

if TYPE_CHECKING:  # server.py imports sandboxes.py, which imports this module
    from .server import CubeletService

START_SECONDS = Histogram("cube_cubelet_sandbox_start_seconds", "How long sandboxes took to come up on this node, "
                          "by operation (create, resume) and path (warm_pool, clone, standby, cold_boot, restore)",
                          ["op", "path"], buckets=metrics.START_BUCKETS)
CREATE_STEP_SECONDS = Histogram("cube_cubelet_sandbox_create_step_seconds", "How long each step of a create took "
                                "(network, clone, boot, identity, ...; steps_ms in the logs)", ["step"],
                                buckets=metrics.START_BUCKETS)

# (template id, hit|miss) -> claims since start (or since the template last came). Read, and pruned
# of templates no longer here, at scrape time in the cubelet's loop, as they are counted.
_claims: dict[tuple[str, str], int] = {}


def pool_claimed(template_id: str, hit: bool) -> None:
    key = (template_id, "hit" if hit else "miss")
    _claims[key] = _claims.get(key, 0) + 1


def create_path(from_pool: bool, steps: Steps) -> str:
    """Which way a create came up: sandboxes.py's ``_start`` names its steps by it."""
    if from_pool:
        return "warm_pool"
    ms = steps.ms()
    return "cold_boot" if "boot" in ms else "standby" if "clone.standby" in ms else "clone"


def sandbox_created(from_pool: bool, steps: Steps) -> None:
    path = create_path(from_pool, steps)
    START_SECONDS.labels("create", path).observe(steps.total())
    for step, ms in steps.ms().items():
        CREATE_STEP_SECONDS.labels(step).observe(ms / 1000)


def sandbox_resumed(rebooted: bool, seconds: float) -> None:
    START_SECONDS.labels("resume", "cold_boot" if rebooted else "restore").observe(seconds)


class CubeletMetrics:
    """The figures read from one cubelet's state at every scrape (see the module docstring)."""

    def __init__(self, service: CubeletService) -> None:
        self.service = service
        self._source: metrics.SourceHandle | None = None
        # CubeVS's counters of the running sandboxes' networks as last read: network id -> stats.
        self._stats: dict[str, vs_pb2.SandboxStats] = {}

    def register(self) -> CubeletMetrics:
        self._source = metrics.add_source(self.families, refresh=self.read_counters)
        return self

    async def read_counters(self) -> None:
        """CubeVS's counters of every network it holds (no ids asked: one released meanwhile would
        fail the call for all)."""
        self._stats = await self.service.sandboxes.vs.stats([])

    def unregister(self) -> None:
        if self._source is not None:
            self._source.remove()
            self._source = None

    def families(self) -> Iterable[Metric]:
        from .sandboxes import State  # sandboxes.py imports this module

        sandboxes, templates = self.service.sandboxes, self.service.templates
        held = [t.template_id for t in templates.list()]

        states = sandboxes.states()
        g = GaugeMetricFamily("cube_cubelet_sandboxes", "Sandboxes this node holds, by state", labels=["state"])
        for state in State:
            g.add_metric([state.value], float(states.get(state, 0)))
        yield g

        ready = GaugeMetricFamily("cube_cubelet_warm_pool_ready", "Pooled clones ready to become sandboxes, per "
                                  "template this node holds", labels=["template"])
        for tid in held:
            ready.add_metric([tid], float(sandboxes.pool.size(tid)))
        yield ready
        target = GaugeMetricFamily("cube_cubelet_warm_pool_target", "Clones the pool keeps now, per template this "
                                   "node holds (warm_pool_size, more while creates come fast)", labels=["template"])
        for tpl in templates.list():
            target.add_metric([tpl.template_id], float(sandboxes.pool.kept(tpl)))
        yield target
        standby = GaugeMetricFamily("cube_cubelet_warm_pool_standby", "QEMUs started ahead for a create that finds "
                                    "no pooled clone, per template this node holds (0 or 1)", labels=["template"])
        for tid in held:
            standby.add_metric([tid], float(sandboxes.pool.standby_ready(tid)))
        yield standby
        claims = CounterMetricFamily("cube_cubelet_warm_pool_claims", "Creates that found a pooled clone of their "
                                     "template (hit) or had to make one (miss)", labels=["template", "result"])
        here = set(held)
        for key in [k for k in _claims if k[0] not in here]:
            del _claims[key]  # a template gone from the node (a fork's snapshot): its series end
        for (tid, result), n in sorted(_claims.items()):
            claims.add_metric([tid, result], float(n))
        yield claims

        drops = CounterMetricFamily("cube_cubelet_sandbox_dropped_packets", "Packets CubeVS's datapath dropped "
                                    "for a running sandbox, by reason (policy: its egress rules)",
                                    labels=["sandbox_id", "reason"])
        stats = self._stats
        for vs_id, sid in sorted(sandboxes.network_ids().items(), key=lambda kv: kv[1]):
            st = stats.get(vs_id)
            if st is not None:
                for reason, n in sorted(st.drops.items()):
                    drops.add_metric([sid, reason], float(n))
        yield drops

        yield from node_families(self.service)


def node_families(service: CubeletService) -> Iterable[Metric]:
    """The node's capacity, as its NodeStatus tells the masters."""
    st = service.node_status()
    info = GaugeMetricFamily("cube_node_info", "This node: its id and the accelerator its VMs use",
                             labels=["node", "accel"])
    info.add_metric([st.node_id, st.accel], 1.0)
    yield info
    for name, doc, value in (
            ("cube_node_vcpus", "CPUs of this node", st.vcpus_total),
            ("cube_node_memory_bytes", "Memory of this node", st.memory_total_bytes),
            ("cube_node_memory_available_bytes", "Memory available on this node (MemAvailable)",
             st.memory_available_bytes),
            ("cube_node_disk_free_bytes", "Free space under the node's state dir", st.disk_free_bytes),
            ("cube_node_disk_watermark_bytes", "Below this much free space the node takes no new sandbox or build",
             st.disk_watermark_bytes),
            ("cube_node_max_sandboxes", "The operator's cap on sandboxes running here (max_sandboxes; 0: none)",
             st.max_sandboxes),
            ("cube_node_sandboxes_can_take", "More sandboxes this node can take now, from its measured memory and "
             "CPU headroom and its cap", st.sandboxes_can_take),
            ("cube_node_sandbox_memory_estimate_bytes", "What one more sandbox is taken to cost in host memory "
             "(settled sandboxes' 90th percentile PSS once measured)", st.sandbox_memory_estimate_bytes),
            ("cube_node_templates", "Templates (and snapshots) this node holds", len(st.templates))):
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(value))
        yield g
    ksm = accounting.ksm_state()
    if ksm is not None:
        g = GaugeMetricFamily("cube_node_ksm_saved_bytes", "Memory the host's KSM saves now by merging identical "
                              "pages (host-wide; guests' RAM takes part only with CUBE_MEM_MERGE)")
        g.add_metric([], float(ksm.saved_bytes))
        yield g
