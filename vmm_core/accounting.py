"""Resource accounting of a VMM process, from /proc."""
from __future__ import annotations

import os
from dataclasses import dataclass


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
