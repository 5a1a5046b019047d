"""Sandboxes on this node: run, kill, pause/resume, metrics, logs, and re-adoption after a restart.

`SandboxManager` is the one owner of sandbox state on the node. Every sandbox has a record file
(`<sandboxes_dir>/<id>.json`) written before anything is started and removed last, so that a
cubelet killed at any point can tell, on restart, what it was doing: a record whose VM still runs
is re-adopted, one whose VM is gone is cleaned up, and a VM or network without a record is removed.

A sandbox paused on another node arrives here when a resume names that node
(``ResumeSandboxRequest.source``): its saved state is pulled into the paused dir first
(paused_pull.py), then its record is written as a pause here would have left it (PAUSED, with the
id of the save it came from), and the resume goes on as for any paused sandbox. The record is the
commit point: a saved dir no record names is removed at start-up, as ever.
"""
from __future__ import annotations

import asyncio
import builtins
import collections
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from cube_common.envd import ENVD_PORT
from cube_common.volumes import VolumeRuleError, check_mounts
from sdk.gen.cube.v1 import cubelet_pb2 as pb, network_pb2
from vmm_core import (
    Machine,
    MachineGoneError,
    MachineStats,
    Snapshot,
    SnapshotKind,
    VmmError,
    VmmSettings,
    WriteBackError,
    clone,
    cold_boot,
    console_tail,
    forget,
    list_machines,
    restore,
    save,
    save_disk,
    volumes as vm_volumes,
)

from . import capacity, gc
from .guest_client import GuestAgentError, GuestEndpoint, init_identity, wait_healthy
from .keyed_locks import KeyedLocks
from .metrics import pool_claimed, sandbox_created, sandbox_resumed
from .registration import host_memory, vcpus
from .settings import CubeletSettings
from .steps import Steps
from .templates import Template, TemplateError, TemplateExists, TemplateStore
from .volumes import VolumeError, VolumeStore
from .vs_client import VsClient, vm_attachment
from .warm_pool import PoolEntry, WarmPool

if TYPE_CHECKING:  # paused_pull imports this module
    from .paused_pull import PausedStatePuller

log = logging.getLogger("cubelet.sandboxes")
_SANDBOX_ID = re.compile(r"[a-z0-9]{1,64}")
# How many sandboxes whose VM ended on its own the node remembers the reason of (for NOT_FOUND).
ENDED_KEPT = 1024
# How long a pause that needs a healthy guest agent waits for it to answer.
AGENT_CHECK_S = 5.0


class SandboxError(Exception):
    """A failure with the gRPC status the caller should see."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name: NOT_FOUND, FAILED_PRECONDITION, ...


class State(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"


@dataclass
class SandboxRecord:
    sandbox_id: str
    template_id: str
    state: State
    vm_id: str
    vs_id: str
    access_token: str
    env_vars: dict[str, str]
    metadata: dict[str, str]
    policy: dict  # NetworkPolicy as proto JSON
    vcpus: int
    memory_mb: int
    disk_mb: int
    envd_version: str
    started_at: float
    host_address: str = ""
    proxy_address: str = ""
    from_pool: bool = False
    # Paused here after arriving from another node: the id of the save it was pulled from
    # (paused_manifest.py), which tells a later pull of the same save from a stale copy. Empty for
    # a sandbox paused here.
    save_id: str = ""
    # Paused without its memory (a filesystem-only pause): its resume cold-boots it.
    filesystem_only: bool = False
    # Volumes it mounts, slot by slot ({volume_id, team_id, path, name}): held from its create to
    # its end, paused or not (volumes.py asks mounted_by()).
    volumes: list[dict[str, str]] = field(default_factory=list)
    # The template's default user and working directory for commands (TemplateInfo), told to the
    # agent at every /init; empty: the agent's own.
    default_user: str = ""
    default_workdir: str = ""

    def dump(self, path: Path) -> None:
        d = asdict(self)
        d["state"] = self.state.value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SandboxRecord:
        d = json.loads(path.read_text())
        d["state"] = State(d["state"])
        return cls(**d)

    def network_policy(self) -> network_pb2.NetworkPolicy:
        return json_format.ParseDict(self.policy, network_pb2.NetworkPolicy())

    def status(self, node_id: str) -> pb.SandboxStatus:
        ts = Timestamp()
        ts.FromNanoseconds(int(self.started_at * 1e9))
        return pb.SandboxStatus(
            sandbox_id=self.sandbox_id, template_id=self.template_id, node_id=node_id,
            state=pb.SANDBOX_STATE_PAUSED if self.state in (State.PAUSED, State.PAUSING) else pb.SANDBOX_STATE_RUNNING,
            host_address=self.host_address, proxy_source_address=self.proxy_address, started_at=ts,
            vcpus=self.vcpus, memory_mb=self.memory_mb, disk_size_mb=self.disk_mb, envd_version=self.envd_version,
            network=self.network_policy(), metadata=self.metadata, from_warm_pool=self.from_pool,
            filesystem_only=self.filesystem_only and self.state in (State.PAUSED, State.PAUSING),
            volumes=[pb.VolumeMount(**v) for v in self.volumes])


@dataclass
class _Live:
    record: SandboxRecord
    machine: Machine | None = None
    metrics: collections.deque = field(default_factory=lambda: collections.deque(maxlen=120))
    last_cpu: tuple[float, float] | None = None  # (monotonic time, cpu seconds)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def disk_free(settings: CubeletSettings) -> int:
    """Free bytes under the node's state dir (what overlays, saves and templates are written to)."""
    return shutil.disk_usage(settings.state_dir).free


def disk_refusal(settings: CubeletSettings, what: str) -> str | None:
    """Why the node takes no more ``what`` (free space under its state dir below the watermark), or
    None. A full disk would fail a clone's overlay or a save half-way; refusing first fails cleanly."""
    free = disk_free(settings)
    if free >= settings.min_free_disk_mb << 20:
        return None
    return (f"node {settings.node_id} takes no {what}: {free >> 20} MiB free under {settings.state_dir}, "
            f"below its watermark of {settings.min_free_disk_mb} MiB")


class SandboxManager:
    def __init__(self, settings: CubeletSettings, vmm: VmmSettings, vs: VsClient, templates: TemplateStore) -> None:
        self.settings = settings
        self.vmm = vmm
        self.vs = vs
        self.templates = templates
        self.pool = WarmPool(settings, vmm, vs, templates, room=lambda: self.headroom().can_take)
        self._live: dict[str, _Live] = {}
        # Sandboxes whose VM ended on its own, oldest first: sandbox id -> why (MachineExit.message).
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._metrics_task: asyncio.Task | None = None
        # Brings a template this node lacks from a node that has it (pull.py's TemplatePuller.pull,
        # set at start-up; it raises SandboxErrors). None: a missing template is NOT_FOUND.
        self.pull_template: Callable[[str], Awaitable[Template]] | None = None
        # Brings a sandbox paused on another node here (paused_pull.py, set at start-up). None: a
        # resume of a sandbox this node does not hold is NOT_FOUND.
        self.arrivals: PausedStatePuller | None = None
        self._arriving = KeyedLocks()  # one arrival of a sandbox at a time; a second resume waits for it
        self.volumes = VolumeStore(settings, self.mounted_by)
        settings.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        settings.paused_dir.mkdir(parents=True, exist_ok=True)

    def _record_path(self, sandbox_id: str) -> Path:
        return self.settings.sandboxes_dir / f"{sandbox_id}.json"

    def _saved_dir(self, sandbox_id: str) -> Path:
        return self.settings.paused_dir / sandbox_id

    def _save_record(self, rec: SandboxRecord) -> None:
        rec.dump(self._record_path(rec.sandbox_id))

    def _forget(self, sandbox_id: str) -> None:
        self._record_path(sandbox_id).unlink(missing_ok=True)
        self._live.pop(sandbox_id, None)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, req: pb.RunSandboxRequest) -> pb.SandboxStatus:
        sid = req.sandbox_id
        if not _SANDBOX_ID.fullmatch(sid):
            raise SandboxError("INVALID_ARGUMENT", f"invalid sandbox id {sid!r}")
        self._admit(sid)
        tpl = await self._template(req.template_id, sid)
        mounts = self._check_mounts(req, tpl)
        async with self.volumes.hold([m.volume_id for m in mounts]):
            images = self._claimable(mounts)  # held from here: the record below names them
            live = self._new_record(req, tpl, mounts)
        steps = Steps()
        try:
            async with live.lock:
                await asyncio.wait_for(self._start(live, tpl, live.record.network_policy(), steps, images),
                                       self.settings.create_timeout_s)
                live.record.state = State.RUNNING
                self._save_record(live.record)
        except BaseException as e:
            await self._teardown(live)
            if isinstance(e, SandboxError):
                raise
            if isinstance(e, asyncio.TimeoutError):
                raise SandboxError("DEADLINE_EXCEEDED", f"sandbox {sid} did not start within "
                                                        f"{self.settings.create_timeout_s}s") from e
            if isinstance(e, (VmmError, GuestAgentError)):
                raise SandboxError("INTERNAL", f"sandbox {sid} failed to start: {e}") from e
            if isinstance(e, grpc.aio.AioRpcError):  # CubeVS refused (bad CIDR, too many rules, full)
                raise SandboxError(e.code().name, e.details() or str(e)) from e
            raise
        rec = live.record
        log.info("sandbox running", extra={"sandbox_id": sid, "from_pool": rec.from_pool,
                                           "steps_ms": steps.ms()})
        sandbox_created(rec.from_pool, steps)
        return rec.status(self.settings.node_id)

    def _check_mounts(self, req: pb.RunSandboxRequest, tpl: Template) -> list[pb.VolumeMount]:
        mounts = list(req.volumes)
        if not mounts:
            return mounts
        try:
            paths = [path for _, path in check_mounts([(m.volume_id, m.path) for m in mounts])]
        except VolumeRuleError as e:
            raise SandboxError("INVALID_ARGUMENT", str(e)) from None
        mounts = [pb.VolumeMount(volume_id=m.volume_id, team_id=m.team_id, name=m.name, path=path)
                  for m, path in zip(mounts, paths, strict=True)]
        snap = tpl.load_snapshot()
        if snap.kind is SnapshotKind.DISK or len(snap.spec.volume_slots) < len(mounts):
            raise SandboxError("FAILED_PRECONDITION", f"template {tpl.template_id} was built before volumes "
                                                      "existed (or without memory): build it again to mount volumes")
        return mounts

    def _claimable(self, mounts: list[pb.VolumeMount]) -> list[Path]:
        """The images of ``mounts``, each refused when missing or mounted by another sandbox.
        Called with their locks held; the caller's record claims them before it lets go."""
        images = []
        for m in mounts:
            try:
                images.append(self.volumes.existing(m.team_id, m.volume_id))
            except VolumeError as e:
                raise SandboxError(e.code, str(e)) from None
            if (holder := self.mounted_by(m.volume_id)) is not None:
                raise SandboxError("FAILED_PRECONDITION", f"volume {m.name or m.volume_id} is mounted by sandbox "
                                                          f"{holder}: a volume is mounted by one sandbox at a time")
        return images

    def mounted_by(self, volume_id: str) -> str | None:
        """The sandbox on this node (running, paused, or on its way) that mounts the volume."""
        for live in self._live.values():
            if any(v["volume_id"] == volume_id for v in live.record.volumes):
                return live.record.sandbox_id
        return None

    def _new_record(self, req: pb.RunSandboxRequest, tpl: Template, mounts: list[pb.VolumeMount]) -> _Live:
        sid = req.sandbox_id
        policy = network_pb2.NetworkPolicy()
        policy.CopyFrom(req.network)
        policy.expose_all_ports = True  # E2B: every guest port is reachable through the proxy
        rec = SandboxRecord(
            sandbox_id=sid, template_id=tpl.template_id, state=State.STARTING, vm_id=sid, vs_id=sid,
            # The template's environment (an image's ENV), then the sandbox's own variables on top.
            access_token=req.envd_access_token, env_vars={**tpl.env, **dict(req.env_vars)},
            metadata=dict(req.metadata),
            policy=json_format.MessageToDict(policy), vcpus=tpl.info.vcpus, memory_mb=tpl.info.memory_mb,
            disk_mb=tpl.info.writable_layer_mb, envd_version=tpl.info.envd_version, started_at=time.time(),
            volumes=[{"volume_id": m.volume_id, "team_id": m.team_id, "path": m.path, "name": m.name}
                     for m in mounts],
            default_user=tpl.info.default_user, default_workdir=tpl.info.default_workdir)
        live = _Live(rec)
        self._live[sid] = live
        self._save_record(rec)
        return live

    async def _template(self, template_id: str, sid: str) -> Template:
        """The template, pulled first when this node lacks it (then admitted again: the pull took
        time and disk, and what held before it may not now)."""
        tpl = self.templates.get(template_id)
        if tpl is None:
            if self.pull_template is None:
                raise SandboxError("NOT_FOUND", f"template {template_id!r} is not built on this node")
            tpl = await self.pull_template(template_id)
            self._admit(sid)
        return tpl

    def _admit(self, sid: str) -> None:
        """Refuse a new sandbox that exists already, or that this node has no room for."""
        if sid in self._live or self._record_path(sid).exists():
            raise SandboxError("ALREADY_EXISTS", f"sandbox {sid} already exists on this node")
        self._check_room()
        self._check_disk("new sandboxes")

    async def _start(self, live: _Live, tpl, policy: network_pb2.NetworkPolicy, steps: Steps,
                     volume_images: list[Path]) -> None:
        rec = live.record
        # A pooled clone was restored with its volume slots empty: a sandbox with volumes is cloned
        # with its images in them.
        entry: PoolEntry | None = None if volume_images else self.pool.claim(tpl.template_id, tpl.build_key)
        pool_claimed(tpl.template_id, hit=entry is not None)
        if entry is not None:
            await self._adopt(live, entry, policy, steps)
            steps.done("network+identity")
        else:
            labels = {"sandbox_id": rec.sandbox_id, "role": "sandbox"}
            # A QEMU the pool started ahead for this template (no volumes: its slots are empty).
            standby = None if volume_images else self.pool.claim_standby(tpl.template_id, tpl.build_key)
            if standby is not None:
                self._take(live, standby.prepared.machine, standby.vs_id)
                net = standby.network
                await self.vs.update_policy(standby.vs_id, policy)  # it had the pool's (no internet)
            else:
                net = await self.vs.allocate(rec.vs_id, policy)
            rec.host_address, rec.proxy_address = net.host_address, net.proxy_address
            self._save_record(rec)
            steps.done("network")
            attachment = vm_attachment(net)
            snap = tpl.load_snapshot()
            if snap.kind is SnapshotKind.DISK:  # a filesystem-only snapshot: sandboxes boot on it
                live.machine = await cold_boot(self.vmm, snap, rec.vm_id, attachment, shared=True, labels=labels)
                await wait_healthy(GuestEndpoint(rec.host_address, rec.proxy_address), tpl.ready_ports,
                                   timeout=self.settings.create_timeout_s)
                steps.done("boot")
            else:
                # The clock and entropy at once: until its clock is set a restored guest runs flat
                # out (100% of a core for 20+ s here), which starved everything at 50 concurrent
                # creates.
                if standby is not None:
                    live.machine = await standby.prepared.start(sync=True)
                    steps.done("clone.standby")
                else:
                    live.machine = await clone(self.vmm, snap, rec.vm_id, attachment, labels=labels, sync=True,
                                               share_memory=not tpl.info.no_memory_sharing,
                                               volume_images=volume_images)
                    steps.done("clone")
                if rec.volumes:
                    await vm_volumes.mount(live.machine, [v["path"] for v in rec.volumes])
                    steps.done("volumes")
            # A snapshot of a sandbox holds its source's token: the agent asks for it first.
            await self._hand_identity(live, current_token=tpl.guest_token, steps=steps)
            steps.done("identity")
        self.pool.request_refill(tpl.template_id)

    def _take(self, live: _Live, machine: Machine, vs_id: str) -> None:
        """A machine the pool made (a warmed clone, or a QEMU started ahead) becomes this sandbox's:
        its record names the machine and its network, so a failure from here tears them down with
        the sandbox, and the machine's own record says whose it is."""
        live.record.vm_id, live.record.vs_id = machine.vm_id, vs_id
        live.machine = machine
        machine.record.labels.update({"sandbox_id": live.record.sandbox_id, "role": "sandbox"})
        machine.record.dump(machine.paths.record)

    async def _adopt(self, live: _Live, entry: PoolEntry, policy: network_pb2.NetworkPolicy,
                     steps: Steps) -> None:
        """Make a pooled clone (restored and warmed ahead of time) this sandbox: its VM and
        network become the sandbox's, with the sandbox's policy and identity."""
        rec = live.record
        self._take(live, entry.machine, entry.vs_id)
        rec.from_pool = True
        rec.host_address, rec.proxy_address = entry.network.host_address, entry.network.proxy_address
        self._save_record(rec)
        try:
            # The network policy and the identity are independent: both at once (~4 ms saved).
            # (A policy update keeps the addresses the pool's allocation gave, saved above.)
            async with asyncio.TaskGroup() as both:
                both.create_task(self.vs.update_policy(entry.vs_id, policy))
                both.create_task(self._hand_identity(live, steps=steps, client=entry.agent))
        except BaseExceptionGroup as group:  # raise the failure itself, as the fresh path would
            raise group.exceptions[0] from None
        finally:
            await entry.close_agent()

    async def _hand_identity(self, live: _Live, current_token: str = "", steps: Steps | None = None,
                             client: httpx.AsyncClient | None = None) -> None:
        """The agent's /init: token, env vars, the host's clock and fresh entropy (the agent adds it
        and forces a CRNG reseed: clones share the snapshot's RNG state). Before the API answers,
        so no user code ever runs with another sandbox's identity or RNG state.

        A fresh clone had vmm_core's control-channel sync (clock, entropy) at restore, a pooled one
        when it was warmed; the /init brings both again, so no second sync runs here, where it only
        made the guest's single vCPU serve two requests at once."""
        rec = live.record
        ep = GuestEndpoint(rec.host_address, rec.proxy_address)
        assert live.machine is not None
        t0 = time.monotonic()
        await init_identity(ep, sandbox_id=rec.sandbox_id, access_token=rec.access_token, env_vars=rec.env_vars,
                            current_token=current_token, default_user=rec.default_user,
                            default_workdir=rec.default_workdir, client=client)
        if steps is not None:
            steps.add("identity.agent_init", time.monotonic() - t0)

    async def _teardown(self, live: _Live) -> None:
        rec = live.record
        if live.machine is not None:
            if rec.volumes and live.machine.alive() and not await vm_volumes.write_back(live.machine):
                log.warning("the guest did not write back before its kill: its volumes keep what ext4's "
                            "journal committed", extra={"sandbox_id": rec.sandbox_id})
            await live.machine.kill()
            live.machine = None
        await self.vs.release(rec.vs_id)
        shutil.rmtree(self._saved_dir(rec.sandbox_id), ignore_errors=True)
        self._forget(rec.sandbox_id)

    def _get(self, sandbox_id: str) -> _Live:
        live = self._live.get(sandbox_id)
        if live is None:
            if sandbox_id in self._ended:
                raise SandboxError("NOT_FOUND", f"sandbox {sandbox_id} ended: {self._ended[sandbox_id]}")
            raise SandboxError("NOT_FOUND", f"sandbox {sandbox_id} is not on this node")
        return live

    async def reap_ended(self) -> list[str]:
        """Find running sandboxes whose QEMU ended on its own (killed at its memory limit, by its
        seccomp filter, from outside, or exited), say why, and remove what is left of them
        (network, files, record) as a kill would. Returns their ids."""
        ended = []
        for live in list(self._live.values()):
            if live.machine is None or live.record.state is not State.RUNNING or live.machine.alive():
                continue
            async with live.lock:
                m = live.machine
                if m is None or live.record.state is not State.RUNNING or m.alive():
                    continue  # killed, paused or replaced meanwhile
                why = await asyncio.to_thread(m.exit_cause)
                sid = live.record.sandbox_id
                log.error("sandbox ended: its VM is gone", extra={
                    "sandbox_id": sid, "vm_id": m.vm_id, "cause": why.cause.value, "reason": why.message})
                self._ended[sid] = why.message
                while len(self._ended) > ENDED_KEPT:
                    self._ended.popitem(last=False)
                await self._teardown(live)
                ended.append(sid)
        return ended

    async def kill(self, sandbox_id: str) -> bool:
        live = self._live.get(sandbox_id)
        if live is None:
            # Not ours (any more), but a create that died half-way may have left its network under
            # the sandbox's id (a fresh create allocates with vs_id == sandbox_id): the master's
            # reconciler kills such a sandbox, and this is where its network goes too.
            if _SANDBOX_ID.fullmatch(sandbox_id) and await self.vs.release(sandbox_id):
                log.warning("released the network of a sandbox this node does not run",
                            extra={"sandbox_id": sandbox_id})
            return False
        async with live.lock:
            await self._teardown(live)
        log.info("sandbox killed", extra={"sandbox_id": sandbox_id})
        return True

    async def pause(self, sandbox_id: str, filesystem_only: bool = False,
                    require_healthy_guest: bool = False) -> pb.SandboxStatus:
        """Save the sandbox and free its VM and tap. ``filesystem_only``: its disk alone, written
        back by the guest first (vmm_core.save_disk). UNAVAILABLE, and the sandbox runs on, when
        its agent does not answer and either is asked (what the guest had not written back would
        be lost; a memory restore would bring the stuck agent back)."""
        live = self._get(sandbox_id)
        async with live.lock:
            rec = live.record
            if rec.state is not State.RUNNING or live.machine is None:
                raise SandboxError("FAILED_PRECONDITION", f"sandbox {sandbox_id} is {rec.state.value}, not running")
            if filesystem_only or require_healthy_guest:
                try:
                    await wait_healthy(GuestEndpoint(rec.host_address, rec.proxy_address), (ENVD_PORT,),
                                       timeout=AGENT_CHECK_S)
                except GuestAgentError as e:
                    raise SandboxError("UNAVAILABLE", f"the agent of sandbox {sandbox_id} does not answer, so "
                                                      f"it was not paused: {e}") from e
            rec.state = State.PAUSING
            self._save_record(rec)
            try:
                if filesystem_only:
                    await save_disk(live.machine, self._saved_dir(sandbox_id))
                else:
                    await save(live.machine, self._saved_dir(sandbox_id))
            except VmmError as e:
                rec.state = State.RUNNING
                self._save_record(rec)
                if isinstance(e, WriteBackError):
                    raise SandboxError("UNAVAILABLE", f"pausing {sandbox_id} without its memory failed: {e}") from e
                raise SandboxError("INTERNAL", f"pausing {sandbox_id} failed: {e}") from e
            live.machine = None
            # The tap goes back to CubeVS: a paused sandbox costs disk, not node resources.
            await self.vs.release(rec.vs_id)
            rec.state, rec.host_address, rec.proxy_address = State.PAUSED, "", ""
            rec.vs_id = rec.vm_id = sandbox_id
            rec.save_id = ""  # a save of this node's
            rec.filesystem_only = filesystem_only
            self._save_record(rec)
            live.last_cpu = None
        log.info("sandbox paused", extra={"sandbox_id": sandbox_id, "filesystem_only": filesystem_only})
        return rec.status(self.settings.node_id)

    async def snapshot(self, sandbox_id: str, template_id: str, filesystem_only: bool = False) -> pb.TemplateInfo:
        """A new template from the running sandbox, which runs on (templates.snapshot_sandbox)."""
        live = self._get(sandbox_id)
        async with live.lock:
            rec = live.record
            if rec.state is not State.RUNNING or live.machine is None:
                raise SandboxError("FAILED_PRECONDITION", f"sandbox {sandbox_id} is {rec.state.value}, not running")
            if rec.volumes:
                raise SandboxError("FAILED_PRECONDITION", f"sandbox {sandbox_id} mounts volumes, which are not part "
                                                          "of a snapshot: it cannot be snapshotted or forked")
            base = self.templates.get(rec.template_id)
            if base is None:
                raise SandboxError("FAILED_PRECONDITION", f"the template of sandbox {sandbox_id} "
                                                          f"({rec.template_id}) is gone from this node")
            self._check_disk("snapshots")
            try:
                t = await self.templates.snapshot_sandbox(template_id, live.machine, base, sandbox_id=sandbox_id,
                                                          guest_token=rec.access_token,
                                                          filesystem_only=filesystem_only)
            except TemplateError as e:
                raise SandboxError("ALREADY_EXISTS" if isinstance(e, TemplateExists) else "INVALID_ARGUMENT",
                                   str(e)) from e
            except VmmError as e:
                if isinstance(e, WriteBackError):
                    raise SandboxError("UNAVAILABLE", f"snapshot of {sandbox_id} failed: {e}") from e
                raise SandboxError("INTERNAL", f"snapshot of {sandbox_id} failed: {e}") from e
        log.info("sandbox snapshotted", extra={"sandbox_id": sandbox_id, "template_id": template_id,
                                               "ms": t.info.phase_ms.get("SNAPSHOTTING", 0)})
        return t.info

    def _check_disk(self, what: str) -> None:
        why = disk_refusal(self.settings, what)
        if why:
            raise SandboxError("RESOURCE_EXHAUSTED", why)

    def paused_state(self, sandbox_id: str) -> tuple[SandboxRecord, Path]:
        """A sandbox paused here: a copy of its record and its saved dir (what transfer.py serves).
        NOT_FOUND when this node holds no such sandbox, FAILED_PRECONDITION when it is not paused."""
        if not _SANDBOX_ID.fullmatch(sandbox_id):
            raise SandboxError("INVALID_ARGUMENT", f"invalid sandbox id {sandbox_id!r}")
        rec = self._get(sandbox_id).record
        if rec.state is not State.PAUSED:
            raise SandboxError("FAILED_PRECONDITION", f"sandbox {sandbox_id} is {rec.state.value}, not paused")
        return replace(rec, env_vars=dict(rec.env_vars), metadata=dict(rec.metadata)), self._saved_dir(sandbox_id)

    async def _arrive(self, req: pb.ResumeSandboxRequest) -> _Live:
        """The sandbox paused on the node ``req.source`` names, made this node's paused sandbox (its
        saved state pulled: paused_pull.py). A copy that arrived before from the very same save is
        taken as it is; any other paused copy here is stale (a move that never finished, the sandbox
        resumed and paused again on its node since) and is replaced."""
        sid, src = req.sandbox_id, req.source
        if not _SANDBOX_ID.fullmatch(sid):
            raise SandboxError("INVALID_ARGUMENT", f"invalid sandbox id {sid!r}")
        if self.arrivals is None or not src.address:
            raise SandboxError("NOT_FOUND", f"sandbox {sid} is not on this node")
        async with self._arriving.hold(sid):
            live = self._live.get(sid)
            if live is not None and live.record.state is not State.PAUSED:
                return live  # resuming or running here already: resume() answers that
            m = await self.arrivals.manifest(src, sid)
            if live is not None:
                if live.record.save_id == m.save_id:
                    return live
                async with live.lock:
                    if live.record.state is not State.PAUSED:
                        return live  # resumed here meanwhile: resume() answers that
                    log.warning("stale paused copy replaced", extra={
                        "sandbox_id": sid, "peer": src.node_id, "save_id": live.record.save_id or "local"})
                    await self._teardown(live)
            await asyncio.to_thread(shutil.rmtree, self._saved_dir(sid), True)  # what no record names
            self._admit(sid)
            tpl = await self._template(m.template_id, sid)
            if tpl.build_key != m.build_key:
                raise SandboxError("FAILED_PRECONDITION", f"sandbox {sid} was paused on build {m.build_key} of "
                                                          f"template {m.template_id}; node {self.settings.node_id} "
                                                          f"has build {tpl.build_key}")
            pulled = await self.arrivals.pull(src, m, tpl)
            live = _Live(self._arrived_record(m, tpl))
            self._live[sid] = live
            self._save_record(live.record)
            log.info("paused sandbox arrived", extra={"sandbox_id": sid, "peer": src.node_id,
                                                      "bytes_received": pulled.received,
                                                      "seconds": round(pulled.seconds, 2)})
            return live

    @staticmethod
    def _arrived_record(m: pb.PausedManifest, tpl: Template) -> SandboxRecord:
        """The record a pause here would have left, from what the holder said of the sandbox."""
        st = m.sandbox
        return SandboxRecord(
            sandbox_id=m.sandbox_id, template_id=tpl.template_id, state=State.PAUSED, vm_id=m.sandbox_id,
            vs_id=m.sandbox_id, access_token=m.envd_access_token, env_vars=dict(m.env_vars),
            metadata=dict(st.metadata), policy=json_format.MessageToDict(st.network), vcpus=st.vcpus or tpl.info.vcpus,
            memory_mb=st.memory_mb or tpl.info.memory_mb, disk_mb=st.disk_size_mb or tpl.info.writable_layer_mb,
            envd_version=st.envd_version or tpl.info.envd_version,
            started_at=st.started_at.ToNanoseconds() / 1e9 if st.HasField("started_at") else time.time(),
            from_pool=st.from_warm_pool, save_id=m.save_id, default_user=tpl.info.default_user,
            default_workdir=tpl.info.default_workdir)

    async def resume(self, req: pb.ResumeSandboxRequest) -> pb.SandboxStatus:
        if req.HasField("source") and req.source.node_id != self.settings.node_id:
            live = await self._arrive(req)
        else:
            live = self._get(req.sandbox_id)
        async with live.lock:
            rec = live.record
            if rec.state is not State.PAUSED:
                raise SandboxError("FAILED_PRECONDITION", f"sandbox {rec.sandbox_id} is {rec.state.value}, not paused")
            self._check_room()  # a resumed sandbox holds a VM again
            old_token = rec.access_token
            if req.envd_access_token:
                rec.access_token = req.envd_access_token
            if req.env_vars:
                rec.env_vars = dict(req.env_vars)
            if req.HasField("network"):
                policy = network_pb2.NetworkPolicy()
                policy.CopyFrom(req.network)
                policy.expose_all_ports = True
                rec.policy = json_format.MessageToDict(policy)
            rec.state = State.RESUMING
            self._save_record(rec)
            rebooted = req.reboot
            started = time.monotonic()
            try:
                net = await self.vs.allocate(rec.vs_id, rec.network_policy())
                rec.host_address, rec.proxy_address = net.host_address, net.proxy_address
                self._save_record(rec)
                saved = Snapshot.load(self._saved_dir(rec.sandbox_id))
                attachment = vm_attachment(net)
                labels = {"sandbox_id": rec.sandbox_id, "role": "sandbox"}
                ep = GuestEndpoint(rec.host_address, rec.proxy_address)
                rebooted = rebooted or saved.kind is SnapshotKind.DISK
                if rebooted:
                    # A fresh boot on its disk: the agent starts with no token, and the template's
                    # services must come up first (seconds under TCG, not a restore's milliseconds).
                    live.machine = await cold_boot(self.vmm, saved, rec.vm_id, attachment, labels=labels)
                    tpl = self.templates.get(rec.template_id)
                    await wait_healthy(ep, tpl.ready_ports if tpl is not None else (ENVD_PORT,),
                                       timeout=self.settings.create_timeout_s)
                    if rec.volumes:  # a fresh guest: its init mounts them again
                        await vm_volumes.mount(live.machine, [v["path"] for v in rec.volumes])
                else:
                    live.machine = await restore(self.vmm, saved, rec.vm_id, attachment, labels=labels)
                await init_identity(ep, sandbox_id=rec.sandbox_id, access_token=rec.access_token,
                                    env_vars=rec.env_vars, current_token="" if rebooted else old_token,
                                    default_user=rec.default_user, default_workdir=rec.default_workdir)
            except BaseException as e:
                # The saved state is intact (restore() and cold_boot() give the disk back on
                # failure): stay paused.
                if live.machine is not None:
                    # The VM came back (which consumed the saved state) but the agent did not take
                    # its identity: save it again so nothing written is lost (a booted one's disk
                    # alone: it has no memory worth keeping).
                    try:
                        if rebooted:
                            await save_disk(live.machine, self._saved_dir(rec.sandbox_id))
                            rec.filesystem_only = True
                        else:
                            await save(live.machine, self._saved_dir(rec.sandbox_id))
                    except VmmError as save_error:
                        log.error("sandbox state lost: re-saving after a failed resume failed",
                                  extra={"sandbox_id": rec.sandbox_id, "error": str(save_error)})
                        await live.machine.kill()
                    live.machine = None
                await self.vs.release(rec.vs_id)
                rec.state, rec.host_address, rec.proxy_address, rec.access_token = State.PAUSED, "", "", old_token
                self._save_record(rec)
                if isinstance(e, (VmmError, GuestAgentError)):
                    raise SandboxError("INTERNAL", f"resuming {rec.sandbox_id} failed: {e}") from e
                if isinstance(e, grpc.aio.AioRpcError):
                    raise SandboxError(e.code().name, e.details() or str(e)) from e
                raise
            rec.state, rec.filesystem_only = State.RUNNING, False
            self._save_record(rec)
        log.info("sandbox resumed", extra={"sandbox_id": rec.sandbox_id, "rebooted": rebooted})
        sandbox_resumed(rebooted, time.monotonic() - started)
        return rec.status(self.settings.node_id)

    async def update_network(self, sandbox_id: str, policy: network_pb2.NetworkPolicy) -> pb.SandboxStatus:
        live = self._get(sandbox_id)
        async with live.lock:
            rec = live.record
            p = network_pb2.NetworkPolicy()
            p.CopyFrom(policy)
            p.expose_all_ports = True
            if rec.state is State.RUNNING:
                try:
                    await self.vs.update_policy(rec.vs_id, p)
                except grpc.aio.AioRpcError as e:
                    raise SandboxError(e.code().name, e.details() or str(e)) from e
            rec.policy = json_format.MessageToDict(p)
            self._save_record(rec)
            return rec.status(self.settings.node_id)

    # ---- observation -------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> pb.SandboxStatus:
        return self._get(sandbox_id).record.status(self.settings.node_id)

    def list(self) -> list[pb.SandboxStatus]:
        return [live.record.status(self.settings.node_id) for live in self._live.values()
                if live.record.state is not State.STARTING]

    def headroom(self, host: capacity.Host | None = None) -> capacity.Headroom:
        """How many more sandboxes this node can take now (capacity.py); ``host``: the host's
        figures when the caller has just read them."""
        host = host or capacity.Host(*host_memory(), vcpus())
        running = [live for live in list(self._live.values()) if live.record.state is not State.PAUSED]
        samples = []
        for live in running:
            if live.record.state is State.RUNNING and live.metrics:
                m = live.metrics[-1]
                # A sandbox's first sample has no CPU rate (it needs two readings).
                cpu = m.cpu_used_pct / 100.0 * max(1, m.cpu_count) if len(live.metrics) > 1 else None
                age = len(live.metrics) * self.settings.metrics_interval_s  # one sample per interval
                samples.append(capacity.Sample(m.mem_used_bytes, age, cpu))
        s = self.settings
        limits = capacity.Limits(s.max_sandboxes, s.memory_reserve_mb, s.sandbox_memory_estimate_mb, s.cpu_target_pct)
        return capacity.headroom(host, len(running), samples, limits)

    def _check_room(self) -> None:
        room = self.headroom()
        if room.can_take <= 0:
            raise SandboxError("RESOURCE_EXHAUSTED", f"node {self.settings.node_id} is full: {room.reason}")

    def counts(self) -> tuple[int, int]:
        running = sum(1 for live in self._live.values() if live.record.state is State.RUNNING)
        paused = sum(1 for live in self._live.values() if live.record.state is State.PAUSED)
        return running, paused

    def states(self) -> collections.Counter[State]:
        """How many sandboxes this node holds in each state (for /metrics)."""
        return collections.Counter(live.record.state for live in list(self._live.values()))

    def network_ids(self) -> dict[str, str]:
        """CubeVS's id of each running sandbox's network -> the sandbox's id (for /metrics: a
        sandbox that began as a pooled clone keeps the network named for the pool entry)."""
        return {live.record.vs_id: sid for sid, live in list(self._live.items()) if live.record.state is State.RUNNING}

    # From here on `list` in an annotation of this class would name the method above: builtins.list.
    def metrics(self, sandbox_id: str) -> builtins.list[pb.SandboxMetric]:
        live = self._get(sandbox_id)
        return list(live.metrics)

    def logs(self, sandbox_id: str, limit: int = 1000) -> builtins.list[pb.LogLine]:
        live = self._get(sandbox_id)
        path = self.vmm.vms_dir / live.record.vm_id / "console.log"
        try:
            mtime = path.stat().st_mtime
            # Only the tail is read, whatever the guest wrote (trimmed to console_max_kb anyway).
            lines = console_tail(path, limit or 1000, max_bytes=self.vmm.console_max_kb << 10).splitlines()
        except OSError:
            return []
        ts = Timestamp()
        ts.FromNanoseconds(int(mtime * 1e9))
        return [pb.LogLine(timestamp=ts, line=line) for line in lines]

    async def _sample_all(self) -> None:
        """One metrics sample of every running sandbox. Reading a VMM's smaps_rollup walks its page
        tables (~10 ms each under TCG): with hundreds of sandboxes that would hold the event loop
        for seconds, and the node's lease renewal with it. So the reads run in a thread, and only
        the samples are recorded here."""
        lives = [live for live in list(self._live.values())
                 if live.machine is not None and live.record.state is State.RUNNING]
        machines = [live.machine for live in lives]

        def read() -> list[MachineStats | None]:
            out: list[MachineStats | None] = []
            for m in machines:
                try:
                    out.append(m.stats() if m is not None else None)
                except (OSError, MachineGoneError):
                    out.append(None)
            return out

        for live, s in zip(lives, await asyncio.to_thread(read), strict=True):
            if s is not None and live.record.state is State.RUNNING:
                self._sample(live, s)

    def _sample(self, live: _Live, s: MachineStats) -> None:
        now = time.monotonic()
        pct = 0.0
        if live.last_cpu is not None:
            dt = now - live.last_cpu[0]
            if dt > 0:
                pct = max(0.0, 100.0 * (s.cpu_seconds - live.last_cpu[1]) / dt / max(1, live.record.vcpus))
        live.last_cpu = (now, s.cpu_seconds)
        ts = Timestamp()
        ts.GetCurrentTime()
        live.metrics.append(pb.SandboxMetric(
            timestamp=ts, cpu_count=live.record.vcpus, cpu_used_pct=round(pct, 2), mem_used_bytes=s.pss_bytes,
            mem_total_bytes=live.record.memory_mb << 20, mem_cache_bytes=0, disk_used_bytes=s.writable_disk_bytes,
            disk_total_bytes=live.record.disk_mb << 20))

    async def _metrics_loop(self) -> None:
        while True:
            try:
                await self.reap_ended()
            except Exception:  # noqa: BLE001 - the loop also bounds consoles: it must go on
                log.exception("looking for ended sandboxes failed")
            await self._sample_all()
            for live in list(self._live.values()):
                if live.machine is not None:
                    # The console is a bounded ring on the host: a guest printing without end
                    # fills at most console_max_kb (and its QEMU's file-size limit, the jail's).
                    await asyncio.to_thread(live.machine.trim_console)
            await asyncio.sleep(self.settings.metrics_interval_s)

    # ---- start-up: re-adopt, clean up --------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        for t in self.templates.list():
            self.templates.prune(t.template_id)
        await asyncio.to_thread(gc.prune_artifacts, self.settings, self.vmm)
        self._metrics_task = asyncio.create_task(self._metrics_loop())
        await self.pool.start()

    async def stop(self) -> None:
        """Stop background work. Sandboxes keep running: a restarted cubelet re-adopts them."""
        if self._metrics_task:
            self._metrics_task.cancel()
        await self.pool.stop()

    async def recover(self) -> None:
        adopted_vms: set[str] = set()
        for path in sorted(self.settings.sandboxes_dir.glob("*.json")):
            try:
                rec = SandboxRecord.load(path)
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("unreadable sandbox record removed", extra={"path": str(path), "error": str(e)})
                path.unlink(missing_ok=True)
                continue
            live = _Live(rec)
            if rec.state is State.PAUSED and (self._saved_dir(rec.sandbox_id) / "snapshot.json").exists():
                self._live[rec.sandbox_id] = live
                continue
            if rec.state is State.RUNNING:
                try:
                    live.machine = await Machine.attach(self.vmm, rec.vm_id)
                    self._live[rec.sandbox_id] = live
                    adopted_vms.add(rec.vm_id)
                    log.info("sandbox re-adopted", extra={"sandbox_id": rec.sandbox_id, "pid": live.machine.pid})
                    continue
                except VmmError as e:
                    log.warning("sandbox lost while the cubelet was down",
                                extra={"sandbox_id": rec.sandbox_id, "error": str(e)})
            # STARTING/PAUSING/RESUMING when we died, or its VM is gone: finish the job by removing it.
            if (rec.state in (State.PAUSING, State.RESUMING)
                    and (self._saved_dir(rec.sandbox_id) / "snapshot.json").exists()):
                rec.state = State.PAUSED
                self._save_record(rec)
                self._live[rec.sandbox_id] = live
                continue
            await self._teardown(live)
        # VMs that no record owns: pool entries, template builds, half-started creates.
        for vm_id in list_machines(self.vmm):
            if vm_id in adopted_vms:
                continue
            try:
                m = await Machine.attach(self.vmm, vm_id)
                await m.kill()
            except VmmError:
                await asyncio.to_thread(forget, self.vmm, vm_id)
            log.info("orphan machine removed", extra={"vm_id": vm_id})
        # Runtime dirs with no record at all: a clone killed before QEMU wrote its record.
        if self.vmm.vms_dir.is_dir():
            for d in self.vmm.vms_dir.iterdir():
                if d.is_dir() and d.name not in adopted_vms and not (d / "machine.json").exists():
                    await asyncio.to_thread(forget, self.vmm, d.name)
                    log.info("half-made machine dir removed", extra={"vm_id": d.name})
        for d in self.settings.paused_dir.iterdir():
            if d.name not in self._live:
                shutil.rmtree(d, ignore_errors=True)
        live_vs = [entry.record.vs_id for entry in self._live.values() if entry.record.state is State.RUNNING]
        await self.vs.reconcile(live_vs)
