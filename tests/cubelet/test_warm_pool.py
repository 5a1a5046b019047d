"""The warm pool's bookkeeping: a clone is handed out only for the template build it was cloned
from, and snapshots are pooled only while in demand. (Filling the pool with real clones is covered
end to end in tests/e2e.)

A template is rebuilt in place when its inputs change (`make up` after an upgrade rebuilds the
default one while the cubelet runs); clones of the old build still in the pool must never become
sandboxes, and they must be killed and their networks released."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

import httpx

from sdk.gen.cube.v1 import cubelet_pb2, vs_pb2
from services.cubelet import warm_pool
from services.cubelet.settings import CubeletSettings
from services.cubelet.templates import Template
from services.cubelet.warm_pool import PoolEntry, Standby, WarmPool
from vmm_core import Machine, PreparedClone


@dataclass
class _Machine:
    vm_id: str
    killed: bool = False
    died: bool = False  # its QEMU ended by itself

    async def kill(self) -> None:
        self.killed = True

    def alive(self) -> bool:
        return not (self.killed or self.died)


@dataclass
class _Vs:
    released: list[str] = field(default_factory=list)

    async def release(self, vs_id: str) -> None:
        self.released.append(vs_id)


@dataclass
class _Template:
    template_id: str
    build_key: str
    info: cubelet_pb2.TemplateInfo = field(default_factory=cubelet_pb2.TemplateInfo)


@dataclass
class _Templates:
    current: dict[str, _Template]

    def get(self, template_id: str) -> _Template | None:
        return self.current.get(template_id)

    def list(self) -> list[_Template]:
        return list(self.current.values())


def _entry(template_id: str, build_key: str, n: int, agent: httpx.AsyncClient | None = None) -> PoolEntry:
    machine = cast(Machine, _Machine(f"pool-{build_key}-{n}"))  # the pool only calls kill() on it
    return PoolEntry(template_id, build_key, f"pool-{build_key}-{n}", machine,
                     vs_pb2.SandboxNetwork(host_address="198.19.0.2", proxy_address="198.18.0.1"), agent)


def _standby(template_id: str, build_key: str) -> Standby:
    machine = cast(Machine, _Machine(f"standby-{build_key}"))  # the pool calls kill() and alive() on it
    return Standby(template_id, build_key, f"standby-{build_key}", PreparedClone(machine, None),  # type: ignore[arg-type]
                   vs_pb2.SandboxNetwork(host_address="198.19.0.6", proxy_address="198.18.0.5"))


def _killed(e: PoolEntry) -> bool:
    assert isinstance(e.machine, _Machine)
    return e.machine.killed


def _pool(templates: _Templates, vs: _Vs) -> WarmPool:
    return WarmPool(CubeletSettings(), None, vs, templates)  # type: ignore[arg-type]


def test_claim_skips_clones_of_a_replaced_build_and_the_fill_loop_removes_them():
    templates = _Templates({"t": _Template("t", "old")})
    vs = _Vs()
    pool = _pool(templates, vs)
    old = [_entry("t", "old", i) for i in range(2)]
    pool._ready["t"].extend(old)

    templates.current["t"] = _Template("t", "new")  # rebuilt while the clones sat in the pool
    new = _entry("t", "new", 0)
    pool._ready["t"].append(new)

    assert pool.claim("t", "new") is new
    assert pool.claim("t", "new") is None
    asyncio.run(pool._discard_stale())
    assert all(_killed(e) for e in old)
    assert sorted(vs.released) == sorted(e.vs_id for e in old)
    assert not _killed(new)


def test_stale_and_deleted_entries_go_even_when_nobody_claims():
    templates = _Templates({"a": _Template("a", "k2"), "b": _Template("b", "k1")})
    vs = _Vs()
    pool = _pool(templates, vs)
    stale = _entry("a", "k1", 0)
    fresh = _entry("a", "k2", 0)
    orphan = _entry("gone", "k1", 0)  # its template was deleted
    pool._ready["a"].extend([stale, fresh])
    pool._ready["gone"].append(orphan)

    asyncio.run(pool._discard_stale())
    assert _killed(stale) and _killed(orphan)
    assert not _killed(fresh)
    assert pool.size("a") == 1 and pool.size("gone") == 0
    assert pool.claim("a", "k2") is fresh


def test_idle_clones_are_health_checked_and_dead_ones_replaced():
    """The idle check runs on the entry's own kept connection; the agent is played by an httpx
    transport (this tests the pool's bookkeeping, not the agent)."""
    asked: list[str] = []

    def agent(status: int) -> httpx.AsyncClient:
        def reply(request: httpx.Request) -> httpx.Response:
            asked.append(f"{status} {request.url.path}")
            return httpx.Response(status)
        return httpx.AsyncClient(transport=httpx.MockTransport(reply))

    templates = _Templates({"t": _Template("t", "k")})
    vs = _Vs()
    pool = _pool(templates, vs)
    healthy, dead, fresh = (_entry("t", "k", 0, agent(204)), _entry("t", "k", 1, agent(500)),
                            _entry("t", "k", 2, agent(204)))
    long_ago = time.monotonic() - 3600
    healthy.checked_at = dead.checked_at = long_ago
    pool._ready["t"].extend([healthy, dead, fresh])

    asyncio.run(pool._check_idle())
    assert sorted(asked) == ["204 /health", "500 /health"]  # the recently checked one was left alone
    assert _killed(dead) and vs.released == [dead.vs_id] and dead.agent is None
    assert not _killed(healthy) and healthy.checked_at > long_ago
    assert pool.size("t") == 2


def test_a_snapshot_is_pooled_from_its_second_create_until_creates_stop(monkeypatch):
    # The pool reads only these fields of a template.
    snap = cast(Template, _Template("snap", "k", cubelet_pb2.TemplateInfo(base_template_id="base")))
    disk_only = cast(Template, _Template("fs", "k", cubelet_pb2.TemplateInfo(base_template_id="base",
                                                                            filesystem_only=True)))
    templates = _Templates({"base": _Template("base", "b"), "snap": cast(_Template, snap),
                            "fs": cast(_Template, disk_only)})
    vs = _Vs()
    pool = _pool(templates, vs)
    assert pool._pooled(cast(Template, templates.current["base"]))  # a built template always is
    pool.request_refill("snap")
    assert not pool._pooled(snap), "one create (a fork of one, say) is no demand"
    pool.request_refill("snap")
    assert pool._pooled(snap)
    for _ in range(2):
        pool.request_refill("fs")
    assert not pool._pooled(disk_only), "filesystem-only snapshots boot: never pooled"

    entry = _entry("snap", "k", 0)
    pool._ready["snap"].append(entry)
    asyncio.run(pool._discard_stale())
    assert not _killed(entry) and pool.size("snap") == 1  # still in demand

    # No create for SNAPSHOT_DEMAND_S: its clones go, and one create later is no demand again.
    now = time.monotonic()
    monkeypatch.setattr(warm_pool.time, "monotonic", lambda: now + warm_pool.SNAPSHOT_DEMAND_S + 1)
    asyncio.run(pool._discard_stale())
    assert _killed(entry) and pool.size("snap") == 0 and vs.released == [entry.vs_id]
    pool.request_refill("snap")
    assert not pool._pooled(snap)


def test_the_pool_deepens_with_recent_creates_and_shrinks_when_they_pass(monkeypatch):
    templates = _Templates({"t": _Template("t", "k")})
    vs = _Vs()
    settings = CubeletSettings().with_overrides(warm_pool_size=2, warm_pool_max=5)
    pool = WarmPool(settings, None, vs, templates)  # type: ignore[arg-type]
    assert pool.target("t") == 2  # no creates: the floor
    for _ in range(4):
        pool.request_refill("t")
    assert pool.target("t") == 4  # as many as were created in the window
    for _ in range(10):
        pool.request_refill("t")
    assert pool.target("t") == 5  # at most warm_pool_max
    assert pool.kept(cast(Template, templates.current["t"])) == 5

    entries = [_entry("t", "k", i) for i in range(5)]
    pool._ready["t"].extend(entries)
    asyncio.run(pool._discard_stale())
    assert pool.size("t") == 5 and not any(_killed(e) for e in entries)  # still in demand

    now = time.monotonic()
    monkeypatch.setattr(warm_pool.time, "monotonic", lambda: now + warm_pool.DEMAND_WINDOW_S + 1)
    assert pool.target("t") == 2
    asyncio.run(pool._discard_stale())
    # The oldest go; the two newest stay for the next create.
    assert [_killed(e) for e in entries] == [True, True, True, False, False]
    assert sorted(vs.released) == sorted(e.vs_id for e in entries[:3])
    assert pool.claim("t", "k") is entries[3]


def test_growing_past_the_floor_waits_for_room_and_idle_cpu(monkeypatch):
    templates = _Templates({"t": _Template("t", "k")})
    room = {"can_take": 10}
    pool = WarmPool(CubeletSettings().with_overrides(warm_pool_grow_idle_pct=50.0), None, _Vs(), templates,  # type: ignore[arg-type]
                    room=lambda: room["can_take"])
    monkeypatch.setattr(warm_pool, "GROW_SAMPLE_S", 0.0)

    def cpu(idle_share: float):
        readings = iter([(0, 0), (int(1000 * idle_share), 1000)])  # (idle, total) ticks, before and after
        monkeypatch.setattr(warm_pool, "host_cpu_times", lambda: next(readings))

    cpu(0.8)
    assert asyncio.run(pool._may_grow(1))
    cpu(0.2)  # the host is busy: the fill would slow what runs
    assert not asyncio.run(pool._may_grow(1))
    cpu(0.9)
    room["can_take"] = 3  # the node could not take the extra clones and more sandboxes besides
    assert not asyncio.run(pool._may_grow(3))
    cpu(0.9)
    assert asyncio.run(pool._may_grow(2))


def test_a_standby_qemu_serves_one_miss_of_its_build_and_stale_or_dead_ones_go():
    """A miss takes the template's standby QEMU only for the build it was started for, and only
    alive; the fill loop kills and releases what no create may take."""
    templates = _Templates({"t": _Template("t", "new"), "u": _Template("u", "k"), "v": _Template("v", "k")})
    vs = _Vs()
    pool = _pool(templates, vs)
    current, old, dead = _standby("t", "new"), _standby("u", "old"), _standby("v", "k")
    pool._standby.update({"t": current, "u": old, "v": dead})
    cast(_Machine, dead.prepared.machine).died = True

    assert pool.standby_ready("t")
    assert pool.claim_standby("t", "other") is None  # a create for another build of it
    assert pool.claim_standby("t", "new") is current
    assert pool.claim_standby("t", "new") is None and not pool.standby_ready("t")  # one miss each
    assert pool.claim_standby("u", "k") is None  # started for the build before the rebuild
    assert pool.claim_standby("v", "k") is None  # its QEMU died while it waited
    assert pool.claim_standby("w", "k") is None  # no such template

    asyncio.run(pool._discard_stale_standbys())
    assert cast(_Machine, old.prepared.machine).killed and cast(_Machine, dead.prepared.machine).killed
    assert sorted(vs.released) == sorted([old.vs_id, dead.vs_id])
    assert not cast(_Machine, current.prepared.machine).killed  # taken: the create owns it now
    assert not pool._standby


def test_stopping_the_pool_kills_its_standby_qemus():
    templates = _Templates({"t": _Template("t", "k")})
    vs = _Vs()
    pool = _pool(templates, vs)
    waiting = _standby("t", "k")
    pool._standby["t"] = waiting
    asyncio.run(pool.stop())
    assert cast(_Machine, waiting.prepared.machine).killed and vs.released == [waiting.vs_id]
