"""Fixtures for vmm_core tests: real QEMU microVMs (TCG here), real guest images.

Artifacts (kernel, initramfs, base image) come from the shared cache under the state dir; machines
run from a per-session runtime dir so the leak check sees only this session's machines.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

from services.cubelet.guest_agent import cube_agent
from testkit import probe_root
from testkit.netlab import TestNet
from vmm_core import GuestConfig, GuestService, Snapshot, VmmSettings, boot, ensure_guest_artifacts, snapshot
from vmm_core.disks import ext4_from_dir, writable_layer

MEMORY_MB = 256


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="cube-vmm-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(workdir) -> VmmSettings:
    # The node's artifact cache, but machines of this session only, so the leak check sees only them.
    return VmmSettings.from_env().with_overrides(runtime_dir=workdir / "vms")


@pytest.fixture(scope="session")
def guest(settings):
    return ensure_guest_artifacts(settings, cube_agent())


@pytest.fixture(scope="session")
def probe_image(workdir) -> Path:
    return ext4_from_dir(probe_root.build(workdir / "probe-root"), workdir / "probe.ext4")


def counter(n) -> tuple[int, int]:
    """The probe guest's in-memory counter process: (pid, count)."""
    pid, count = n.http_get("/cgi-bin/counter").split()
    return int(pid), int(count)


def probe_config(counter: bool = True) -> GuestConfig:
    services = [GuestService("http", ("/bin/httpd", "-f", "-p", str(probe_root.HTTP_PORT), "-h", "/www"))]
    if counter:
        services.append(GuestService("counter", ("/bin/sh", "-c", probe_root.COUNTER)))
    return GuestConfig(services=tuple(services))


@pytest.fixture
def net():
    created: list[TestNet] = []

    def make() -> TestNet:
        n = TestNet.create()
        created.append(n)
        return n

    yield make
    for n in created:
        n.destroy()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_snapshot(settings, guest, probe_image, workdir) -> Snapshot:
    """Boot the probe template once, write a file, and take a template snapshot of it."""
    n = TestNet.create()
    try:
        rw = writable_layer(workdir / "tpl-rw.img", 64, probe_config())
        spec = guest.machine_spec(probe_image, rw, memory_mb=MEMORY_MB, network=n.attachment,
                                  memory_file=workdir / "tpl-mem")
        m = await boot(settings, "template-build", spec)
        try:
            await m.wait_guest(120)
            await n.wait_http("/cgi-bin/counter")
            assert n.http_get("/cgi-bin/put?origin=template") == "ok"
        except BaseException:
            await m.kill()
            raise
        return await snapshot(m, workdir / "snapshots" / "probe")
    finally:
        n.destroy()


def qemu_pids_under(path: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(autouse=True)
def no_leaks(settings):
    """After every test: no machine runtime dir, QEMU process or jail uid of this session is left."""
    yield
    vms = settings.vms_dir
    leftovers = [p.name for p in vms.iterdir()] if vms.is_dir() else []
    pids = qemu_pids_under(vms)
    claims = settings.jail_claims_dir
    uids = [c.name for c in claims.iterdir() if c.is_file() and c.read_text().startswith(str(vms))] \
        if claims.is_dir() else []
    assert not leftovers, f"machine dirs left behind: {leftovers}"
    assert not pids, f"QEMU processes left behind: {pids}"
    assert not uids, f"jail uids still claimed: {uids}"
