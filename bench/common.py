"""Shared helpers for benchmarks: percentiles, summaries, machine description, JSON output."""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(values: list[float], digits: int = 2) -> dict:
    return {"p50": round(percentile(values, 50), digits), "p99": round(percentile(values, 99), digits),
            "n": len(values)}


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem_gb, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The benchmark's machine-readable result: always the last line on stdout."""
    print(json.dumps(result, sort_keys=True), flush=True)


def point_sdk_at_node(cfg) -> None:
    """Point the unmodified E2B SDK at the running node ``cfg`` (a deploy.supervisor.NodeConfig)
    through the environment alone, as `make env` does; exit when the node is not up."""
    from deploy.env import sdk_env

    for var in ("E2B_DEBUG", "E2B_SANDBOX_URL", "E2B_DOMAIN"):
        os.environ.pop(var, None)
    os.environ.update(sdk_env(cfg))
    if not (cfg.run / "ready").exists():
        raise SystemExit("the node is not up: run `make up` first")
