"""Benchmark of the guest agent on this host, driven by the unmodified E2B SDKs.

Starts envd the way the tests do (a throwaway overlay of `/` as the template root, ports
49983/49999), then measures over many calls: run_code `1+1`, command `true`, a 1 KB file write
followed by its read, and the throughput of 100 MB uploads. Progress goes to stderr; the LAST
line on stdout is one JSON object with p50/p99 per metric and the machine it ran on.

    .venv/bin/python bench/envd_bench.py [--calls 200] [--uploads 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

os.environ["E2B_DEBUG"] = "true"
os.environ.setdefault("E2B_API_KEY", "e2b_0000")

from services.envd.devroot import DevRoot  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(values: list[float], digits: int = 2) -> dict:
    return {"p50": round(percentile(values, 50), digits), "p99": round(percentile(values, 99), digits),
            "n": len(values), "mean": round(statistics.fmean(values), digits)}


def timed_ms(fn, n: int, label: str) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
        if (i + 1) % 50 == 0:
            print(f"  {label}: {i + 1}/{n}", file=sys.stderr, flush=True)
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem_gb, "kernel": platform.release(),
            "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per latency metric (>= 200)")
    ap.add_argument("--uploads", type=int, default=8, help="100 MB uploads to time")
    ap.add_argument("--upload-mb", type=int, default=100)
    a = ap.parse_args()

    log = tempfile.NamedTemporaryFile(prefix="envd-bench-", suffix=".log", delete=False).name
    print(f"starting envd (log {log})", file=sys.stderr, flush=True)
    with DevRoot(log_path=log) as dev:
        from e2b_code_interpreter import Sandbox

        sbx = Sandbox.create()
        # Warm-up: kernels started, connections pooled, code paths loaded.
        for _ in range(5):
            sbx.run_code("1+1")
            sbx.commands.run("true")
            sbx.files.write("/home/user/bench.txt", b"x" * 1024)
            sbx.files.read("/home/user/bench.txt", format="bytes")

        print("run_code 1+1", file=sys.stderr, flush=True)

        def run_code():
            assert sbx.run_code("1+1").text == "2"

        run_code_ms = timed_ms(run_code, a.calls, "run_code")

        print("command true", file=sys.stderr, flush=True)
        command_ms = timed_ms(lambda: sbx.commands.run("true"), a.calls, "command")

        print("1 KB write + read", file=sys.stderr, flush=True)
        payload = os.urandom(1024)

        def write_read():
            sbx.files.write("/home/user/bench.bin", payload)
            assert sbx.files.read("/home/user/bench.bin", format="bytes") == payload

        file_ms = timed_ms(write_read, a.calls, "file")

        size = a.upload_mb * 1024 * 1024
        src = tempfile.NamedTemporaryFile(prefix="envd-bench-", delete=False).name
        chunk = os.urandom(1024 * 1024)
        with open(src, "wb") as out:
            for _ in range(a.upload_mb):
                out.write(chunk)
        upload = []
        try:
            for i in range(a.uploads):
                with open(src, "rb") as data:
                    t = time.perf_counter()
                    sbx.files.write("/home/user/bench-upload.bin", data, request_timeout=600)
                    dt = time.perf_counter() - t
                upload.append(size / 2**20 / dt)
                print(f"  upload {i + 1}/{a.uploads}: {upload[-1]:.0f} MB/s", file=sys.stderr, flush=True)
        finally:
            os.unlink(src)
        peak_rss_mb = 0.0
        with open(f"/proc/{dev.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak_rss_mb = int(line.split()[1]) / 1024
        sbx.files.remove("/home/user/bench-upload.bin")

    result = {
        "run_code_ms": summary(run_code_ms),
        "command_ms": summary(command_ms),
        "file_write_read_ms": summary(file_ms),
        "upload_mb_s": summary(upload, 1),
        "upload_size_mb": a.upload_mb,
        "agent_peak_rss_mb": round(peak_rss_mb, 1),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
