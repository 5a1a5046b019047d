"""What one tenant's guest cannot do to the node (issue 12): print without end, fork without end,
allocate past its memory. Each stays inside its own sandbox, bounded by its own limits, and another
sandbox on the node keeps answering the whole time. A VM that its limits (or anything else) end is
reported by the node with the reason and removed, with everything it held."""
from __future__ import annotations

import os
import signal
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


def ended_in_log(sandbox_id: str, offset: int) -> dict | None:
    for entry in cluster.json_lines(cluster.log_since("cubelet", offset)):
        if entry.get("msg") == "sandbox ended: its VM is gone" and entry.get("sandbox_id") == sandbox_id:
            return entry
    return None


@pytest.mark.parametrize("how", ["memory-limit", "kill-9"])
def test_a_vm_that_ends_on_its_own_is_reported_and_removed(sandboxes, how):
    bystander = sandboxes.create()
    victim = sandboxes.create()
    vm = vm_of(victim.sandbox_id)
    assert vm.pid is not None
    mem = cgroup_of(vm.pid, "memory")
    cubelet_off, master_off = cluster.log_offset("cubelet"), cluster.log_offset("master")
    if how == "memory-limit":
        # A guest cannot pass guest memory plus the VMM's overhead on its own (the test above). Here
        # the limit is cut to just above what QEMU holds now, as a VMM overhead larger than measured
        # would be: the guest's next writes to fresh pages take QEMU past it.
        used = int((mem / "memory.usage_in_bytes").read_text())
        (mem / "memory.limit_in_bytes").write_text(str(used + (24 << 20)))
        victim.commands.run("python3 -c 'b = bytes(1) * (600 << 20)'", user="root", background=True)
        cause, words = "out-of-memory", "memory limit"
    else:
        os.kill(vm.pid, signal.SIGKILL)
        cause, words = "signal", "SIGKILL"
    # The node notices on its next tick (metrics_interval_s), says why, and removes it all.
    entry = cluster.wait_until(lambda: ended_in_log(victim.sandbox_id, cubelet_off), timeout=60,
                               what="the cubelet's report")
    assert entry["cause"] == cause and words in entry["reason"], entry
    assert entry["level"] == "error"
    assert not mem.exists(), f"{mem} left behind"
    # The master learns it from the node (with the node's reason) and drops the record and route.
    cluster.wait_until(lambda: not cluster.traces_of(victim.sandbox_id), timeout=90,
                       what=f"{victim.sandbox_id} gone from the node and etcd")
    vanished = [e for e in cluster.json_lines(cluster.log_since("master", master_off))
                if e.get("msg") == "vm vanished; record removed" and e.get("sandbox_id") == victim.sandbox_id]
    assert vanished and words in vanished[0]["reason"], vanished
    r = httpx.get(f"{API_URL}/sandboxes/{victim.sandbox_id}", headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]},
                  timeout=30)
    assert r.status_code == 404 and r.json()["code"] == 404
    answers(bystander)


pytestmark = pytest.mark.timeout(900)
