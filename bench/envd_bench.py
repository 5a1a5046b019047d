"""Benchmark of the guest agent on this host, driven by the unmodified E2B SDKs.

Starts envd the way the tests do (a throwaway overlay of `/` as the template root, ports
49983/49999), then measures over many calls: run_code `1+1`, command `true`, a 1 KB file write
followed by its read, and the throughput of 100 MB uploads. Then, per language of the code
interpreter, the first run_code in a fresh agent (its default kernels started and settled, as in a
template snapshot; TypeScript, R and Java wait in reserve) and a warm one; languages this host
cannot run (R without IRkernel, say) are listed as unavailable. With `--node`, the same per
language in fresh sandboxes of the default template on the node `make up` runs (`eval "$(make -s
env)"` first): what a user meets under this machine's hypervisor. Progress goes to stderr; the
LAST line on stdout is one JSON object with p50/p99 per metric and the machine it ran on.

    .venv/bin/python bench/envd_bench.py [--calls 200] [--uploads 8] [--language-rounds 3] [--node]
"""

from __future__ import annotations

import argparse
import contextlib
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

from services.envd.devroot import DevRoot  # noqa: E402

# One cell per language that shows a value; what the SDK's own hello-world tests run.
LANGUAGE_CELLS = {"python": "1 + 1", "js": "1 + 1", "ts": "const n: number = 1; n + 1", "r": "1 + 1",
                  "java": "1 + 1", "bash": "echo 2"}
WARM_CALLS = 20


def debug_sdk(on: bool) -> None:
    """The SDKs' debug mode (localhost:49983/49999, no API) for the devroot, off for the node."""
    if on:
        os.environ["E2B_DEBUG"] = "true"
        os.environ.setdefault("E2B_API_KEY", "e2b_0000")
    else:
        os.environ.pop("E2B_DEBUG", None)


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


def _first_and_warm(next_sandbox, count: int, languages: list[str], warm_calls: int) -> dict:
    """The first run_code per language in each of `count` fresh sandboxes (`next_sandbox()`), then
    warm calls in the last one. Returns {language: {"first_ms": summary, "warm_ms": summary}}."""
    first: dict[str, list[float]] = {lang: [] for lang in languages}
    sbx = None
    for _ in range(count):
        sbx = next_sandbox()
        for lang in languages:
            t = time.perf_counter()
            ex = sbx.run_code(LANGUAGE_CELLS[lang], language=lang, timeout=600)
            first[lang].append((time.perf_counter() - t) * 1000)
            shown = (ex.text or "") + "".join(ex.logs.stdout) + "".join(r.text or "" for r in ex.results)
            assert ex.error is None and "2" in shown, (lang, ex)
            print(f"  {lang}: first run_code {first[lang][-1]:.0f} ms", file=sys.stderr, flush=True)
    assert sbx is not None
    out = {}
    for lang in languages:
        warm = timed_ms(lambda lang=lang: sbx.run_code(LANGUAGE_CELLS[lang], language=lang), warm_calls, lang)
        out[lang] = {"first_ms": summary(first[lang], 1), "warm_ms": summary(warm, 1)}
    return out


def devroot_languages(rounds: int, log: str) -> dict:
    """Per language on this host: each round a fresh agent whose default kernels started and
    answered an empty cell (the host's settle before a template snapshot)."""
    import httpx

    debug_sdk(True)
    from e2b_code_interpreter import Sandbox

    with contextlib.ExitStack() as stack:
        current: list[contextlib.ExitStack] = []
        available: list[str] = []

        def close_current() -> None:
            if current:
                current.pop().close()

        def next_sandbox():
            close_current()
            round_stack = contextlib.ExitStack()
            current.append(round_stack)
            round_stack.enter_context(DevRoot(log_path=log))
            # The host's settle before the default template's snapshot: an empty cell in every
            # language starts its default kernel (a 400: this host cannot run the language).
            available.clear()
            for lang in LANGUAGE_CELLS:
                r = httpx.post("http://127.0.0.1:49999/execute", json={"code": "", "language": lang}, timeout=600)
                if r.status_code == 200:
                    available.append(lang)
            return Sandbox.create()

        stack.callback(close_current)
        # Which languages this host has (the first agent is also the first round's).
        pending = [next_sandbox()]
        order = [lang for lang in LANGUAGE_CELLS if lang in available]
        results: dict = _first_and_warm(lambda: pending.pop() if pending else next_sandbox(), rounds, order,
                                        WARM_CALLS)
    results["unavailable"] = [lang for lang in LANGUAGE_CELLS if lang not in order]
    return results


def node_languages(count: int) -> dict:
    """Per language in fresh sandboxes of the default template on the node `make up` runs."""
    debug_sdk(False)
    if not os.environ.get("E2B_API_URL"):
        raise SystemExit("--node: run `eval \"$(make -s env)\"` first (E2B_API_URL is not set)")
    from e2b_code_interpreter import Sandbox

    created: list = []

    def next_sandbox():
        created.append(Sandbox.create(timeout=900))
        return created[-1]

    try:
        return _first_and_warm(next_sandbox, count, list(LANGUAGE_CELLS), 10)
    finally:
        for sbx in created:
            sbx.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per latency metric (>= 200)")
    ap.add_argument("--uploads", type=int, default=8, help="100 MB uploads to time")
    ap.add_argument("--upload-mb", type=int, default=100)
    ap.add_argument("--language-rounds", type=int, default=3, help="fresh agents for the per-language first run_code")
    ap.add_argument("--node", action="store_true", help="also per language in fresh sandboxes on the make-up node")
    ap.add_argument("--node-sandboxes", type=int, default=5)
    a = ap.parse_args()

    log = tempfile.NamedTemporaryFile(prefix="envd-bench-", suffix=".log", delete=False).name
    print(f"starting envd (log {log})", file=sys.stderr, flush=True)
    debug_sdk(True)
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

    languages = devroot_languages(a.language_rounds, log)
    node = node_languages(a.node_sandboxes) if a.node else None
    result = {
        "run_code_ms": summary(run_code_ms),
        "command_ms": summary(command_ms),
        "file_write_read_ms": summary(file_ms),
        "upload_mb_s": summary(upload, 1),
        "upload_size_mb": a.upload_mb,
        "agent_peak_rss_mb": round(peak_rss_mb, 1),
        "languages_host": languages,
        **({"languages_node": node} if node is not None else {}),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
