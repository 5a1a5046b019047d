"""Warm pool: clones restored, warmed and idle ahead of demand, per template.

Under TCG a fresh clone pays for QEMU's start and for translating the guest's code paths on its
first requests (hundreds of ms); a pooled clone has paid both. It has no identity yet: a claim
hands it the sandbox's network policy, clock, entropy (forcing a reseed) and agent token, exactly
as a fresh clone gets them, so nothing distinguishes the two once created. Until claimed a pooled
clone has no internet access and runs no user code.

Built templates are pooled always. A snapshot of a sandbox (memory and all) is pooled only while
it is in demand: from a second create from it within SNAPSHOT_DEMAND_S of the one before, until
SNAPSHOT_DEMAND_S without one, after which its entries are discarded. A team may keep many
snapshots; only those being created from hold idle VMs, and a stream of creates from one (an RL
rollout's) meets clones restored ahead. One create is no demand: a fork of one, or a sandbox
created from a snapshot once, would only leave idle VMs behind. Filesystem-only snapshots are
never pooled (their sandboxes boot; a pooled boot would run the template's services for nobody).

How deep: a pooled template keeps ``warm_pool_size`` clones, and while creates from it come fast, as
many as were created from it in the last DEMAND_WINDOW_S, up to ``warm_pool_max``, so the next burst
finds more ready. Growing past ``warm_pool_size`` must not slow what runs: a fill beyond it starts
only while the host's CPU was at least ``warm_pool_grow_idle_pct`` idle over the GROW_SAMPLE_S just
before, and the node could still take more sandboxes than the extra clones (capacity.py); once the
template's creates are a window old the extra clones go (the oldest first).

Standby: beside its clones, a pooled template keeps one QEMU started ahead and waiting for the
template's state (vmm_core.prepare_clone), on a network of its own with no internet access and
no guest running in it. A create that finds the pool empty restores into it instead of starting a
QEMU first (the start is about half of a fresh clone's restore under TCG), then goes on as a fresh
clone does (identity, no warm-up). It costs the node a waiting QEMU process (~18 MB of its own
memory, no CPU). Standbys have a loop of their own, so one taken is replaced at once (a QEMU start
costs ~50 ms of a core) even while the clones' loop spends a second or more on a fill.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from cube_common.envd import ENVD_PORT, INTERPRETER_PORT
from sdk.gen.cube.v1 import network_pb2, vs_pb2
from vmm_core import Machine, PreparedClone, VmmError, VmmSettings, clone, prepare_clone
from vmm_core.accounting import host_cpu_times

from .guest_client import GuestAgentError, GuestEndpoint, init_identity, wait_healthy, warm_interpreter
from .settings import CubeletSettings
from .steps import Steps
from .templates import Template, TemplateStore
from .vs_client import VsClient, vm_attachment

log = logging.getLogger("cubelet.warm_pool")


# How long a pooled clone may sit without a health check. Under the agent's keep-alive timeout
# (aiohttp's 75 s), so the connection a claim will use stays open.
CHECK_IDLE_S = 30.0
# How long after the last create from a snapshot its pooled clones are kept.
SNAPSHOT_DEMAND_S = 120.0
# The creates that size a template's pool past warm_pool_size are those of this last window.
DEMAND_WINDOW_S = 30.0
# How long the host's idle CPU is sampled before a fill past warm_pool_size.
GROW_SAMPLE_S = 0.5


@dataclass(eq=False)  # entries are compared by identity
class PoolEntry:
    template_id: str
    build_key: str  # the template build it was cloned from: a rebuilt template's entries are stale
    vs_id: str
    machine: Machine
    network: vs_pb2.SandboxNetwork
    # A keep-alive connection to the agent, opened while warming: the claim's /init goes over it.
    # Whoever takes the entry closes it.
    agent: httpx.AsyncClient | None = None
    checked_at: float = field(default_factory=time.monotonic)

    @property
    def endpoint(self) -> GuestEndpoint:
        return GuestEndpoint(self.network.host_address, self.network.proxy_address)

    async def close_agent(self) -> None:
        if self.agent is not None:
            await self.agent.aclose()
            self.agent = None


@dataclass(eq=False)
class Standby:
    """A QEMU started for a template's clone and waiting for its state (see the module docstring).
    Whoever takes it either starts it or discards it, and releases its network if not kept."""
    template_id: str
    build_key: str
    vs_id: str
    prepared: PreparedClone
    network: vs_pb2.SandboxNetwork


async def _nap(wake: asyncio.Event) -> None:
    """Until ``wake`` is set, or 5 s: each loop's next round."""
    try:
        await asyncio.wait_for(wake.wait(), timeout=5.0)
    except TimeoutError:
        pass


class WarmPool:
    def __init__(self, settings: CubeletSettings, vmm: VmmSettings, vs: VsClient, templates: TemplateStore,
                 room: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.vmm = vmm
        self.vs = vs
        self.templates = templates
        # How many more sandboxes the node can take now (SandboxManager.headroom); None: no limit.
        self.room = room
        # Template id -> when each create from it in the last DEMAND_WINDOW_S came.
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._ready: dict[str, collections.deque[PoolEntry]] = collections.defaultdict(collections.deque)
        self._stale: list[PoolEntry] = []
        self._standby: dict[str, Standby] = {}
        self._standby_wake = asyncio.Event()
        self._standby_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Template id -> when a sandbox was last created from it (time.monotonic()), and the
        # snapshots among them created from twice within SNAPSHOT_DEMAND_S (in demand).
        self._created: dict[str, float] = {}
        self._demand: set[str] = set()

    def claim(self, template_id: str, build_key: str) -> PoolEntry | None:
        """A ready clone of this build of the template, if one is pooled. Clones of an earlier
        build (the template was rebuilt since) are never handed out; the fill loop removes them."""
        q = self._ready.get(template_id)
        while q:
            entry = q.popleft()
            if entry.build_key == build_key:
                return entry
            self._stale.append(entry)
            self._wake.set()
        return None

    def claim_standby(self, template_id: str, build_key: str) -> Standby | None:
        """The template's standby QEMU for this build, if one is waiting (and still alive)."""
        standby = self._standby.get(template_id)
        if standby is None or standby.build_key != build_key or not standby.prepared.machine.alive():
            return None  # a stale or dead one is the standby loop's to discard
        del self._standby[template_id]
        self._standby_wake.set()
        return standby

    def standby_ready(self, template_id: str) -> bool:
        return template_id in self._standby

    def size(self, template_id: str) -> int:
        return len(self._ready.get(template_id, ()))

    def target(self, template_id: str) -> int:
        """How many clones of this template the pool keeps now (see the module docstring)."""
        recent = self._recent.get(template_id)
        if recent:
            horizon = time.monotonic() - DEMAND_WINDOW_S
            while recent and recent[0] < horizon:
                recent.popleft()
        demand = min(len(recent or ()), self.settings.warm_pool_max)
        return max(self.settings.warm_pool_size, demand)

    def kept(self, tpl: Template) -> int:
        """How many clones of ``tpl`` the pool keeps now: its target, or none when not pooled."""
        return self.target(tpl.template_id) if self._pooled(tpl) else 0

    async def _may_grow(self, extra: int) -> bool:
        """Whether a fill that takes a template's pool to ``extra`` clones past warm_pool_size may
        start now: the node has room beyond them, and the host's CPU is idle enough."""
        if self.room is not None and self.room() <= extra:
            return False
        idle0, total0 = host_cpu_times()
        await asyncio.sleep(GROW_SAMPLE_S)
        idle1, total1 = host_cpu_times()
        return 100.0 * (idle1 - idle0) / max(1, total1 - total0) >= self.settings.warm_pool_grow_idle_pct

    def request_refill(self, template_id: str | None = None) -> None:
        """A sandbox was just created from ``template_id`` (or the pool may have room): fill."""
        if template_id is not None:
            now = time.monotonic()
            if now - self._created.get(template_id, -SNAPSHOT_DEMAND_S) < SNAPSHOT_DEMAND_S:
                self._demand.add(template_id)
            self._created[template_id] = now
            self._recent[template_id].append(now)
            self.target(template_id)  # drops what has left the window, pooled template or not
        self._wake.set()

    def _pooled(self, tpl: Template) -> bool:
        """Whether ``tpl`` is pooled now (see the module docstring)."""
        if not tpl.info.base_template_id:
            return True
        if tpl.info.filesystem_only:
            return False
        return tpl.template_id in self._demand

    async def start(self) -> None:
        if self.settings.warm_pool_size > 0:
            self._task = asyncio.create_task(self._run())
            self._standby_task = asyncio.create_task(self._run_standby())

    async def stop(self) -> None:
        for task in (self._task, self._standby_task):
            if task:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        for q in self._ready.values():
            while q:
                await self._discard(q.popleft())
        while self._standby:
            await self._discard_standby(self._standby.popitem()[1])
        await self._discard_stale()

    async def _discard_stale(self) -> None:
        """Entries of deleted templates, of template builds that have been replaced, and of
        snapshots no longer in demand."""
        now = time.monotonic()
        for tid in [t for t, at in self._created.items() if now - at >= SNAPSHOT_DEMAND_S]:
            del self._created[tid]
            self._demand.discard(tid)
        for tid, q in self._ready.items():
            tpl = self.templates.get(tid)
            current = tpl.build_key if tpl is not None and self._pooled(tpl) else None
            for entry in list(q):
                if entry.build_key != current:
                    q.remove(entry)
                    self._stale.append(entry)
            while len(q) > self.target(tid):  # grown for demand that has passed
                self._stale.append(q.popleft())
        while self._stale:
            await self._discard(self._stale.pop())

    async def _check_idle(self) -> None:
        """GET /health on pooled clones idle for CHECK_IDLE_S: a clone that died in the pool is
        dropped before a create gets it, and the kept connection stays open."""
        now = time.monotonic()
        for tid, q in self._ready.items():
            for entry in [e for e in q if now - e.checked_at > CHECK_IDLE_S]:
                agent = entry.agent
                ok = agent is not None
                if agent is not None:
                    try:
                        r = await agent.get(entry.endpoint.url(ENVD_PORT, "/health"), timeout=10.0)
                        ok = r.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                if entry not in q:  # claimed while we waited
                    continue
                if ok:
                    entry.checked_at = time.monotonic()
                else:
                    log.warning("pooled clone failed its health check; replacing it",
                                extra={"template_id": tid, "vm_id": entry.machine.vm_id})
                    q.remove(entry)
                    await self._discard(entry)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self._discard_stale()
            await self._check_idle()
            for tpl in (t for t in self.templates.list() if self._pooled(t)):
                while (have := self.size(tpl.template_id)) < self.target(tpl.template_id):
                    extra = have + 1 - self.settings.warm_pool_size
                    if extra > 0 and not await self._may_grow(extra):
                        break  # tried again at the next round (a create, or 5 s)
                    try:
                        entry = await self._make(tpl.template_id)
                    except (VmmError, GuestAgentError, OSError, Exception) as e:  # retried on the next round
                        log.warning("warm pool fill failed", extra={"template_id": tpl.template_id, "error": str(e)})
                        break
                    if not self._current(tpl.template_id, entry.build_key):
                        await self._discard(entry)
                        break
                    self._ready[tpl.template_id].append(entry)
            await _nap(self._wake)

    async def _make(self, template_id: str) -> PoolEntry:
        tpl = self.templates.get(template_id)
        if tpl is None:
            raise GuestAgentError(f"template {template_id} vanished")
        vs_id = f"pool-{secrets.token_hex(8)}"
        steps = Steps()
        policy = network_pb2.NetworkPolicy(allow_internet_access=False, expose_all_ports=True)
        net = await self.vs.allocate(vs_id, policy)
        steps.done("network")
        machine = None
        agent: httpx.AsyncClient | None = None
        try:
            machine = await clone(self.vmm, tpl.load_snapshot(), vs_id, vm_attachment(net),
                                  # Clock and entropy at once (see sandboxes.py: an unsynced
                                  # restored guest spins).
                                  labels={"role": "pool", "template_id": template_id}, sync=True,
                                  share_memory=not tpl.info.no_memory_sharing)
            steps.done("clone")
            # clone(sync=True) already had the guest answer on the control channel; a claim uses
            # only the agent, whose paths are exercised below so their translation is done then.
            ep = GuestEndpoint(net.host_address, net.proxy_address)
            await wait_healthy(ep, tpl.ready_ports, timeout=120)
            steps.done("healthy")
            # An /init with no token (the agent then has none, so the real one later is accepted;
            # a snapshot's agent holds its source's, which it asks for first): the exact path a
            # claim takes, now translated, on the connection the claim will use.
            agent = ep.client(30.0)
            await init_identity(ep, sandbox_id="", access_token="", env_vars={}, client=agent,
                                current_token=tpl.guest_token)
            steps.done("init")
            if INTERPRETER_PORT in tpl.ready_ports:
                # And a first cell's: without this a sandbox's first run_code pays ~1 s of translation.
                await warm_interpreter(ep, timeout=120)
                steps.done("warmup")
            # Operators size the pool from these: a fill slower than the gap between creates
            # empties it.
            log.info("warm pool entry ready",
                     extra={"template_id": template_id, "vm_id": vs_id, "steps_ms": steps.ms()})
            return PoolEntry(template_id, tpl.build_key, vs_id, machine, net, agent)
        except BaseException:
            if agent is not None:
                await agent.aclose()
            if machine is not None:
                await machine.kill()
            await self.vs.release(vs_id)
            raise

    async def _discard_stale_standbys(self) -> None:
        """Standbys of templates deleted, rebuilt or no longer pooled, and those whose QEMU died."""
        for tid, standby in list(self._standby.items()):
            tpl = self.templates.get(tid)
            if (tpl is None or not self._pooled(tpl) or standby.build_key != tpl.build_key
                    or not standby.prepared.machine.alive()):
                del self._standby[tid]
                await self._discard_standby(standby)

    async def _run_standby(self) -> None:
        """Keeps one standby per pooled template (see the module docstring)."""
        while True:
            self._standby_wake.clear()
            await self._discard_stale_standbys()
            for tpl in (t for t in self.templates.list() if self._pooled(t)):
                if tpl.template_id in self._standby:
                    continue
                try:
                    standby = await self._make_standby(tpl)
                except (VmmError, OSError, Exception) as e:  # retried on the next round
                    log.warning("warm pool standby failed", extra={"template_id": tpl.template_id, "error": str(e)})
                    continue
                if not self._current(tpl.template_id, standby.build_key):
                    await self._discard_standby(standby)
                    continue
                self._standby[tpl.template_id] = standby
            await _nap(self._standby_wake)

    def _current(self, template_id: str, build_key: str) -> bool:
        """Whether this build of the template is still the one pooled (not deleted or rebuilt meanwhile)."""
        current = self.templates.get(template_id)
        return current is not None and current.build_key == build_key

    async def _make_standby(self, tpl: Template) -> Standby:
        vs_id = f"standby-{secrets.token_hex(8)}"
        policy = network_pb2.NetworkPolicy(allow_internet_access=False, expose_all_ports=True)
        net = await self.vs.allocate(vs_id, policy)
        try:
            prepared = await prepare_clone(self.vmm, tpl.load_snapshot(), vs_id, vm_attachment(net),
                                           labels={"role": "standby", "template_id": tpl.template_id},
                                           share_memory=not tpl.info.no_memory_sharing)
        except BaseException:
            await self.vs.release(vs_id)
            raise
        return Standby(tpl.template_id, tpl.build_key, vs_id, prepared, net)

    async def _discard_standby(self, standby: Standby) -> None:
        await standby.prepared.discard()
        await self.vs.release(standby.vs_id)

    async def _discard(self, entry: PoolEntry) -> None:
        await entry.close_agent()
        await entry.machine.kill()
        await self.vs.release(entry.vs_id)
