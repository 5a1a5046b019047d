"""Resource accounting of a VMM process, from /proc, and of the host's page merging (KSM)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KSM = Path("/sys/kernel/mm/ksm")


@dataclass(frozen=True)
class ProcessMemory:
    rss: int
    pss: int  # shared pages divided among their sharers: what a clone really costs
    private_dirty: int  # pages only this process has written (its copy-on-write copies)


def process_memory(pid: int) -> ProcessMemory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return ProcessMemory(fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Private_Dirty", 0))


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the comm field they are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """The host's (idle, total) CPU time since boot in clock ticks, all cores: two readings give
    the idle share between them. Idle includes iowait."""
    with open(stat) as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks[:8])  # user..steal; guest time is counted in user already


@dataclass(frozen=True)
class KsmState:
    running: bool  # ksmd merges (run = 1)
    saved_bytes: int  # what merging saves host-wide now: pages mapped by more than one place, less one each


def ksm_state(root: Path = KSM) -> KsmState | None:
    """The host's KSM, or None where the kernel has none. Host-wide: a guest's RAM takes part only
    when its machine was started with ``mem_merge`` (VmmSettings)."""
    try:
        running = (root / "run").read_text().strip() == "1"
        sharing = int((root / "pages_sharing").read_text())
    except (OSError, ValueError):
        return None
    return KsmState(running, sharing * os.sysconf("SC_PAGE_SIZE"))
