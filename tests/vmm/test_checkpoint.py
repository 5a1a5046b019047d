"""checkpoint(): a template snapshot of a running clone that goes on running. Clones of it start
where the source was (same processes, memory and disk), each on its own copy-on-write; the source
never sees what they do, nor they what it does after. Real QEMU microVMs (TCG here)."""
from __future__ import annotations

import asyncio

import pytest

from tests.vmm.conftest import MEMORY_MB, counter
from vmm_core import InvalidSpecError, Snapshot, checkpoint, clone, sealed_memory

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_clones_of_a_checkpoint_start_where_the_source_was(settings, template_snapshot, net, workdir):
    src_net, a_net, b_net = net(), net(), net()
    src = await clone(settings, template_snapshot, "ckpt-src", src_net.attachment)
    machines = [src]
    try:
        await src_net.wait_http("/cgi-bin/counter")
        assert src_net.http_get("/cgi-bin/put?mine=before") == "ok"
        pid, count = counter(src_net)
        snap = await checkpoint(src, workdir / "checkpoints" / "one")
        assert snap.memory.stat().st_size == MEMORY_MB << 20
        assert snap.disk.name == "disk.qcow2" and not (workdir / "checkpoints" / ".one.checkpoint").exists()

        # The source runs on: the same counting process, and it can write again.
        await asyncio.sleep(0.5)
        spid, scount = counter(src_net)
        assert spid == pid and scount > count
        assert src_net.http_get("/cgi-bin/put?later=source") == "ok"

        a = await clone(settings, snap, "ckpt-a", a_net.attachment)
        machines.append(a)
        await a_net.wait_http("/cgi-bin/counter")
        apid, acount = counter(a_net)
        assert apid == pid and acount >= count  # the process from the source, not a fresh boot
        assert a_net.http_get("/cgi-bin/get?mine") == "before"
        assert a_net.http_get("/cgi-bin/get?origin") == "template"
        assert a_net.http_get("/cgi-bin/get?later") == "MISSING"  # written by the source after
        assert a_net.http_get("/cgi-bin/put?fork=a") == "ok"

        b = await clone(settings, snap, "ckpt-b", b_net.attachment)
        machines.append(b)
        await b_net.wait_http("/cgi-bin/counter")
        assert b_net.http_get("/cgi-bin/get?fork") == "MISSING"  # a's write is a's alone
        assert src_net.http_get("/cgi-bin/get?fork") == "MISSING"
        # Each clone drew fresh entropy, as clones of a built template do.
        assert a_net.http_get("/cgi-bin/random") != b_net.http_get("/cgi-bin/random")

        # A checkpoint of a clone of a checkpoint: the chain of overlays reads through.
        snap2 = await checkpoint(a, workdir / "checkpoints" / "two")
        c_net = net()
        c = await clone(settings, snap2, "ckpt-c", c_net.attachment)
        machines.append(c)
        await c_net.wait_http("/cgi-bin/counter")
        assert c_net.http_get("/cgi-bin/get?fork") == "a" and c_net.http_get("/cgi-bin/get?mine") == "before"
    finally:
        for m in machines:
            await m.kill()


async def test_a_refused_checkpoint_leaves_nothing_and_the_source_runs(settings, template_snapshot, net, workdir):
    n = net()
    m = await clone(settings, template_snapshot, "ckpt-refused", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        taken = workdir / "checkpoints" / "taken"
        taken.mkdir(parents=True)
        with pytest.raises(InvalidSpecError):
            await checkpoint(m, taken)
        assert list(taken.iterdir()) == [] and not (taken.parent / ".taken.checkpoint").exists()
        assert await m.run_state() == "running"
        pid, _ = counter(n)
        assert pid > 0
    finally:
        await m.kill()


async def test_a_checkpoint_s_memory_file_may_be_written_after_it_serves_clones(settings, template_snapshot, net,
                                                                               workdir):
    """write_memory_later: the snapshot answers before its memory file exists; clones map the
    sealed memfd meanwhile, and the file, once renamed into place, is whole (a later clone from
    the file alone, after the memfd is forgotten, starts where the source was)."""
    assert settings.jail, "clones map the sealed memfd only when jailed"
    src_net, a_net, b_net = net(), net(), net()
    src = await clone(settings, template_snapshot, "ckpt-later-src", src_net.attachment)
    machines = [src]
    try:
        await src_net.wait_http("/cgi-bin/counter")
        assert src_net.http_get("/cgi-bin/memo?note=kept") == "ok"
        snap = await checkpoint(src, workdir / "checkpoints" / "later", write_memory_later=True)
        a = await clone(settings, snap, "ckpt-later-a", a_net.attachment)  # written or not: it runs
        machines.append(a)
        await a_net.wait_http("/cgi-bin/counter")
        assert a_net.http_get("/cgi-bin/recall?note") == "kept"

        for _ in range(600):
            if not sealed_memory.pending(snap.memory):
                break
            await asyncio.sleep(0.1)
        assert not sealed_memory.pending(snap.memory)
        assert snap.memory.stat().st_size == MEMORY_MB << 20 and (snap.memory.stat().st_mode & 0o777) == 0o444
        assert not (snap.dir / ".memory.writing").exists()
        sealed_memory.forget(snap.memory)  # as a restarted cubelet: only the file is left
        b = await clone(settings, Snapshot.load(snap.dir), "ckpt-later-b", b_net.attachment)
        machines.append(b)
        await b_net.wait_http("/cgi-bin/counter")
        assert b_net.http_get("/cgi-bin/recall?note") == "kept"
    finally:
        for m in machines:
            await m.kill()
