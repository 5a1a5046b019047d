"""What one tenant's guest cannot do to the node (issue 12): print without end, fork without end,
allocate past its memory. Each stays inside its own sandbox, bounded by its own limits, and another
sandbox on the node keeps answering the whole time."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from deploy.env import sdk_env
from tests.e2e import cluster
from tests.e2e.cluster import API_URL, CFG, VMS


def vm_of(sandbox_id: str) -> cluster.Vm:
    found = [v for v in cluster.vms().values() if v.sandbox_id == sandbox_id and v.alive]
    assert len(found) == 1, f"{sandbox_id}: {found}"
    return found[0]


def answers(sbx, within: float = 60.0) -> float:
    t0 = time.monotonic()
    assert sbx.commands.run("echo alive", timeout=within).stdout.strip() == "alive"
    return time.monotonic() - t0


def cgroup_of(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def test_a_guest_printing_without_end_is_a_bounded_ring_on_the_host(sandboxes):
    sbx = sandboxes.create()
    vm = vm_of(sbx.sandbox_id)
    console = VMS / vm.vm_id / "console.log"
    # ~4 MiB of lines to the serial console: four times the ring's cap (console_max_kb, 1 MiB).
    sbx.commands.run("yes 'the guest will not stop talking' | head -c 4000000 > /dev/ttyS0", user="root",
                     timeout=300)
    cap = 1 << 20
    deadline = time.monotonic() + 30  # the cubelet trims on its metrics tick (5 s)
    while console.stat().st_size > cap and time.monotonic() < deadline:
        time.sleep(0.5)
    assert console.stat().st_size <= cap
    r = httpx.get(f"{API_URL}/sandboxes/{sbx.sandbox_id}/logs", headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]},
                  timeout=30)
    assert r.status_code == 200
    assert "the guest will not stop talking" in r.text
    answers(sbx)


def test_a_fork_bomb_and_a_memory_hog_stay_in_their_sandbox(sandboxes):
    bystander = sandboxes.create()
    baseline = answers(bystander)
    bomb = sandboxes.create()
    hog = sandboxes.create()
    bomb_vm, hog_vm = vm_of(bomb.sandbox_id), vm_of(hog.sandbox_id)
    assert bomb_vm.pid is not None and hog_vm.pid is not None
    pids_of = {bomb_vm.vm_id: bomb_vm.pid, hog_vm.vm_id: hog_vm.pid}
    # Both run as root inside their guests and never return on their own.
    bomb.commands.run("nohup sh -c 'f() { f | f & }; f' >/dev/null 2>&1 &", user="root", background=True)
    hog.commands.run("python3 -c 'b = []\nwhile True: b.append(bytearray(64 << 20))'", user="root",
                     background=True)
    time.sleep(20)
    # The node keeps serving another tenant: the bystander answers, not much slower than before.
    assert answers(bystander) < max(10.0, 5 * baseline)
    # Each guest's QEMU stayed inside its own cgroup's limits, whatever happened inside the guest.
    groups = []
    for vm in (bomb_vm, hog_vm):
        mem = cgroup_of(pids_of[vm.vm_id], "memory")
        groups.append(mem)
        assert mem.name == vm.vm_id
        limit = int((mem / "memory.limit_in_bytes").read_text())
        assert int((mem / "memory.max_usage_in_bytes").read_text()) <= limit
        pids = cgroup_of(pids_of[vm.vm_id], "pids")
        assert int((pids / "pids.current").read_text()) <= int((pids / "pids.max").read_text())
    # And they can be killed like any other, leaving nothing behind.
    for sbx in (bomb, hog):
        assert sbx.kill() is True
    for vm, mem in zip((bomb_vm, hog_vm), groups, strict=True):
        cluster.wait_until(lambda vm=vm: not (VMS / vm.vm_id).exists(), timeout=60, what=f"{vm.vm_id} gone")
        assert not mem.exists(), f"{mem} left behind"
    answers(bystander)


pytestmark = pytest.mark.timeout(900)
