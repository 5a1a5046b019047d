"""Sandbox lifecycle: create, get, list, kill, timeouts, pause, connect/resume, metrics, logs.

Every change is a small state machine over the record at <prefix>/sandboxes/<id>:

    create:  (none) -> CREATING -> [node RunSandbox] -> RUNNING + route
    pause:   RUNNING -> PAUSING -> [node PauseSandbox] -> PAUSED + route(paused)
    resume:  PAUSED -> RESUMING -> [node ResumeSandbox] -> RUNNING + route(running)
    move:    PAUSED -> RESUMING(resume_node_id=T) -> [T ResumeSandbox from node_id] -> RUNNING on T + route
             -> [old node KillSandbox: its copy]
    kill:    any -> KILLING (route deleted) -> [node KillSandbox] -> (none)
    lost:    RUNNING -> LOST (route deleted) -> RUNNING/PAUSED + route, or (none)   (lost.py)

A transitional phase is written (compare-and-swap on the record's revision) before the node is
asked, with a deadline; the final phase is written with a CAS too. Whoever loses a CAS re-reads
and yields (a kill always wins: a create or resume that finds its record KILLING or gone kills
its VM again). If this master dies, or etcd goes away between the two writes, the leader's
reconciler finds the transitional record after its deadline and finishes or undoes it.

Ownership: a sandbox belongs to the team of the caller that created it (an operator's: the local
team). Every call names its caller and every read of a record goes through ``_record``, which
answers NOT_FOUND for another team's sandbox exactly as for an unknown id (admins see every
team's); lists hold only the caller's team's. The leader's own duties act as ``OPERATOR``.

Quotas: the first write of a create, a pause and a resume is an admission against the owning
team's quota (quotas.py), whoever asks (the proxy's auto-resume and the leader's timeouts too);
RESOURCE_EXHAUSTED when it would exceed it. A sandbox an operator created is exempt.

Lost sandboxes (their node's registration lapsed; lost.py): get, list and kill see them; any other
call on one answers UNAVAILABLE with the reason, never acts on it. A paused sandbox whose node is
not registered answers UNAVAILABLE to a resume before anything is written.

Where a paused sandbox resumes: on the node that holds its state while that node is registered,
not draining and has room. When it is draining, answers RESOURCE_EXHAUSTED, or an operator names
another node, the resume moves it: a node is chosen as for a create (``rank``, the holder left out;
or the one named), written into the RESUMING record (``resume_node_id``) before it is asked, and
told where the state is; it pulls the state from the holder and resumes it. Only then does the
record name it (node_id, route); the holder is told to drop its copy, and a holder that cannot be
told keeps a copy no record names, which the reconciler kills as an orphan. While the record is
RESUMING the holder's copy is the sandbox: a move that fails or times out settles it PAUSED on the
holder (the target told to drop what it pulled), and the reconciler settles a move whose master
died by what the target reports.

Volumes (volumes.py): a sandbox that mounts volumes runs on their node (all on one), is created
there or not at all, and resumes only there (never moved). Its record claims each volume
(``mounted_by``) in the transaction that creates it, before the node is asked, and the claims go
with the record whenever it is deleted (store.delete_sandbox); a pause keeps them. It cannot be
snapshotted or forked (snapshots.py): the volume is not part of the snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import re
import secrets
import string
import time
from collections.abc import Sequence

from cube_common import host_mask, https_ports
from cube_common.etcd import EtcdUnavailable
from cube_common.teams import OPERATOR, Caller
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2, network_pb2
from services.master import errors
from services.master.clock import secs, ts
from services.master.log import get_logger
from services.master.nodes import NodeClients
from services.master.quotas import PAUSED_ONE, Quotas, running_one
from services.master.routes import build_route, wait_applied
from services.master.scheduler import load_by_node, rank
from services.master.settings import Settings
from services.master.store import CAS_RETRIES, Conflict, Store, Versioned
from services.master.teams import owner
from services.master.templates import Templates
from services.master.volumes import Volumes

log = get_logger("sandboxes")


class _NodeRefused(Exception):
    """RunSandbox failed in a way another node may not (full, no such template, unreachable)."""

    def __init__(self, error: errors.MasterError) -> None:
        super().__init__(str(error))
        self.error = error

P = master_pb2
ID_ALPHABET = string.ascii_lowercase + string.digits
ID_RE = re.compile(r"^[a-z0-9]{1,64}\Z")
# What E2B calls running / paused (PAUSING and RESUMING: the call has not answered yet).
RUNNING_PHASES = (P.SANDBOX_PHASE_RUNNING,)
PAUSED_PHASES = (P.SANDBOX_PHASE_PAUSED, P.SANDBOX_PHASE_PAUSING, P.SANDBOX_PHASE_RESUMING)
VISIBLE_PHASES = RUNNING_PHASES + PAUSED_PHASES
LOST_PHASES = (P.SANDBOX_PHASE_LOST,)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def new_sandbox_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(20))


def phase_name(phase: int) -> str:
    return P.SandboxPhase.Name(phase).removeprefix("SANDBOX_PHASE_").lower()


def _copy(rec: P.Sandbox) -> P.Sandbox:
    out = P.Sandbox()
    out.CopyFrom(rec)
    return out


def _node_away(rec: P.Sandbox) -> str:
    return (f"sandbox '{rec.sandbox_id}' is paused on node '{rec.node_id}', which is not registered now (its "
            "cubelet is down or its host cut off); its state is on that node: resume it when the node is back")


def _extra(rec_or_id, **kw) -> dict:
    sid = rec_or_id if isinstance(rec_or_id, str) else rec_or_id.sandbox_id
    return {"sandbox_id": sid, **kw}


# ---- list paging ------------------------------------------------------------------------------

def _sort_key(rec: P.Sandbox) -> tuple[int, str]:
    return (rec.started_at.ToNanoseconds(), rec.sandbox_id)


def encode_page_token(rec: P.Sandbox) -> str:
    ns, sid = _sort_key(rec)
    return base64.urlsafe_b64encode(f"{ns}:{sid}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ns, sid = raw.split(":", 1)
        if not ID_RE.match(sid):
            raise ValueError(sid)
        return int(ns), sid
    except Exception as e:
        raise errors.InvalidArgument(f"invalid page token '{token}'") from e


class Sandboxes:
    def __init__(self, store: Store, nodes: NodeClients, templates: Templates, settings: Settings,
                 quotas: Quotas, incarnation: str = ""):
        self.store = store
        # Written into every transitional phase this process starts (``transition_owner``).
        self.incarnation = incarnation
        self.nodes = nodes
        self.templates = templates
        self.settings = settings
        self.quotas = quotas
        self.volumes = Volumes(store, nodes, settings)

    # ---- helpers ------------------------------------------------------------------------------

    async def _record(self, sid: str, caller: Caller, phases=VISIBLE_PHASES) -> Versioned[P.Sandbox]:
        """The record of a sandbox the caller may see; NOT_FOUND, the same answer, when it does not
        exist, is in another phase or belongs to another team."""
        if not ID_RE.match(sid or ""):
            raise errors.NotFound(f"sandbox '{sid}' not found")
        v = await self.store.get_sandbox(sid)
        if v is None or not caller.sees(owner(v.value.team_id)):
            raise errors.NotFound(f"sandbox '{sid}' not found")
        if v.value.phase == P.SANDBOX_PHASE_LOST and P.SANDBOX_PHASE_LOST not in phases:
            # It exists (get and list show it): say why nothing can be done with it now.
            raise errors.Unavailable(f"sandbox '{sid}' is unreachable: {v.value.lost_reason}; it is back if its "
                                     "node comes back, or kill it")
        if v.value.phase not in phases:
            raise errors.NotFound(f"sandbox '{sid}' not found")
        return v

    async def _node(self, node_id: str) -> cubelet_pb2.NodeStatus | None:
        return await self.store.get_node(node_id)

    def _deadline(self, rec: P.Sandbox, seconds: float) -> None:
        """Enter a transitional phase: this process carries it until ``seconds`` from now."""
        rec.phase_deadline.CopyFrom(ts(time.time() + seconds))
        rec.transition_owner = self.incarnation
        rec.updated_at.CopyFrom(ts())

    def _check_timeout(self, timeout_s: int) -> None:
        if timeout_s < 0 or timeout_s > self.settings.max_timeout_s:
            raise errors.InvalidArgument(
                f"timeout must be between 0 and {self.settings.max_timeout_s} seconds, got {timeout_s}")

    def _check_maps(self, metadata, env_vars) -> None:
        s = self.settings
        if len(metadata) > s.max_metadata_entries:
            raise errors.InvalidArgument(f"metadata has {len(metadata)} entries; at most {s.max_metadata_entries}")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > s.max_metadata_bytes:
            raise errors.InvalidArgument(f"metadata is {size} bytes; at most {s.max_metadata_bytes}")
        if any(not k for k in metadata):
            raise errors.InvalidArgument("metadata keys must not be empty")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in env_vars.items())
        if size > s.max_env_bytes:
            raise errors.InvalidArgument(f"envVars are {size} bytes; at most {s.max_env_bytes}")
        for k in env_vars:
            if not ENV_NAME_RE.match(k):
                raise errors.InvalidArgument(f"invalid environment variable name '{k}'")

    async def _kill_on_node(self, rec: P.Sandbox) -> bool:
        """Kill the VM wherever the record says it is (and what a node it is moving to has of it).
        False when a node could not be asked (the reconciler retries); True when it is gone (or its
        node is)."""
        done = True
        for node_id in dict.fromkeys(n for n in (rec.node_id, rec.resume_node_id) if n):
            node = await self._node(node_id)
            if node is not None:
                done = await self._drop_on(node, rec.sandbox_id) and done
        return done

    async def _drop_on(self, node: cubelet_pb2.NodeStatus, sid: str) -> bool:
        """Ask ``node`` to kill what it has of the sandbox (a VM, or a paused copy only). False when it
        could not be asked."""
        try:
            await self.nodes.call(node, "KillSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
        except errors.NotFound:
            pass
        except errors.MasterError as e:
            log.warning("kill on node failed", extra=_extra(sid, node_id=node.node_id, error=str(e)))
            return False
        return True

    # ---- create -------------------------------------------------------------------------------

    async def create(self, req: P.CreateSandboxRequest, caller: Caller) -> P.Sandbox:
        timeout = req.timeout_s or self.settings.default_timeout_s
        self._check_timeout(timeout)
        if timeout < 1:
            raise errors.InvalidArgument("timeout must be at least 1 second")
        self._check_maps(req.metadata, req.env_vars)
        if req.auto_pause_filesystem_only and req.auto_resume:
            raise errors.InvalidArgument("autoResume cannot be combined with a filesystem-only auto-pause "
                                         "(autoPauseMemory: false): such a sandbox cold-boots and must be "
                                         "resumed explicitly")
        try:
            host_mask.check(req.network.mask_request_host)
            req.network.https_ports[:] = https_ports.check(req.network.https_ports)
        except (host_mask.InvalidHostMask, https_ports.InvalidHttpsPorts) as e:
            raise errors.InvalidArgument(str(e)) from None
        t0 = time.monotonic()
        mounts = await self.volumes.resolve_mounts(req.volume_mounts, caller) if req.volume_mounts else []
        # Independent reads: one round trip's wait instead of four.
        (tpl, alias), sandboxes, nodes, draining = await asyncio.gather(
            self.templates.resolve(req.template, caller), self.store.list_sandboxes(), self.store.list_nodes(),
            self.store.draining_nodes())
        if tpl.status not in (P.TEMPLATE_STATUS_READY, P.TEMPLATE_STATUS_UNSPECIFIED):
            raise errors.FailedPrecondition(f"template '{tpl.template_id}' is not ready")
        load = load_by_node([v.value for v in sandboxes])
        only_on = {tpl.home_node_id} if tpl.base_template_id else None
        if mounts:
            only_on = await self._volume_node(mounts, tpl, only_on, nodes, draining)
        # A node that refuses (full since it last reported, lacks the template, unreachable) is
        # left for the next best one, within the create's deadline: each attempt is a whole create
        # of its own (fresh id and record, undone before the next), so nothing of it lingers.
        tried: set[str] = set()
        deadline = t0 + self.settings.node_op_timeout_s
        last: errors.MasterError | None = None
        while len(tried) < self.settings.placement_attempts and time.monotonic() < deadline:
            try:
                node = rank(nodes, tpl.template_id, tpl.memory_mb or 512, load, exclude=tried,
                            overcommit_ratio=self.settings.memory_overcommit_ratio, draining=draining,
                            only_on=only_on)[0].node
            except errors.MasterError as e:
                if last is not None:
                    break
                if mounts and isinstance(e, errors.Exhausted):
                    raise errors.Exhausted("the node that holds the sandbox's volumes has no room for another "
                                           "sandbox now; try again later") from e
                raise
            try:
                return await self._create_on(node, req, caller, tpl, alias, timeout, t0, deadline, mounts)
            except _NodeRefused as e:
                tried.add(node.node_id)
                last = e.error
                log.warning("node refused the create", extra={"node_id": node.node_id, "error": str(e.error),
                                                              "template_id": tpl.template_id})
        assert last is not None
        raise last

    async def _volume_node(self, mounts: builtins.list[cubelet_pb2.VolumeMount], tpl: P.Template,
                           only_on: set[str] | None, nodes: builtins.list[cubelet_pb2.NodeStatus],
                           draining: frozenset[str]) -> set[str]:
        """The one node a sandbox mounting ``mounts`` may run on: their node, which must be
        registered, not draining, and (for a snapshot's sandbox) the snapshot's node too."""
        node_id = await self.volumes.node_of(mounts)
        names = ", ".join(repr(m.name) for m in mounts)
        if only_on is not None and node_id not in only_on:
            raise errors.FailedPrecondition(f"volume {names} and template '{tpl.template_id}' are on different "
                                            "nodes; a sandbox can mount a volume only on the volume's node")
        if not any(n.node_id == node_id and n.address for n in nodes):
            raise errors.FailedPrecondition(f"the node that holds volume {names} is not registered now; try again "
                                            "when it is back")
        if node_id in draining:
            raise errors.FailedPrecondition(f"the node that holds volume {names} is draining and takes no new "
                                            "sandboxes")
        return {node_id}

    async def _create_on(self, node: cubelet_pb2.NodeStatus, req: P.CreateSandboxRequest, caller: Caller,
                         tpl: P.Template, alias: str, timeout: int, t0: float, deadline: float,
                         mounts: Sequence[cubelet_pb2.VolumeMount] = ()) -> P.Sandbox:
        now = time.time()
        rec = P.Sandbox(
            sandbox_id=new_sandbox_id(), template_id=tpl.template_id, alias=alias, client_id=req.client_id,
            node_id=node.node_id, phase=P.SANDBOX_PHASE_CREATING, metadata=dict(req.metadata),
            env_vars=dict(req.env_vars), envd_access_token=secrets.token_hex(16),
            envd_version=tpl.envd_version or self.settings.envd_version, vcpus=tpl.vcpus or 1,
            traffic_access_token=secrets.token_hex(16) if req.network.require_traffic_token else "",
            memory_mb=tpl.memory_mb or 512, disk_size_mb=tpl.disk_size_mb or 1024, auto_pause=req.auto_pause,
            auto_resume=req.auto_resume, timeout_s=timeout, team_id=owner(caller.team_id),
            quota_exempt=not caller.team_id, auto_pause_filesystem_only=req.auto_pause_filesystem_only,
            volume_mounts=mounts)
        if req.HasField("network"):
            rec.network.CopyFrom(req.network)
        rec.created_at.CopyFrom(ts(now))
        rec.started_at.CopyFrom(ts(now))
        rec.end_at.CopyFrom(ts(now + timeout))
        self._deadline(rec, self.settings.node_op_timeout_s)
        t1 = time.monotonic()
        rev = await self._admit_create(rec)  # nothing is written if this fails
        steps = {"read": t1 - t0, "write": time.monotonic() - t1}
        log.info("creating", extra=_extra(rec, node_id=node.node_id, template_id=tpl.template_id))
        try:
            return await self._finish_create(rec, rev, node, steps, deadline)
        except BaseException as e:
            # Undo whatever the failure (node error, etcd gone, the caller cancelled): shielded
            # so a cancellation cannot cut the undo short. What cannot be undone now (etcd down)
            # stays CREATING and is undone by the reconciler after the deadline.
            await asyncio.shield(self._undo_create(rec, rev))
            if isinstance(e, EtcdUnavailable):
                raise errors.Unavailable(f"cluster state unavailable: {e}") from e
            raise

    async def _admit_create(self, rec: P.Sandbox) -> int:
        """Write the CREATING record, admitted against its team's quota, claiming its volumes.
        Returns its revision."""
        for _ in range(CAS_RETRIES):
            claims = await self.volumes.claimable(rec.sandbox_id, rec.volume_mounts) if rec.volume_mounts else []
            async with self.quotas.admission(rec, running_one(rec)) as guard:
                try:
                    return await self.store.create_sandbox(rec, guard, claims)
                except Conflict:
                    continue  # another master admitted a change of the team, or a volume changed: again
        raise errors.Unavailable(f"team '{rec.team_id}' is changing too fast; try again")

    async def _finish_create(self, rec: P.Sandbox, rev: int, node: cubelet_pb2.NodeStatus,
                             steps: dict[str, float], deadline: float) -> P.Sandbox:
        run = cubelet_pb2.RunSandboxRequest(
            sandbox_id=rec.sandbox_id, template_id=rec.template_id, env_vars=dict(rec.env_vars),
            envd_access_token=rec.envd_access_token, metadata=dict(rec.metadata), volumes=rec.volume_mounts)
        if rec.HasField("network"):
            run.network.CopyFrom(rec.network)
        t0 = time.monotonic()
        budget = min(self.settings.node_op_timeout_s * 0.8, deadline - t0)
        try:
            status = await self.nodes.call(node, "RunSandbox", run, timeout=max(1.0, budget))
        except (errors.Exhausted, errors.NotFound, errors.NodeUnreachable) as e:
            raise _NodeRefused(e) from e
        t1 = time.monotonic()
        steps["node"] = t1 - t0

        done = _copy(rec)
        now = time.time()
        done.phase = P.SANDBOX_PHASE_RUNNING
        done.ClearField("phase_deadline")
        done.ClearField("transition_owner")
        done.started_at.CopyFrom(ts(now))
        done.end_at.CopyFrom(ts(now + rec.timeout_s))
        done.updated_at.CopyFrom(ts(now))
        done.host_address = status.host_address
        done.proxy_source_address = status.proxy_source_address
        if status.envd_version:
            done.envd_version = status.envd_version
        for f in ("vcpus", "memory_mb", "disk_size_mb"):
            if getattr(status, f):
                setattr(done, f, getattr(status, f))
        try:
            rev2 = await self.store.update_sandbox(done, rev, route=build_route(done, node))
        except Conflict as e:
            raise errors.NotFound(f"sandbox '{rec.sandbox_id}' was killed while it was being created") from e
        t2 = time.monotonic()
        steps["update"] = t2 - t1
        await wait_applied(self.store, rev2, self.settings.route_ack_timeout_s, rec.sandbox_id)
        steps["route"] = time.monotonic() - t2
        self.templates.note_spawn(rec.template_id)
        log.info("created", extra=_extra(done, node_id=node.node_id, boot_ms=int(steps["node"] * 1000),
                                         from_warm_pool=status.from_warm_pool,
                                         steps_ms={k: round(v * 1000, 1) for k, v in steps.items()}))
        return done

    async def _undo_create(self, rec: P.Sandbox, rev: int) -> None:
        try:
            killed = await self._kill_on_node(rec)
            cur = await self.store.get_sandbox(rec.sandbox_id)
            if cur is None:
                return
            if not killed:
                # Leave a KILLING record (route deleted) for the reconciler to retry the kill.
                k = _copy(cur.value)
                k.phase = P.SANDBOX_PHASE_KILLING
                self._deadline(k, 0)
                await self.store.update_sandbox(k, cur.mod_revision, delete_route=True)
                return
            await self.store.delete_sandbox(rec.sandbox_id, cur.mod_revision)
            log.info("create undone", extra=_extra(rec))
        except (EtcdUnavailable, Conflict) as e:
            log.warning("create undo incomplete; the reconciler finishes it", extra=_extra(rec, error=str(e)))
        except Exception:
            log.exception("create undo failed", extra=_extra(rec))

    # ---- read ---------------------------------------------------------------------------------

    async def get(self, sid: str, caller: Caller) -> P.Sandbox:
        return (await self._record(sid, caller, VISIBLE_PHASES + LOST_PHASES)).value

    async def list(self, req: P.ListSandboxRecordsRequest, caller: Caller) -> P.ListSandboxRecordsResponse:
        want = set(req.phases) or {P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_PAUSED, P.SANDBOX_PHASE_LOST}
        phases: set[P.SandboxPhase] = set()
        if P.SANDBOX_PHASE_RUNNING in want:
            phases.update(RUNNING_PHASES)
        if P.SANDBOX_PHASE_PAUSED in want:
            phases.update(PAUSED_PHASES)
        if P.SANDBOX_PHASE_LOST in want:
            phases.update(LOST_PHASES)
        limit = req.limit or 100
        if limit > 1000:
            raise errors.InvalidArgument("limit must be at most 1000")
        template_ids = None
        if req.template:
            try:
                tpl, _ = await self.templates.resolve(req.template, caller)
                template_ids = {tpl.template_id, req.template}
            except errors.NotFound:
                template_ids = {req.template}
        after_ns = req.started_after.ToNanoseconds() if req.HasField("started_after") else None
        out = []
        for v in await self.store.list_sandboxes():
            r = v.value
            if r.phase not in phases or not caller.sees(owner(r.team_id)):
                continue
            if any(r.metadata.get(k) != val for k, val in req.metadata.items()):
                continue
            if template_ids is not None and r.template_id not in template_ids and r.alias not in template_ids:
                continue
            if after_ns is not None and r.started_at.ToNanoseconds() <= after_ns:
                continue
            out.append(r)
        out.sort(key=_sort_key, reverse=not req.ascending)
        if req.page_token:
            cursor = decode_page_token(req.page_token)
            out = [r for r in out if (_sort_key(r) > cursor if req.ascending else _sort_key(r) < cursor)]
        page = out[:limit]
        resp = P.ListSandboxRecordsResponse(sandboxes=page)
        if len(out) > limit:
            resp.next_page_token = encode_page_token(page[-1])
        return resp

    # ---- kill ---------------------------------------------------------------------------------

    async def kill(self, sid: str, caller: Caller, reason: str = "request") -> bool:
        phases = VISIBLE_PHASES + LOST_PHASES + (P.SANDBOX_PHASE_CREATING,)
        for _ in range(CAS_RETRIES):
            v = await self._record(sid, caller, phases)
            rec = _copy(v.value)
            rec.phase = P.SANDBOX_PHASE_KILLING
            self._deadline(rec, self.settings.node_rpc_timeout_s * 2)
            try:
                # The route goes with the phase change: traffic stops before the VM does.
                rev = await self.store.update_sandbox(rec, v.mod_revision, delete_route=True)
                break
            except Conflict:
                continue
        else:
            raise errors.Unavailable(f"sandbox '{sid}' is changing too fast; try again")
        if not await self._kill_on_node(rec):
            # Answered as killed: it is unreachable and unlisted; the reconciler retries the node.
            log.info("kill deferred to reconciler", extra=_extra(rec, reason=reason))
            return True
        try:
            await self.store.delete_sandbox(sid, rev)
        except Conflict:
            pass
        log.info("killed", extra=_extra(rec, reason=reason, node_id=rec.node_id))
        return True

    # ---- timeouts -----------------------------------------------------------------------------

    async def set_timeout(self, sid: str, caller: Caller, timeout_s: int, extend_only: bool = False) -> P.Sandbox:
        self._check_timeout(timeout_s)
        for _ in range(CAS_RETRIES):
            v = await self._record(sid, caller)
            rec = _copy(v.value)
            end = time.time() + timeout_s
            if extend_only and end <= secs(rec.end_at):
                return rec
            rec.end_at.CopyFrom(ts(end))
            rec.timeout_s = max(timeout_s, 1)
            rec.updated_at.CopyFrom(ts())
            try:
                await self.store.update_sandbox(rec, v.mod_revision)
                log.info("timeout set", extra=_extra(rec, timeout_s=timeout_s, extend_only=extend_only))
                return rec
            except Conflict:
                continue
        raise errors.Unavailable(f"sandbox '{sid}' is changing too fast; try again")

    # ---- pause --------------------------------------------------------------------------------

    async def pause(self, sid: str, caller: Caller, reason: str = "request", filesystem_only: bool = False,
                    require_healthy_guest: bool = False) -> P.Sandbox:
        """Pause with its memory, or (``filesystem_only``) its disk alone: then its resume cold-boots
        it and traffic never resumes it (its route has no auto-resume)."""
        rec, rev = await self._admit_pause(sid, caller)
        node = await self._node(rec.node_id)
        if node is None:
            await self._settle(rec, rev, P.SANDBOX_PHASE_RUNNING, None)
            raise errors.Unavailable(f"node '{rec.node_id}' of sandbox '{sid}' is not registered")
        try:
            status = await self.nodes.call(node, "PauseSandbox", cubelet_pb2.PauseSandboxRequest(
                sandbox_id=sid, filesystem_only=filesystem_only, require_healthy_guest=require_healthy_guest),
                timeout=self.settings.node_op_timeout_s * 0.8)
            rec.paused_filesystem_only = status.filesystem_only
        except errors.FailedPrecondition:
            # The node has it paused already (an earlier pause whose answer was lost): settle as
            # paused, as that pause left it.
            try:
                status = await self.nodes.call(node, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
                rec.paused_filesystem_only = status.filesystem_only
            except errors.MasterError:
                rec.paused_filesystem_only = filesystem_only
        except errors.NotFound as e:
            await self._forget(rec, rev, "vm gone at pause")
            raise errors.NotFound(f"sandbox '{sid}' not found") from e
        except errors.MasterError:
            await self._settle(rec, rev, P.SANDBOX_PHASE_RUNNING, node)
            raise
        out = await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, node)
        if out is None:
            raise errors.NotFound(f"sandbox '{sid}' was killed while it was being paused")
        # Traffic after the pause answers must meet the paused route (its 502, or auto-resume),
        # not the old one to a VM that is gone.
        await wait_applied(self.store, out[1], self.settings.route_ack_timeout_s, sid)
        log.info("paused", extra=_extra(rec, reason=reason))
        return out[0]

    async def _admit_pause(self, sid: str, caller: Caller) -> tuple[P.Sandbox, int]:
        """Write PAUSING, admitted against the team's paused quota. Returns the record written and
        its revision."""
        for _ in range(CAS_RETRIES):
            v = await self._record(sid, caller)
            if v.value.phase in PAUSED_PHASES:
                raise errors.FailedPrecondition(f"sandbox '{sid}' is already paused")
            rec = _copy(v.value)
            rec.phase = P.SANDBOX_PHASE_PAUSING
            self._deadline(rec, self.settings.node_op_timeout_s)
            async with self.quotas.admission(rec, PAUSED_ONE) as guard:
                try:
                    return rec, await self.store.update_sandbox(rec, v.mod_revision, guard=guard)
                except Conflict:
                    continue  # the record or the team changed meanwhile: look again
        raise errors.FailedPrecondition(f"sandbox '{sid}' changed state meanwhile; try again")

    async def _settle(self, rec: P.Sandbox, rev: int, phase: P.SandboxPhase, node,
                      status: cubelet_pb2.SandboxStatus | None = None):
        """Write the final phase of a pause/resume (and the route that goes with it). Returns the
        record, or None when it was killed meanwhile (then the VM is killed again)."""
        done = _copy(rec)
        done.phase = phase
        done.ClearField("phase_deadline")
        done.ClearField("transition_owner")
        done.ClearField("resume_node_id")  # a resume, wherever it went, is over
        done.updated_at.CopyFrom(ts())
        if status is not None:
            done.host_address = status.host_address or done.host_address
            done.proxy_source_address = status.proxy_source_address or done.proxy_source_address
        if phase == P.SANDBOX_PHASE_PAUSED:
            done.paused_at.CopyFrom(ts())
        else:
            done.ClearField("paused_filesystem_only")
        route = build_route(done, node, paused=phase == P.SANDBOX_PHASE_PAUSED) if node is not None else None
        try:
            new_rev = await self.store.update_sandbox(done, rev, route=route)
        except Conflict:
            await self._kill_on_node(rec)
            return None
        return done, new_rev

    async def _forget(self, rec: P.Sandbox, rev: int, why: str) -> None:
        try:
            await self.store.delete_sandbox(rec.sandbox_id, rev)
            log.info("record removed", extra=_extra(rec, reason=why))
        except Conflict:
            pass

    # ---- connect / resume ---------------------------------------------------------------------

    async def connect(self, sid: str, caller: Caller, timeout_s: int, node_id: str = "",
                      reboot: bool = False) -> tuple[P.Sandbox, bool]:
        """Resume the sandbox if it is paused (on ``node_id`` when an operator names one; cold-booted
        on its disk, its saved memory ignored, with ``reboot``), else extend its end time."""
        timeout_s = timeout_s or self.settings.default_timeout_s
        self._check_timeout(timeout_s)
        if node_id and caller != OPERATOR:
            raise errors.PermissionDenied("only an operator may name the node a sandbox resumes on")
        deadline = time.monotonic() + self.settings.node_op_timeout_s
        while True:
            v = await self._record(sid, caller)
            phase = v.value.phase
            if phase == P.SANDBOX_PHASE_RUNNING:
                return await self.set_timeout(sid, caller, timeout_s, extend_only=True), False
            if phase == P.SANDBOX_PHASE_PAUSED:
                resumed = await self._resume(v, timeout_s, node_id, reboot)
                if resumed is not None:
                    return resumed, True
                continue
            # PAUSING or RESUMING by another call: wait for it to settle.
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"sandbox '{sid}' is still {phase_name(phase)}; try again")
            await asyncio.sleep(0.1)

    async def _resume(self, v: Versioned[P.Sandbox], timeout_s: int, want: str = "",
                      reboot: bool = False) -> P.Sandbox | None:
        """Resume a paused sandbox, admitted against its team's quota: where its state is, or
        elsewhere (``want``: the node an operator named; see the module docstring). None when another
        caller changed it, or another master admitted a change of its team, first (look again)."""
        sid = v.value.sandbox_id
        holder, draining = await asyncio.gather(self._node(v.value.node_id), self.store.draining_nodes())
        # Its state is on its node's disk: with the node away (lost), nothing to write or admit.
        if holder is None:
            raise errors.Unavailable(_node_away(v.value))
        pinned = bool(v.value.volume_mounts)  # its volumes are on its node: it resumes there or not at all
        if pinned and want and want != holder.node_id:
            raise errors.FailedPrecondition(f"sandbox '{sid}' mounts volumes, which stay on their node: it resumes "
                                            "only there")
        move = not pinned and (holder.node_id in draining or bool(want and want != holder.node_id))
        rec = _copy(v.value)
        rec.phase = P.SANDBOX_PHASE_RESUMING
        rec.timeout_s = timeout_s
        reboot = reboot or rec.paused_filesystem_only
        self._deadline(rec, self.settings.node_op_timeout_s)
        try:
            async with self.quotas.admission(rec, running_one(rec)) as guard:
                rev = await self.store.update_sandbox(rec, v.mod_revision, guard=guard)
        except Conflict:
            return None
        node = await self._node(rec.node_id)
        if node is None:  # it went just now
            await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, None)
            raise errors.Unavailable(_node_away(rec))
        holder = node
        status = None if move else await self._resume_on(rec, rev, node, reboot)
        if status is None and pinned:
            await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, holder)
            raise errors.Exhausted(f"the node that holds sandbox '{sid}' and its volumes has no room for it now; "
                                   "try again later")
        if status is None:  # draining, full, or asked elsewhere: the state goes to another node
            moved = await self._move(rec, rev, holder, want, reboot,
                                     stay_if_alone=not want and holder.node_id in draining)
            if moved is None:  # only draining, and no other node takes it: better there than nowhere
                status = await self._resume_on(rec, rev, holder, reboot)
                if status is None:
                    await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, holder)
                    raise errors.Exhausted("no node has room for another sandbox")
            else:
                node, status, rec, rev = moved
        now = time.time()
        rec.node_id = node.node_id
        rec.started_at.CopyFrom(ts(now))
        rec.end_at.CopyFrom(ts(now + timeout_s))
        out = await self._settle(rec, rev, P.SANDBOX_PHASE_RUNNING, node, status)
        if out is None:
            raise errors.NotFound(f"sandbox '{sid}' was killed while it was being resumed")
        done, new_rev = out
        if holder.node_id != node.node_id and not await self._drop_on(holder, sid):
            log.warning("moved; the old copy is left to the reconciler", extra=_extra(done, node_id=holder.node_id))
        await wait_applied(self.store, new_rev, self.settings.route_ack_timeout_s, sid)
        log.info("resumed", extra=_extra(done, node_id=node.node_id, moved_from=holder.node_id
                                         if holder.node_id != node.node_id else ""))
        return done

    def _resume_request(self, rec: P.Sandbox, reboot: bool) -> cubelet_pb2.ResumeSandboxRequest:
        req = cubelet_pb2.ResumeSandboxRequest(sandbox_id=rec.sandbox_id, env_vars=dict(rec.env_vars),
                                               envd_access_token=rec.envd_access_token, reboot=reboot)
        if rec.HasField("network"):
            req.network.CopyFrom(rec.network)
        return req

    async def _resume_on(self, rec: P.Sandbox, rev: int, node: cubelet_pb2.NodeStatus,
                         reboot: bool) -> cubelet_pb2.SandboxStatus | None:
        """Resume on the node that holds the state. None when it is full (the caller moves it)."""
        sid = rec.sandbox_id
        try:
            return await self.nodes.call(node, "ResumeSandbox", self._resume_request(rec, reboot),
                                         timeout=self.settings.node_op_timeout_s * 0.8)
        except errors.FailedPrecondition:
            # Already running on the node (an earlier resume whose answer was lost).
            return await self.nodes.call(node, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
        except errors.Exhausted as e:
            log.info("holder full; moving", extra=_extra(rec, node_id=node.node_id, error=str(e)))
            return None
        except errors.NotFound as e:
            await self._forget(rec, rev, "saved state gone at resume")
            raise errors.NotFound(f"sandbox '{sid}' not found") from e
        except errors.MasterError:
            await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, node)
            raise

    async def _move(self, rec: P.Sandbox, rev: int, holder: cubelet_pb2.NodeStatus, want: str, reboot: bool,
                    stay_if_alone: bool = False
                    ) -> tuple[cubelet_pb2.NodeStatus, cubelet_pb2.SandboxStatus, P.Sandbox, int] | None:
        """Resume ``rec`` (RESUMING at ``rev``, its state on ``holder``) on another node: the one
        named (``want``) or the best that takes it, moving on from one that refuses within the
        resume's deadline. Returns that node, its status, and the record with its revision; None
        when ``stay_if_alone`` and no other node could take it (nothing was written). On failure
        the record is settled PAUSED on ``holder`` and the error raised."""
        sid = rec.sandbox_id
        nodes, records, draining = await asyncio.gather(self.store.list_nodes(), self.store.list_sandboxes(),
                                                        self.store.draining_nodes())
        load = load_by_node([x.value for x in records])
        deadline = time.monotonic() + self.settings.node_op_timeout_s
        tried = {holder.node_id}
        last: errors.MasterError | None = None
        while len(tried) <= self.settings.placement_attempts and time.monotonic() < deadline:
            try:
                node = self._move_target(nodes, rec, load, tried, draining, want)
            except errors.MasterError as e:
                if stay_if_alone and last is None:
                    return None
                last = last or e
                break
            tried.add(node.node_id)
            # Named in the record before it pulls anything: the reconciler takes its copy for this
            # sandbox's, not an orphan, and settles by it if this master dies.
            target = _copy(rec)
            target.resume_node_id = node.node_id
            self._deadline(target, self.settings.node_op_timeout_s)
            try:
                rev = await self.store.update_sandbox(target, rev)
            except Conflict as e:  # killed meanwhile: the kill dropped the holder's copy
                raise errors.NotFound(f"sandbox '{sid}' was killed while it was being resumed") from e
            rec = target
            req = self._resume_request(rec, reboot)
            req.source.CopyFrom(cubelet_pb2.PausedSource(node_id=holder.node_id, address=holder.address))
            budget = max(1.0, min(self.settings.node_op_timeout_s * 0.8, deadline - time.monotonic()))
            log.info("moving", extra=_extra(rec, node_id=node.node_id, moved_from=holder.node_id))
            try:
                return node, await self.nodes.call(node, "ResumeSandbox", req, timeout=budget), rec, rev
            except (errors.FailedPrecondition, errors.Exhausted, errors.NotFound, errors.NodeUnreachable) as e:
                # Another build of its template there, full, no such template anywhere, or away:
                # the next node may do. (FAILED_PRECONDITION is also what an earlier attempt that
                # resumed it there answers.)
                if isinstance(e, errors.FailedPrecondition) and (st := await self._running_on(node, sid)):
                    return node, st, rec, rev
                last = e
                log.warning("node refused the move", extra=_extra(rec, node_id=node.node_id, error=str(e)))
                if isinstance(e, errors.NotFound) and await self._gone_from(holder, sid):
                    await self._forget(rec, rev, "saved state gone at resume")
                    raise errors.NotFound(f"sandbox '{sid}' not found") from e
                await self._drop_on(node, sid)
                if want:
                    break
            except errors.MasterError as e:
                last = e
                await self._drop_on(node, sid)
                break
        await self._settle(rec, rev, P.SANDBOX_PHASE_PAUSED, holder)
        assert last is not None
        raise last

    def _move_target(self, nodes: builtins.list[cubelet_pb2.NodeStatus], rec: P.Sandbox, load,
                     tried: set[str], draining: frozenset[str], want: str) -> cubelet_pb2.NodeStatus:
        """The node a move goes to next: the one named (registered, not the holder), else the best
        ``rank`` offers (it holds or prefetches the template; the holder left out)."""
        if want:
            named = next((n for n in nodes if n.node_id == want and n.address), None)
            if named is None or want in tried:
                raise errors.FailedPrecondition(f"node '{want}' is not registered, or holds the sandbox already")
            return named
        return rank(nodes, rec.template_id, rec.memory_mb or 512, load, exclude=tried,
                    overcommit_ratio=self.settings.memory_overcommit_ratio, draining=draining)[0].node

    async def _running_on(self, node: cubelet_pb2.NodeStatus, sid: str) -> cubelet_pb2.SandboxStatus | None:
        try:
            st = await self.nodes.call(node, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
        except errors.MasterError:
            return None
        return st if st.state == cubelet_pb2.SANDBOX_STATE_RUNNING else None

    async def _gone_from(self, holder: cubelet_pb2.NodeStatus, sid: str) -> bool:
        """The holder's own word that it has no such sandbox (not merely that it cannot be asked)."""
        try:
            await self.nodes.call(holder, "GetSandbox", cubelet_pb2.SandboxRef(sandbox_id=sid))
        except errors.NotFound:
            return True
        except errors.MasterError:
            return False
        return False

    # ---- metrics, logs, network ---------------------------------------------------------------

    async def metrics(self, req: P.GetSandboxMetricsRequest, caller: Caller) -> cubelet_pb2.SandboxMetricsResponse:
        rec = (await self._record(req.sandbox_id, caller)).value
        if rec.phase != P.SANDBOX_PHASE_RUNNING:
            return cubelet_pb2.SandboxMetricsResponse()
        node = await self._node(rec.node_id)
        if node is None:
            return cubelet_pb2.SandboxMetricsResponse()
        resp = await self.nodes.call(node, "SandboxMetrics", cubelet_pb2.SandboxRef(sandbox_id=rec.sandbox_id))
        lo = req.start.ToNanoseconds() if req.HasField("start") else None
        hi = req.end.ToNanoseconds() if req.HasField("end") else None
        keep = [m for m in resp.metrics
                if (lo is None or m.timestamp.ToNanoseconds() >= lo)
                and (hi is None or m.timestamp.ToNanoseconds() <= hi)]
        return cubelet_pb2.SandboxMetricsResponse(metrics=keep)

    async def logs(self, req: cubelet_pb2.SandboxLogsRequest, caller: Caller) -> cubelet_pb2.SandboxLogsResponse:
        rec = (await self._record(req.sandbox_id, caller)).value
        node = await self._node(rec.node_id)
        if node is None:
            return cubelet_pb2.SandboxLogsResponse()
        try:
            return await self.nodes.call(node, "SandboxLogs", req)
        except errors.NotFound:
            return cubelet_pb2.SandboxLogsResponse()

    async def update_network(self, sid: str, caller: Caller, policy: network_pb2.NetworkPolicy) -> P.Sandbox:
        for _ in range(CAS_RETRIES):
            v = await self._record(sid, caller)
            rec = _copy(v.value)
            # Whether its ports need its traffic token is fixed at create (the token is minted then),
            # and so are the Host its ports see and which of them speak TLS (its route carries
            # both): an update keeps all three.
            policy.require_traffic_token = rec.network.require_traffic_token
            policy.mask_request_host = rec.network.mask_request_host
            policy.https_ports[:] = rec.network.https_ports
            if rec.phase == P.SANDBOX_PHASE_RUNNING:
                node = await self._node(rec.node_id)
                if node is None:
                    raise errors.Unavailable(f"node '{rec.node_id}' is not registered")
                await self.nodes.call(node, "UpdateNetwork",
                                      cubelet_pb2.UpdateNetworkRequest(sandbox_id=sid, network=policy))
            # A paused sandbox gets the policy with its resume.
            rec.network.CopyFrom(policy)
            rec.updated_at.CopyFrom(ts())
            try:
                await self.store.update_sandbox(rec, v.mod_revision)
                return rec
            except Conflict:
                continue
        raise errors.Unavailable(f"sandbox '{sid}' is changing too fast; try again")

    async def using_template(self, template_id: str) -> builtins.list[str]:
        return [s.sandbox_id for s in await self.users_of(template_id)]

    async def users_of(self, template_id: str) -> builtins.list[P.Sandbox]:
        """The sandboxes (running, paused, or on their way) that use a template, oldest first."""
        return sorted((v.value for v in await self.store.list_sandboxes()
                       if v.value.template_id == template_id and v.value.phase != P.SANDBOX_PHASE_KILLING),
                      key=_sort_key)
