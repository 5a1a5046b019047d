"""Why a machine ended (vmm_core/exits.py): real jailed clones under TCG killed from outside, and
the cgroup's out-of-memory counter on both hierarchies' file layouts (the kernel's own OOM kill of
a QEMU is in tests/e2e/test_e2e_limits.py, where a guest can be made to allocate)."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from vmm_core import ExitCause, clone
from vmm_core.cgroups import Hierarchy, MachineCgroup
from vmm_core.exits import explain, record_status
from vmm_core.spec import MachinePaths


async def ended(m, timeout: float = 10.0) -> None:
    """Until its QEMU is gone and reaped (the reaper runs in this event loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while m.alive() or not (m.paths.dir / "exit.status").exists():
        assert asyncio.get_running_loop().time() < deadline, "QEMU did not end"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("sig", "cause", "words"), [
    (signal.SIGKILL, ExitCause.SIGNAL, "killed by SIGKILL"),
    (signal.SIGSYS, ExitCause.SECCOMP, "seccomp"),
])
async def test_a_clone_killed_from_outside_says_how(settings, template_snapshot, net, sig, cause, words):
    vm_id = f"ended-{sig.name.lower()}"
    m = await clone(settings, template_snapshot, vm_id, net().attachment)
    try:
        assert m.alive()
        os.kill(m.pid, sig)
        await ended(m)
        why = m.exit_cause()
        assert why.cause is cause and words in why.message, why
    finally:
        await m.kill()
    # The evidence went with it: runtime dir and cgroup.
    assert not m.paths.dir.exists()
    cg = MachineCgroup.for_machine(vm_id, settings.cgroup_parent)
    assert cg is not None and not any(d.exists() for d in cg.dirs.values())


def _fake_cgroup(tmp_path, hierarchy: Hierarchy, oom_kills: int) -> MachineCgroup:
    if hierarchy is Hierarchy.V1:
        d = tmp_path / "memory" / "vm"
        d.mkdir(parents=True)
        (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n")
        (d / "memory.limit_in_bytes").write_text(str(1280 << 20))
        return MachineCgroup(hierarchy, {"memory": d})
    d = tmp_path / "vm"
    d.mkdir(parents=True)
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 12\noom 1\noom_kill {oom_kills}\noom_group_kill 0\n")
    (d / "memory.max").write_text(str(1280 << 20))
    return MachineCgroup(hierarchy, {"": d})


@pytest.mark.parametrize("hierarchy", [Hierarchy.V1, Hierarchy.V2])
def test_the_cgroup_tells_an_out_of_memory_kill(tmp_path, hierarchy):
    paths = MachinePaths(tmp_path / "run")
    paths.dir.mkdir()
    record_status(paths, signal.SIGKILL)  # what waitpid reports for a process killed by SIGKILL
    why = explain(paths, _fake_cgroup(tmp_path / "a", hierarchy, 1), "")
    assert why.cause is ExitCause.OUT_OF_MEMORY and "memory limit of 1280 MiB" in why.message
    # The same SIGKILL with no OOM kill counted came from outside.
    why = explain(paths, _fake_cgroup(tmp_path / "b", hierarchy, 0), "")
    assert why.cause is ExitCause.SIGNAL and "SIGKILL" in why.message


def test_without_a_wait_status_the_log_is_what_is_left(tmp_path):
    paths = MachinePaths(tmp_path / "run")
    paths.dir.mkdir()
    why = explain(paths, None, "qemu-system-x86_64: terminating on signal 15 from pid 1\n")
    assert why.cause is ExitCause.EXITED and "terminating on signal 15" in why.message
    assert explain(paths, None, "").cause is ExitCause.UNKNOWN
    # An exit code, and QEMU's words cut to one short line whatever its log holds.
    record_status(paths, 1 << 8)
    why = explain(paths, None, "x" * 100_000 + "\n" * 1000)
    assert why.cause is ExitCause.EXITED and "status 1" in why.message and len(why.message) < 400
    # A symlink planted where the status goes is not followed.
    (paths.dir / "exit.status").unlink()
    (paths.dir / "exit.status").symlink_to(tmp_path / "elsewhere")
    record_status(paths, 0)
    assert not (tmp_path / "elsewhere").exists()
