"""How many more sandboxes this node can take: from measurement, not a constant.

    room = headroom(Host(total, available, cores), running, samples, Limits(...))
    room.can_take        # 0: refuse, with room.reason

Inputs, all measured:
- the host's MemTotal and MemAvailable (/proc/meminfo) and its CPU count;
- the latest sample of each running sandbox (the metrics loop's, every ``metrics_interval_s``):
  its VMM's PSS, shared pages divided among their sharers, and its CPU use.

The estimate of one more sandbox:
- memory: what a settled sandbox costs, the 90th percentile PSS of those that have run
  ``SETTLED_S`` (a fresh clone keeps dirtying pages for its first minute: its kernels, timers and
  agent settle) once there are ``MIN_SAMPLES`` of them, else ``sandbox_memory_estimate_mb`` (a first
  guess, in the settings). A sandbox that has not settled yet is charged against MemAvailable what
  it has still to grow by that estimate (all of it when not sampled yet, e.g. a create in flight);
  admitting on young sandboxes' figures alone once let a fill of 140 take the host down to 112 MB;
- CPU: the lower quartile of the sandboxes' CPU use, once ``MIN_CPU_SAMPLES`` have a rate (two
  samples). A low quantile because it stands for an idle sandbox: busy ones (a user's loop, a
  create's first seconds) must not make the node look full. It limits only once many sandboxes
  run: a few busy ones on a small node are load, not a lack of room.

``can_take`` is the least of:
- (MemAvailable - reserve - what unsettled sandboxes have still to grow by) / memory per sandbox,
  the reserve being ``memory_reserve_mb`` or, at 0, max(2 GiB, 10 % of MemTotal): the host's own
  services and page cache, template builds, pauses and sandboxes growing past their estimate need
  room too;
- (cores x ``cpu_target_pct`` - running x CPU per sandbox) / CPU per sandbox;
- ``max_sandboxes`` - running, the operator's cap, when set (0: none).

Paused sandboxes hold no VM and count for none of these. The node refuses a create or a resume when
``can_take`` is 0 and publishes it in its NodeStatus, which the master's scheduler reads.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

MIN_SAMPLES = 4
SETTLED_S = 60.0
MIN_CPU_SAMPLES = 16
GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Host:
    memory_total: int      # bytes
    memory_available: int  # bytes
    cores: int


@dataclass(frozen=True)
class Sample:
    """The latest measurement of one running sandbox's VMM."""

    pss: int           # bytes
    age_s: float       # how long it has been sampled (~ how long it has run)
    cpu_cores: float | None  # CPU use in cores (0.01 = 10 ms of CPU per second); None: no rate yet


@dataclass(frozen=True)
class Limits:
    """The operator's knobs (CubeletSettings)."""

    max_sandboxes: int = 0            # 0: no cap beyond the measured headroom
    memory_reserve_mb: int = 0        # 0: max(1 GiB, 5 % of MemTotal)
    sandbox_memory_estimate_mb: int = 256
    cpu_target_pct: float = 80.0


@dataclass(frozen=True)
class Headroom:
    can_take: int
    memory_per_sandbox: int  # bytes, the estimate used
    cpu_per_sandbox: float   # cores, the estimate used (0: not measured yet)
    limited_by: str          # "memory", "cpu" or "cap"
    reason: str              # why the node is full (when can_take is 0), for the refusal


def reserve_bytes(host: Host, limits: Limits) -> int:
    if limits.memory_reserve_mb > 0:
        return limits.memory_reserve_mb * MiB
    return max(2 * GiB, host.memory_total // 10)


def headroom(host: Host, running: int, samples: list[Sample], limits: Limits) -> Headroom:
    """See the module docstring. ``running``: sandboxes holding a VM (creating ones included),
    ``samples``: the latest sample of those that have one."""
    unsampled = max(0, running - len(samples))
    mem_each = limits.sandbox_memory_estimate_mb * MiB
    settled = [s.pss for s in samples if s.age_s >= SETTLED_S]
    if len(settled) >= MIN_SAMPLES:
        mem_each = max(MiB, int(statistics.quantiles(settled, n=10, method="inclusive")[-1]))
    growth = unsampled * mem_each + sum(max(0, mem_each - s.pss) for s in samples if s.age_s < SETTLED_S)
    rates = [s.cpu_cores for s in samples if s.cpu_cores is not None]
    cpu_each = 0.0
    if len(rates) >= MIN_CPU_SAMPLES:
        cpu_each = statistics.quantiles(rates, n=4, method="inclusive")[0]
    reserve = reserve_bytes(host, limits)
    free = host.memory_available - reserve - growth
    by = {"memory": max(0, free // mem_each)}
    if cpu_each > 0:
        budget = host.cores * limits.cpu_target_pct / 100.0
        by["cpu"] = max(0, math.floor((budget - running * cpu_each) / cpu_each))
    if limits.max_sandboxes > 0:
        by["cap"] = max(0, limits.max_sandboxes - running)
    limited_by = min(by, key=lambda k: by[k])
    can_take = int(by[limited_by])
    reason = ""
    if can_take == 0:
        if limited_by == "memory":
            reason = (f"{max(0, host.memory_available) >> 20} MiB of memory available, less a reserve of "
                      f"{reserve >> 20} MiB and {growth >> 20} MiB that new sandboxes have still to grow by, "
                      f"leaves no room for another (~{mem_each >> 20} MiB each)")
        elif limited_by == "cpu":
            reason = (f"{running} sandboxes use ~{cpu_each * 1000:.0f} ms of CPU per second each when idle; "
                      f"another would pass {limits.cpu_target_pct:g} % of {host.cores} cores")
        else:
            reason = f"{running} sandboxes running, the operator's cap is {limits.max_sandboxes}"
    return Headroom(can_take, mem_each, cpu_each, limited_by, reason)
