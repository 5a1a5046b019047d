"""Fixtures for CubeVS tests: a lab of namespaces, a node datapath in it, guests on its taps.

Every fixture cleans up in its finalizer, and the node fixture then checks that nothing of the
datapath is left: no program or map (by the kernel ids it loaded), no pin, no tap, no netns.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests/ is not a package; make `testkit` and `services` importable
    sys.path.insert(0, str(REPO))

from services.vs import libbpf  # noqa: E402
from services.vs.datapath import LoadedIds  # noqa: E402
from services.vs.network import NodeNetwork, SandboxNetwork  # noqa: E402
from services.vs.settings import Settings  # noqa: E402
from testkit.vs_lab import GuestEndpoint, Lab, links, ns_exists  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, eBPF)")


def _wait_gone(check, timeout: float = 5.0) -> bool:
    # Maps and programs are freed asynchronously after their last reference drops.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def lab():
    lab = Lab().build()
    try:
        yield lab
    finally:
        lab.close()
        leftover = [n for n in lab.namespaces + [g.ns for g in lab.guests] if ns_exists(n)]
        assert not leftover, f"namespaces left behind: {leftover}"


@pytest.fixture
def make_node(lab, tmp_path):
    """Factory: a started NodeNetwork running in the lab's node namespace."""
    nodes: list[tuple[NodeNetwork, LoadedIds]] = []

    def make(**overrides) -> NodeNetwork:
        kw = {"state_dir": tmp_path / "state", "pin_subdir": f"cube-test-{lab.id}/vs", "netns": lab.node,
              "uplinks": lab.uplinks, "pool_size": 2}
        kw.update(overrides)
        node = NodeNetwork(Settings(**kw).validate())
        node.start()
        nodes.append((node, node.datapath.loaded_ids()))
        return node

    yield make

    errors = []
    for node, ids in reversed(nodes):
        try:
            if not node._started:  # a test stopped it (restart): a fresh instance cleans up
                node = NodeNetwork(node.settings)
                node.start()
            node.teardown()
        except Exception as e:  # keep cleaning the others
            errors.append(f"teardown: {e!r}")
        if ns_exists(lab.node):
            taps = [link for link in links(lab.node) if node.taps.is_ours(link)]
            if taps:
                errors.append(f"taps left: {taps}")
        if not _wait_gone(lambda ids=ids: not any(libbpf.prog_exists(i) for i in ids.programs.values())):
            errors.append(f"programs left: {ids.programs}")
        if not _wait_gone(lambda ids=ids: not any(libbpf.map_exists(i) for i in ids.maps.values())):
            errors.append(f"maps left: {ids.maps}")
    # Also when a node failed to start (it never made it into `nodes`).
    pin_root = Settings().bpffs / f"cube-test-{lab.id}"
    if pin_root.exists():
        errors.append(f"pins left in {pin_root}: {list(pin_root.rglob('*'))}")
    assert not errors, "; ".join(errors)


@pytest.fixture
def node(make_node) -> NodeNetwork:
    return make_node()


@pytest.fixture
def guest_endpoint(lab):
    """Factory: bring up the guest side of a sandbox's tap.

    Today: a guest netns configured with the sandbox's guest identity, bridged to the node tap
    by a process that holds the tap fd (testkit/tapbridge.py). The same call will start a
    microVM on the tap once vmm_core is there; tests only use `.ns` to run code "in the guest".
    """

    def start(sb: SandboxNetwork, offload: bool = True) -> GuestEndpoint:
        return lab.guest(sb.tap, sb.guest, offload=offload)

    return start


@pytest.fixture
def state_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)
