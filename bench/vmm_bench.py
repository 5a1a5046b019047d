"""vmm_core benchmark: cold boot vs copy-on-write clones, and what an idle clone costs.

    .venv/bin/python bench/vmm_bench.py [--cold 3] [--sequential 30] [--concurrent 10] [--alive 20]

Readiness is measured from the moment QEMU is asked to start until a TCP service in the guest
accepts a connection (busybox httpd of a tiny static template), for cold boots and for clones of
that template's snapshot, in the same run. Clones are also measured restoring into a QEMU started
ahead of time (`prepare_clone`, as Firecracker restores into a running VMM process): from
`start()` to the TCP answer, reported apart (`started_vmm_*`). Each machine gets its own network
namespace (every clone has the same guest address). Progress goes to stderr; the last stdout line is one JSON object.

Every machine runs in the VMM jail (vmm_core/jail.py). Its cost is measured in the same run:
clones with the jail and without it, alternating (``jail.clone_ms_*``, their ratio), and idle clones
of each side by side (``jail.pss_*``).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, machine, percentile, progress, summary  # noqa: E402
from services.cubelet.guest_agent import cube_agent  # noqa: E402
from testkit import probe_root  # noqa: E402
from testkit.netlab import TestNet  # noqa: E402
from vmm_core import (  # noqa: E402  # noqa: E402
    GuestConfig,
    GuestService,
    Machine,
    PreparedClone,
    Snapshot,
    VmmSettings,
    accel,
    boot,
    clone,
    ensure_guest_artifacts,
    ext4_from_dir,
    prepare_clone,
    snapshot,
    writable_layer,
)
from vmm_core.accounting import process_cpu_seconds  # noqa: E402

MEMORY_MB = 256
PORT = probe_root.HTTP_PORT
IDLE_CONFIG = GuestConfig(services=(GuestService("http", ("/bin/httpd", "-f", "-p", str(PORT), "-h", "/www")),))


async def cold_boot(settings, guest, image, work: Path, net: TestNet, i: int) -> float:
    rw = writable_layer(work / f"cold-{i}.img", 32, IDLE_CONFIG)
    spec = guest.machine_spec(image, rw, memory_mb=MEMORY_MB, network=net.attachment)
    t0 = time.monotonic()
    m = await boot(settings, f"cold{i}", spec)
    try:
        await net.wait_tcp(PORT, timeout=180)
        return (time.monotonic() - t0) * 1000
    finally:
        await m.kill()
        rw.unlink(missing_ok=True)


# QEMU's CPU time from its start until the guest answered, per clone: what `concurrent` clones
# share the host's cores for (the lower bound of their p99 is about this x concurrent / cores).
CLONE_CPU_MS: list[float] = []


async def clone_ready(settings: VmmSettings, snap: Snapshot, net: TestNet, vm_id: str,
                      sync: bool) -> tuple[float, Machine]:
    t0 = time.monotonic()
    m = await clone(settings, snap, vm_id, net.attachment, sync=sync)
    await net.wait_tcp(PORT, timeout=60)
    ms = (time.monotonic() - t0) * 1000
    CLONE_CPU_MS.append(process_cpu_seconds(m.pid) * 1000)
    return ms, m


async def started_vmm_ready(prepared: PreparedClone, net: TestNet) -> tuple[float, Machine]:
    t0 = time.monotonic()
    m = await prepared.start(sync=False)
    await net.wait_tcp(PORT, timeout=60)
    return (time.monotonic() - t0) * 1000, m


async def main(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cube-vmm-bench-"))
    settings = VmmSettings.from_env().with_overrides(runtime_dir=work / "vms")
    nets = [TestNet.create() for _ in range(max(args.concurrent, args.alive) + 1)]
    try:
        progress("building guest artifacts (cached)")
        guest = ensure_guest_artifacts(settings, cube_agent())
        image = ext4_from_dir(probe_root.build(work / "root"), work / "probe.ext4")

        progress(f"cold boots x{args.cold}")
        cold = [await cold_boot(settings, guest, image, work, nets[0], i) for i in range(args.cold)]
        progress(f"  cold boot p50 {percentile(cold, 50):.0f} ms")

        progress("template snapshot")
        rw = writable_layer(work / "tpl.img", 32, IDLE_CONFIG)
        m = await boot(settings, "tpl", guest.machine_spec(image, rw, memory_mb=MEMORY_MB, network=nets[0].attachment,
                                                           memory_file=work / "tpl-mem"))
        await m.wait_guest(180)
        await nets[0].wait_tcp(PORT, timeout=180)
        snap = await snapshot(m, work / "snap")

        progress(f"sequential clones x{args.sequential}")
        seq: list[float] = []
        seq_synced: list[float] = []
        for i in range(args.sequential):
            ms, c = await clone_ready(settings, snap, nets[0], f"seq{i}", sync=False)
            seq.append(ms)
            await c.kill()
        for i in range(max(5, args.sequential // 3)):
            ms, c = await clone_ready(settings, snap, nets[0], f"syn{i}", sync=True)
            seq_synced.append(ms)
            await c.kill()
        progress(f"  clone p50 {percentile(seq, 50):.0f} ms, with identity sync {percentile(seq_synced, 50):.0f} ms")

        progress(f"jail cost: {args.jail_pairs} clones with the jail and without, alternating")
        bare = settings.with_overrides(jail=False)
        jailed_ms: list[float] = []
        bare_ms: list[float] = []
        for i in range(args.jail_pairs):
            order = [(settings, jailed_ms, "jj"), (bare, bare_ms, "jb")]
            for s, out, tag in order if i % 2 == 0 else order[::-1]:
                ms, c = await clone_ready(s, snap, nets[0], f"{tag}{i}", sync=False)
                out.append(ms)
                await c.kill()
        n_idle = min(args.jail_idle, len(nets) // 2)
        idle = await asyncio.gather(*(clone(settings if i % 2 == 0 else bare, snap, f"ji{i}", nets[i].attachment)
                                      for i in range(2 * n_idle)))
        await asyncio.gather(*(nets[i].wait_tcp(PORT) for i in range(2 * n_idle)))
        await asyncio.sleep(args.settle)
        idle_stats = [c.stats() for c in idle]
        await asyncio.gather(*(c.kill() for c in idle))
        jail = {
            "clone_ms_jailed": summary(jailed_ms),
            "clone_ms_unjailed": summary(bare_ms),
            "clone_p50_ratio_jailed_to_unjailed": round(percentile(jailed_ms, 50) / percentile(bare_ms, 50), 3),
            "pss_mb_jailed": round(sum(s.pss_bytes for s in idle_stats[0::2]) / n_idle / 2**20, 1),
            "pss_mb_unjailed": round(sum(s.pss_bytes for s in idle_stats[1::2]) / n_idle / 2**20, 1),
            "idle_each": n_idle,
        }
        progress(f"  jailed p50 {percentile(jailed_ms, 50):.0f} ms, unjailed {percentile(bare_ms, 50):.0f} ms")

        progress(f"concurrent clones x{args.concurrent}")
        results = await asyncio.gather(*(clone_ready(settings, snap, nets[i], f"con{i}", sync=False)
                                         for i in range(args.concurrent)))
        conc = [ms for ms, _ in results]
        await asyncio.gather(*(c.kill() for _, c in results))

        progress(f"clones into a QEMU started ahead: {args.sequential} sequential, {args.concurrent} concurrent")
        pre_seq: list[float] = []
        for i in range(args.sequential):
            one = await prepare_clone(settings, snap, f"pre{i}", nets[0].attachment)
            await asyncio.sleep(0.05)  # a standby VMM is idle until it is needed
            ms, c = await started_vmm_ready(one, nets[0])
            pre_seq.append(ms)
            await c.kill()
        prepared = [await prepare_clone(settings, snap, f"prc{i}", nets[i].attachment)
                    for i in range(args.concurrent)]
        await asyncio.sleep(0.5)
        results = await asyncio.gather(*(started_vmm_ready(p, nets[i]) for i, p in enumerate(prepared)))
        pre_conc = [ms for ms, _ in results]
        await asyncio.gather(*(c.kill() for _, c in results))
        progress(f"  started-VMM clone p50 {percentile(pre_seq, 50):.0f} ms sequential, "
                 f"p99 {percentile(pre_conc, 99):.0f} ms concurrent")

        progress(f"{args.alive} idle clones alive")
        alive = await asyncio.gather(*(clone(settings, snap, f"idle{i}", nets[i].attachment)
                                       for i in range(args.alive)))
        await asyncio.gather(*(nets[i].wait_tcp(PORT) for i in range(args.alive)))
        await asyncio.sleep(args.settle)
        stats = [c.stats() for c in alive]
        await asyncio.gather(*(c.kill() for c in alive))
        pss = sum(s.pss_bytes for s in stats) / len(stats) / 2**20
        dirty = sum(s.private_dirty_bytes for s in stats) / len(stats) / 2**20
        rss = sum(s.rss_bytes for s in stats) / len(stats) / 2**20

        all_clones = seq + conc
        cpu_ms = percentile(CLONE_CPU_MS, 50)
        return {
            "accel": accel.resolve(settings.accel).value,
            "guest_memory_mb": MEMORY_MB,
            "cold_boot_ms": round(percentile(cold, 50), 1),
            "cold_boot": summary(cold),
            "clone_ready_ms_p50": round(percentile(all_clones, 50), 1),
            "clone_ready_ms_p99": round(percentile(all_clones, 99), 1),
            "clone_sequential": summary(seq),
            "clone_concurrent": summary(conc),
            "clone_with_identity_sync": summary(seq_synced),
            "started_vmm_clone_ready_ms_p50": round(percentile(pre_seq + pre_conc, 50), 1),
            "started_vmm_clone_ready_ms_p99": round(percentile(pre_seq + pre_conc, 99), 1),
            "started_vmm_clone_sequential": summary(pre_seq),
            "started_vmm_clone_concurrent": summary(pre_conc),
            "clone_vs_cold_ratio": round(percentile(cold, 50) / percentile(all_clones, 50), 1),
            "qemu_cpu_ms_per_clone_p50": round(cpu_ms, 1),
            # The concurrent clones need this long on all of the host's cores before the last can answer.
            "concurrent_cpu_floor_ms": round(cpu_ms * args.concurrent / (os.cpu_count() or 1), 1),
            "pss_per_idle_clone_mb": round(pss, 1),
            "private_dirty_per_idle_clone_mb": round(dirty, 1),
            "rss_per_idle_clone_mb": round(rss, 1),
            "idle_clones": args.alive,
            "jail": jail,
            "machine": machine(),
        }
    finally:
        for n in nets:
            n.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cold", type=int, default=3)
    p.add_argument("--sequential", type=int, default=30)
    p.add_argument("--concurrent", type=int, default=10)
    p.add_argument("--alive", type=int, default=20)
    p.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring memory")
    p.add_argument("--jail-pairs", type=int, default=20, help="clones with and without the jail, each")
    p.add_argument("--jail-idle", type=int, default=5, help="idle clones with and without the jail, each")
    emit(asyncio.run(main(p.parse_args())))
