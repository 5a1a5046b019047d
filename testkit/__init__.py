"""Harnesses that run real parts of a node for tests and benchmarks (dev-only, not distributed).

Both `tests/` and `bench/` import from here; nothing here imports from either, so a benchmark runs
without the test tree's fixtures and a harness change shows in both at once. Pytest fixtures that
wrap these harnesses stay in `tests/**/conftest.py`.

    ports       free loopback ports, waiting for a listener
    etcd        a real etcd server on loopback
    proxy       CubeProxy and stand-in guest servers as processes
    upstream    the stand-in guest HTTP server itself (`python -m testkit.upstream`)
    registry    docker-registry and a bearer token service on loopback
    probe_root  a tiny busybox root filesystem for test microVMs
    netlab      a network namespace with a tap for one test microVM
    vs_lab      namespaces, veths, echo servers and guests around CubeVS
    tapbridge   a VM NIC stand-in bridging a CubeVS tap into a guest netns (`python -m testkit.tapbridge`)

Shared invariants: servers bind loopback (or addresses inside namespaces the harness made) only;
every process, namespace and temporary directory a harness creates, its stop/close/destroy removes.

Importable from the repository root: pytest has `pythonpath = ["."]`, the bench scripts put the
root on `sys.path`, and the processes harnesses spawn run with the root as working directory.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
