"""Idle benchmark: what an idle code interpreter costs its host, and what wakes it, source by source.

    .venv/bin/python bench/idle_bench.py [--sandboxes 3] [--settle-s 20] [--window-s 60]
                                         [--trace-s 30] [--top 15]

Against a running node (`make up`), with the unmodified SDK (`e2b_code_interpreter.Sandbox`), one
sandbox after the other (the others killed, so each measures alone beside the node's warm pool):
1. Create, `run_code("1")`, then nothing for --settle-s.
2. Host: over --window-s with no request to the sandbox, its QEMU's threads' time on CPU
   (/proc/<pid>/task/<tid>/schedstat, nanoseconds) and context switches per second, split into
   QEMU's main loop (the thread whose id is the pid: timers, I/O) and the rest (the vCPU under
   TCG does the guest's work there).
     host_ms_per_s       {main, vcpu, total} per sandbox (p50, max)
     host_switches_per_s {main, vcpu} (p50)
3. Guest: the guest kernel's own trace (tracefs, mounted by the sandbox's root) over --trace-s:
   every timer that expired (timer and hrtimer functions), every workqueue item run, every task
   woken (by name), every interrupt handled, and the local timer interrupts (the guest's wake-ups).
   The commands that start and stop the trace run at its edges, so only events from 2 s after
   the start to 2 s before the end are counted. Tracing costs CPU itself: the host window (2) is
   taken first, without it.
     guest_wakeups_per_s local timer interrupts per second (p50)
     guest_sources       the --top sources by rate (p50 over the sandboxes), each "kind:name"
Each sandbox is killed after its turn (and all on Ctrl-C or an error).

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from e2b_code_interpreter import Sandbox  # noqa: E402

from bench.common import emit, machine, percentile, point_sdk_at_node, progress  # noqa: E402
from bench.density_bench import CFG, qemu_pid  # noqa: E402
from vmm_core.settings import VmmSettings  # noqa: E402

TRACEFS = "/sys/kernel/tracing"
EVENTS = ("timer/timer_expire_entry", "timer/hrtimer_expire_entry", "workqueue/workqueue_execute_start",
          "sched/sched_wakeup", "irq/irq_handler_entry", "irq_vectors/local_timer_entry")
EDGE_S = 2.0
# "<task>-<pid> [cpu] <flags> <timestamp>: <event>: <fields>"
_LINE = re.compile(r"\s(\d+\.\d+): (\w+): (.*)$")
_FIELD = {"timer_expire_entry": re.compile(r"function=(\S+)"), "hrtimer_expire_entry": re.compile(r"function=(\S+)"),
          "workqueue_execute_start": re.compile(r"function (\S+)"), "sched_wakeup": re.compile(r"comm=(\S+)"),
          "irq_handler_entry": re.compile(r"name=(\S+)")}
_KIND = {"timer_expire_entry": "timer", "hrtimer_expire_entry": "hrtimer", "workqueue_execute_start": "work",
         "sched_wakeup": "wakeup", "irq_handler_entry": "irq"}


def threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread's (ns on CPU, context switches) so far."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat") as f:
                ns = int(f.read().split()[0])
            switches = 0
            with open(f"{task}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        switches += int(line.split(":")[1])
            out[int(os.path.basename(task))] = (ns, switches)
        except (OSError, ValueError):
            pass
    return out


def host_window(pid: int, window_s: float) -> dict:
    a, t0 = threads(pid), time.monotonic()
    time.sleep(window_s)
    b, wall = threads(pid), time.monotonic() - t0
    ms = {"main": 0.0, "vcpu": 0.0}
    sw = {"main": 0.0, "vcpu": 0.0}
    for tid, (ns, switches) in b.items():
        if tid in a:
            kind = "main" if tid == pid else "vcpu"
            ms[kind] += (ns - a[tid][0]) / 1e6 / wall
            sw[kind] += (switches - a[tid][1]) / wall
    return {"ms": {**ms, "total": ms["main"] + ms["vcpu"]}, "switches": sw}


def parse_trace(text: str) -> tuple[float, float, collections.Counter]:
    """(local timer interrupts per second, span counted, events per source) of a tracefs dump."""
    events = [(float(m.group(1)), m.group(2), m.group(3)) for line in text.splitlines()
              if not line.startswith("#") and (m := _LINE.search(line))]
    if not events:
        return 0.0, 0.0, collections.Counter()
    lo, hi = events[0][0] + EDGE_S, events[-1][0] - EDGE_S
    span = max(hi - lo, 1e-9)
    counts: collections.Counter = collections.Counter()
    ticks = 0
    for ts, ev, fields in events:
        if not lo <= ts <= hi:
            continue
        if ev == "local_timer_entry":
            ticks += 1
        elif ev in _FIELD and (m := _FIELD[ev].search(fields)):
            counts[f"{_KIND[ev]}:{m.group(1)}"] += 1
    return ticks / span, span, counts


def guest_trace(sbx: Sandbox, trace_s: float) -> str:
    enable = "; ".join(f"echo 1 > {TRACEFS}/events/{e}/enable 2>/dev/null" for e in EVENTS)
    sbx.commands.run(f"mountpoint -q {TRACEFS} || mount -t tracefs none {TRACEFS}; echo 0 > {TRACEFS}/tracing_on; "
                     f"echo > {TRACEFS}/trace; echo 4096 > {TRACEFS}/buffer_size_kb; {enable}; "
                     f"echo 1 > {TRACEFS}/tracing_on", user="root")
    time.sleep(trace_s)
    return sbx.commands.run(f"echo 0 > {TRACEFS}/tracing_on; cat {TRACEFS}/trace", user="root",
                            timeout=120).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sandboxes", type=int, default=3)
    p.add_argument("--settle-s", type=float, default=20.0)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--trace-s", type=float, default=30.0)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    point_sdk_at_node(CFG)
    vms = VmmSettings()
    host: list[dict] = []
    wakeups: list[float] = []
    rates: dict[str, list[float]] = collections.defaultdict(list)
    for i in range(args.sandboxes):
        sbx = Sandbox.create(metadata={"bench": "idle"}, timeout=600)
        try:
            sbx.run_code("1")
            pid = qemu_pid(sbx.sandbox_id, vms)
            if pid is None:
                raise SystemExit(f"no QEMU found for sandbox {sbx.sandbox_id} under {vms.vms_dir}")
            time.sleep(args.settle_s)
            h = host_window(pid, args.window_s)
            host.append(h)
            ticks, span, counts = parse_trace(guest_trace(sbx, args.trace_s))
            wakeups.append(ticks)
            for source, n in counts.items():
                rates[source].append(n / span)
            progress(f"sandbox {i + 1}/{args.sandboxes}: host {h['ms']['total']:.2f} ms/s "
                     f"(main {h['ms']['main']:.2f}, vcpu {h['ms']['vcpu']:.2f}), guest {ticks:.1f} wake-ups/s")
        finally:
            sbx.kill()
    n = len(host)

    def p50(values: list[float]) -> float:
        return round(percentile(values + [0.0] * (n - len(values)), 50), 2)  # a source absent counts 0

    top = sorted(rates, key=lambda s: -p50(rates[s]))[:args.top]
    emit({"bench": "idle", "machine": machine(), "sandboxes": n, "window_s": args.window_s, "trace_s": args.trace_s,
          "host_ms_per_s": {k: {"p50": p50([h["ms"][k] for h in host]),
                                "max": round(max(h["ms"][k] for h in host), 2)} for k in ("main", "vcpu", "total")},
          "host_switches_per_s": {k: p50([h["switches"][k] for h in host]) for k in ("main", "vcpu")},
          "guest_wakeups_per_s": p50(wakeups),
          "guest_sources": {s: p50(rates[s]) for s in top},
          "target_ms_per_s": 2.0})


if __name__ == "__main__":
    main()
