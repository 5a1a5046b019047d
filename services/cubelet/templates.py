"""Templates on this node: build (image → boot → probe → snapshot), cache, list, delete.

A template lives in `<templates_dir>/<template_id>/`:
  info.json                  the TemplateInfo (proto JSON), the build key and the current build
  builds/<key>/image.ext4    the template root filesystem (read-only in every sandbox)
  builds/<key>/snapshot/     the vmm_core template snapshot every sandbox is cloned from
A build never moves once its snapshot exists (running clones map its files); switching to a new
build is the atomic replacement of info.json, and old builds are removed once nothing uses them.
A build is keyed by everything it depends on (guest artifacts, image, machine shape, guest config);
building again with the same key is a no-op, so `make up` can ask for the default template every
time.
"""
from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from cube_common.envd import ENVD_PORT, ENVD_VERSION, INTERPRETER_PORT
from cube_common.mtls import Role
from cube_common.teams import BUILD_ORIGIN_METADATA, BUILD_ORIGIN_OPERATOR
from sdk.gen.cube.v1 import cubelet_pb2 as pb, network_pb2
from vmm_core import (
    GuestArtifacts,
    GuestConfig,
    GuestService,
    Machine,
    ServiceRoot,
    Snapshot,
    VmmError,
    VmmSettings,
    boot,
    checkpoint,
    disk_checkpoint,
    ensure_guest_artifacts,
    ext4_from_dir,
    input_key,
    snapshot,
    writable_layer,
)
from vmm_core.disks import cow_overlay

from . import build_file_fetch, build_steps, gc, guest_agent, oci
from .build_steps import StepFailed
from .guest_client import GuestAgentError, GuestEndpoint, wait_healthy, wait_http, wait_tcp
from .references import sandbox_records, template_records
from .settings import CubeletSettings
from .vs_client import VsClient, vm_attachment

log = logging.getLogger("cubelet.templates")
# Part of every build key: bump it when the build procedure itself changes (not its inputs).
# 3: guests boot with transparent_hugepage=never (vmm_core.machine.BASE_CMDLINE), which a snapshot
# keeps: templates snapshotted before it are rebuilt.
# 4: a definition's steps see the image's (or base template's) ENV, and the template records the
# last USER and WORKDIR as its sandboxes' defaults: cached step layers made before are not reused.
# 5: machines have no PIT and guests boot with fewer timers (vmm_core.machine.BASE_CMDLINE): the
# idle wake-ups of templates snapshotted before stay in their clones until they are rebuilt.
BUILD_PROCEDURE = 5
Phase = pb.TemplateBuildPhase
_MAX_ID = (1 << 32) - 2
def operator_build(metadata, peer_role: Role | None) -> bool:
    """Whether a BuildTemplate call is an operator's build (see `TemplateStore.build`): the caller is
    an operator itself (its certificate's role, e.g. deploy's bootstrap), or the master relays an
    operator's request. A call from anyone else, or without the marker, is a team's build."""
    if peer_role is Role.OPERATOR:
        return True
    marked = any(str(k).lower() == BUILD_ORIGIN_METADATA and
                 (v.decode() if isinstance(v, bytes) else v) == BUILD_ORIGIN_OPERATOR
                 for k, v in metadata or ())
    # Plaintext (no peer): only the node's own processes reach the cubelet (loopback).
    return marked and peer_role in (Role.MASTER, None)


class TemplateError(Exception):
    pass


class TemplateExists(TemplateError):
    pass


class TemplateInUse(TemplateError):
    """Other templates (snapshots of its sandboxes) read through it."""


def valid_template_id(template_id: str) -> bool:
    """1-64 letters, digits, '-' or '_': a template id is a directory name under templates_dir."""
    return bool(template_id) and len(template_id) <= 64 and all(c.isalnum() or c in "-_" for c in template_id)


def check_template_id(template_id: str) -> None:
    """TemplateError, saying what is allowed, for an id ``valid_template_id`` refuses."""
    if not valid_template_id(template_id):
        raise TemplateError(f"invalid template id {template_id!r}: use 1-64 letters, digits, '-' or '_'")


@dataclass(frozen=True)
class Template:
    template_id: str
    dir: Path
    info: pb.TemplateInfo
    build_key: str
    env: dict[str, str] = field(default_factory=dict)
    # A snapshot of a sandbox: the access token its guest agent holds (its source's), which the
    # agent asks for before it takes the identity of a sandbox created from it.
    guest_token: str = ""

    @property
    def build_dir(self) -> Path:
        return self.dir / "builds" / self.build_key

    @property
    def image(self) -> Path:
        return self.build_dir / "image.ext4"

    @property
    def snapshot_dir(self) -> Path:
        return self.build_dir / "snapshot"

    def load_snapshot(self) -> Snapshot:
        return Snapshot.load(self.snapshot_dir)

    @property
    def ready_ports(self) -> tuple[int, ...]:
        """The guest ports that answer /health once a sandbox of it is up. Only the default image
        runs the agent's code interpreter; an image template may not."""
        return (ENVD_PORT, INTERPRETER_PORT) if self.info.source == "default" else (ENVD_PORT,)


@dataclass(frozen=True)
class PreparedImage:
    """What a source (default image, OCI image) hands to the common build pipeline."""

    image: Path
    guest_config: GuestConfig
    probe_ports: tuple[int, ...]
    source: str
    fingerprint: str = ""  # identifies the image content (e.g. the manifest digest), for the build key
    env: dict[str, str] = field(default_factory=dict)  # the image's ENV: every sandbox process gets it


def _event(phase: Phase, message: str = "", **kw) -> pb.TemplateBuildEvent:
    ts = Timestamp()
    ts.GetCurrentTime()
    return pb.TemplateBuildEvent(phase=phase, message=message, timestamp=ts, **kw)


async def _probe_or_crash(machine, probe, crash_restarts: int = 3) -> None:
    """Run the probe, but give up early when the template's own service keeps exiting: the guest
    init restarts it, and its status (over the control channel) says how often."""

    async def watch_service() -> None:
        while True:
            await asyncio.sleep(2.0)
            status = await machine.control.call("status", timeout=10)
            for svc in status.get("services", []):
                if svc["name"] == "app" and svc["restarts"] >= crash_restarts:
                    raise TemplateError(f"the image's command keeps exiting ({svc['restarts']} restarts); "
                                        "its output is in the console tail below")

    watcher = asyncio.create_task(watch_service())
    probing = asyncio.ensure_future(probe)
    try:
        done, _ = await asyncio.wait({watcher, probing}, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()  # raises the failure, if that is what finished first
    finally:
        for t in (watcher, probing):
            t.cancel()


def _user_db_lines(db: bytes | None) -> list[list[str]]:
    return [line.split(":") for line in (db or b"").decode("utf-8", "replace").splitlines()]


def _resolve_user(passwd: bytes | None, group: bytes | None, user: str) -> tuple[int, int]:
    """An image's `User` ("name", "uid", "name:group", "uid:gid") as numeric ids, looked up in the
    image's own /etc/passwd and /etc/group (the host's users mean nothing here). The files' content
    comes from the layers' tar entries (oci.ImageTree.user_db): never from paths in the unpacked
    tree, where a symlink could name /dev/zero or the host's /etc/shadow."""
    if not user:
        return 0, 0
    name, _, group_name = user.partition(":")
    users, groups = _user_db_lines(passwd), _user_db_lines(group)

    def lookup(lines: list[list[str]], key: str, field: int, key_field: int = 0) -> int | None:
        """Field `field` of the first line whose `key_field` is `key`, when it is a valid id."""
        for parts in lines:
            if len(parts) > max(field, key_field) and parts[key_field] == key:
                value = parts[field].strip()
                return int(value) if value.isdigit() and int(value) <= _MAX_ID else None
        return None

    def numeric(text: str, what: str) -> int:
        if not text.isdigit() or int(text) > _MAX_ID:
            raise TemplateError(f"the image's user {user!r}: {what} {text!r} is not a valid id")
        return int(text)

    if name.isdigit():
        uid = numeric(name, "uid")
        gid = lookup(users, name, 3, key_field=2) or 0
    else:
        if passwd is None:
            raise TemplateError(f"the image's user {name!r} cannot be resolved: the image has no /etc/passwd "
                                "(a regular file in a real /etc directory)")
        found = lookup(users, name, 2)
        if found is None:
            raise TemplateError(f"the image's user {name!r} is not in its /etc/passwd")
        uid = found
        gid = lookup(users, name, 3) or 0
    if group_name:
        if group_name.isdigit():
            gid = numeric(group_name, "gid")
        else:
            found = lookup(groups, group_name, 2)
            if found is None:
                raise TemplateError(f"the image's group {group_name!r} is not in its /etc/group")
            gid = found
    return uid, gid


def image_guest_config(config: oci.ImageConfig, tree: oci.ImageTree, req: pb.BuildTemplateRequest) -> GuestConfig:
    """The guest services of an image template: the agent, and the image's own command (if any),
    chrooted into the sandbox root with the image's env, user and working directory. A template
    definition (steps, start or ready command) runs its start command instead, as E2B does."""
    services = [guest_agent.agent_service(interpreter=False)]
    argv = [] if is_definition(req) else config.argv(list(req.cmd) or None, list(req.args) or None)
    if argv:
        uid, gid = _resolve_user(tree.user_db("passwd"), tree.user_db("group"), config.user)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **config.env_map(),
               **dict(req.env)}
        services.append(GuestService("app", tuple(argv), ServiceRoot.TEMPLATE, env=env,
                                     cwd=config.working_dir or "/", uid=uid, gid=gid))
    return GuestConfig(services=tuple(services))


async def _pumped(fn, label: str) -> AsyncIterator[pb.TemplateBuildEvent]:
    """Run ``fn(emit)`` and yield each line it emits as a RUNNING_STEPS event of step ``label``
    as it comes; ``fn``'s exception is raised after its last line."""
    lines: asyncio.Queue[pb.TemplateBuildEvent] = asyncio.Queue()

    async def emit(line: str, stderr: bool) -> None:
        lines.put_nowait(_event(Phase.RUNNING_STEPS, line, step=label, stderr=stderr))

    task = asyncio.ensure_future(fn(emit))
    try:
        while not task.done() or not lines.empty():
            if not lines.empty():
                yield lines.get_nowait()
                continue
            getter = asyncio.ensure_future(lines.get())
            finished, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                yield getter.result()
            else:
                getter.cancel()
        task.result()
    finally:
        if not task.done():
            task.cancel()


def is_definition(req: pb.BuildTemplateRequest) -> bool:
    """An E2B template definition (the SDK's `Template()` builder), not a plain image build."""
    return bool(req.steps or req.start_cmd or req.ready_cmd)


def _private_dir(path: Path) -> None:
    """`path` and the parents it needs, `path` itself 0700 (an image's tree is unpacked in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


class TemplateStore:
    """Owner of the templates on this node."""

    def __init__(self, settings: CubeletSettings, vmm: VmmSettings, vs: VsClient) -> None:
        self.settings = settings
        self.vmm = vmm
        self.vs = vs
        self._locks: dict[str, asyncio.Lock] = {}
        self._layer_cache: oci.LayerCache | None = None  # one per node: its pins protect every build
        # Builds are CPU- and memory-heavy (a VM each, image unpacking): a few at a time per node.
        self._builds = asyncio.Semaphore(settings.max_concurrent_builds)
        self._guest: GuestArtifacts | None = None
        self.on_change = lambda: None  # set by the node registration: templates changed
        settings.templates_dir.mkdir(parents=True, exist_ok=True)

    def changed(self) -> None:
        """Tell the node registration that the templates changed (a build or a pull finished)."""
        try:
            self.on_change()
        except Exception:  # a notification must never break a build
            log.exception("template change notification failed")

    def lock(self, template_id: str) -> asyncio.Lock:
        """The template's lock: a build holds it from start to end, a pull (pull.py) while it commits."""
        return self._locks.setdefault(template_id, asyncio.Lock())

    def write_info(self, template_id: str, info: pb.TemplateInfo, build_key: str, env: dict[str, str],
                   guest_token: str = "") -> None:
        """Make ``builds/<build_key>`` the template's current build: info.json replaced atomically, the
        one commit point of a build or a pull (everything it names must be in place before). It is
        the owner's alone (0600): a snapshot's names its guest's access token."""
        tdir = self.settings.templates_dir / template_id
        tmp = tdir / "info.json.tmp"
        body = {"info": json_format.MessageToDict(info), "build_key": build_key, "env": env}
        if guest_token:
            body["guest_token"] = guest_token
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(body, indent=1))
        os.replace(tmp, tdir / "info.json")

    async def guest(self) -> GuestArtifacts:
        if self._guest is None:
            self._guest = await asyncio.to_thread(ensure_guest_artifacts, self.vmm, guest_agent.cube_agent())
        return self._guest

    # ---- queries ---------------------------------------------------------------------------

    def get(self, template_id: str) -> Template | None:
        d = self.settings.templates_dir / template_id
        try:
            raw = json.loads((d / "info.json").read_text())
        except (OSError, ValueError):
            return None
        info = json_format.ParseDict(raw["info"], pb.TemplateInfo(), ignore_unknown_fields=True)
        return Template(template_id, d, info, raw.get("build_key", ""), dict(raw.get("env", {})),
                        str(raw.get("guest_token", "")))

    def list(self) -> list[Template]:
        out = []
        for d in sorted(self.settings.templates_dir.iterdir()) if self.settings.templates_dir.is_dir() else []:
            if not d.name.startswith("."):
                t = self.get(d.name)
                if t is not None:
                    out.append(t)
        return out

    def check_no_snapshots(self, template_id: str) -> None:
        """TemplateInUse while templates here are snapshots of sandboxes of ``template_id`` (they
        read through its files)."""
        snaps = [t.template_id for t in self.list() if t.info.base_template_id == template_id]
        if snaps:
            raise TemplateInUse(f"template {template_id} has {len(snaps)} snapshot(s) that depend on it: "
                                f"{', '.join(snaps[:5])}; delete them first")

    def delete(self, template_id: str) -> bool:
        """Remove a template. TemplateError while snapshots of its sandboxes exist here (they read
        through its files): those go first."""
        d = self.settings.templates_dir / template_id
        if not d.exists():
            return False
        self.check_no_snapshots(template_id)
        # Rename first so a half-deleted template never looks valid.
        trash = d.with_name(f".deleting-{template_id}-{os.getpid()}")
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.changed()
        return True

    # `list` in an annotation below this point names the method above: builtins.list.
    def prune(self, template_id: str) -> builtins.list[str]:
        """Remove builds of a template that are neither current nor used by a VM or a paused
        sandbox (their files are named in those machines' records)."""
        t = self.get(template_id)
        if t is None:
            return []
        builds = t.dir / "builds"
        if not builds.is_dir():
            return []
        # Snapshots of sandboxes made from an old build read through it: kept as long as they are.
        in_use = sandbox_records(self.settings, self.vmm) + template_records(self.settings, but=t.dir)
        removed = []
        for b in builds.iterdir():
            if b.name != t.build_key and not any(str(b) in ref for ref in in_use):
                shutil.rmtree(b, ignore_errors=True)
                removed.append(b.name)
        return removed

    # ---- snapshots of sandboxes ---------------------------------------------------------------

    async def snapshot_sandbox(self, template_id: str, machine: Machine, base: Template, *, sandbox_id: str,
                               guest_token: str, filesystem_only: bool = False) -> Template:
        """A new template from a running sandbox's machine (``vmm_core.checkpoint``; the machine
        runs on). Its disk and memory read through ``base``'s current build. ``filesystem_only``:
        its disk alone (``vmm_core.disk_checkpoint``), and its sandboxes boot on it, their agent
        with no token yet. TemplateError when the id is invalid or taken; nothing of it is left
        when it fails."""
        check_template_id(template_id)
        tdir = self.settings.templates_dir / template_id
        async with self.lock(template_id):
            if tdir.exists():
                raise TemplateExists(f"template {template_id} already exists")
            key = f"snapshot-{int(time.time())}"
            t0 = time.monotonic()
            try:
                _private_dir(tdir)
                dest = tdir / "builds" / key / "snapshot"
                if filesystem_only:
                    await disk_checkpoint(machine, dest)
                    guest_token = ""
                else:
                    # Its memory file is written after the answer: clones map the sealed memfd
                    # (those that copy the file, with no memory sharing, need it first).
                    await checkpoint(machine, dest, labels={"template_build": template_id},
                                     write_memory_later=not base.info.no_memory_sharing)
                info = pb.TemplateInfo()
                info.CopyFrom(base.info)
                info.template_id, info.base_template_id = template_id, base.template_id
                info.source_sandbox_id, info.filesystem_only = sandbox_id, filesystem_only
                info.created_at.GetCurrentTime()
                info.snapshot_bytes = _dir_bytes(tdir) + (
                    0 if filesystem_only or (dest / "memory").exists() else base.info.memory_mb << 20)
                info.phase_ms.clear()
                info.phase_ms["SNAPSHOTTING"] = int((time.monotonic() - t0) * 1000)
                self.write_info(template_id, info, key, dict(base.env), guest_token=guest_token)
            except BaseException:
                shutil.rmtree(tdir, ignore_errors=True)
                raise
        self.changed()
        t = self.get(template_id)
        assert t is not None, "written just above"
        return t

    # ---- build -----------------------------------------------------------------------------

    async def build(self, req: pb.BuildTemplateRequest, *,
                    operator: bool = False) -> AsyncIterator[pb.TemplateBuildEvent]:
        """Build (or find up to date) a template. `operator` (see `operator_build`): an operator's
        build may name local image paths (oci:, oci-archive:, docker-archive:) and pull from any
        registry address; a team's build (what the API asks for) only from registries whose
        addresses are public, or allowlisted by the `registry_allowlist` setting."""
        tid = req.template_id
        check_template_id(tid)
        async with self.lock(tid):
            if self._builds.locked():
                yield _event(Phase.TEMPLATE_BUILD_PHASE_UNSPECIFIED, "queued behind other builds on this node")
            async with self._builds:
                async for ev in self._build_locked(req, operator):
                    yield ev
                    if ev.phase in (Phase.READY, Phase.FAILED):
                        self.changed()

    async def _build_locked(self, req: pb.BuildTemplateRequest,
                            operator: bool) -> AsyncIterator[pb.TemplateBuildEvent]:
        tid = req.template_id
        source = req.WhichOneof("source")
        base: Template | None = None
        if source == "from_template":
            base = self.get(req.from_template.template_id)
            if base is None or base.info.base_template_id or base.info.filesystem_only:
                yield _event(Phase.FAILED, step="base", error=f"template '{req.from_template.template_id}' is not "
                             "a built template on this node (snapshots cannot be built on)")
                return
        vcpus = req.vcpus or (base.info.vcpus if base else 1)
        # The default image runs Python kernels with numpy/pandas loaded; an image needs less.
        memory_mb = req.memory_mb or (base.info.memory_mb if base else
                                      1024 if source == "default_image" else 512)
        rw_mb = req.writable_layer_mb or (base.info.writable_layer_mb if base else 1024)
        definition = is_definition(req)
        if definition:
            try:
                build_steps.check_steps(req.steps)
            except ValueError as e:
                yield _event(Phase.FAILED, error=str(e))
                return
        phase_ms: dict[str, int] = {}
        t_phase = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal t_phase
            now = time.monotonic()
            phase_ms[phase] = phase_ms.get(phase, 0) + int((now - t_phase) * 1000)
            t_phase = now

        tdir = self.settings.templates_dir / tid
        staging = tdir / f".staging-{os.getpid()}-{int(time.time() * 1000)}"
        try:
            guest = await self.guest()
            if source == "default_image":
                yield _event(Phase.BUILDING_IMAGE, "building the default code-interpreter image", step="base")
                prepared = await self._prepare_default()
            elif source == "oci_image":
                from_oci: PreparedImage | None = None
                async for item in self._prepare_oci(req, staging, lap, operator=operator):
                    if isinstance(item, PreparedImage):
                        from_oci = item
                    else:
                        item.step = "base"
                        yield item
                assert from_oci is not None  # _prepare_oci ends with it or raises
                prepared = from_oci
            elif base is not None:
                prepared = PreparedImage(base.image, GuestConfig(), base.ready_ports, base.info.source,
                                         fingerprint=f"{base.template_id}/{base.build_key}", env=dict(base.env))
            else:
                yield _event(Phase.FAILED, error="the build request names no image source")
                return
            lap("BUILDING_IMAGE")
        except (oci.OciError, OSError, TemplateError, VmmError) as e:
            self._discard_staging(tdir, staging)
            yield _event(Phase.FAILED, step="base", error=str(e))
            return
        except BaseException:  # cancelled (the caller went away) or a bug: leave nothing behind
            self._discard_staging(tdir, staging)
            raise
        fixed = input_key(BUILD_PROCEDURE, guest.key, prepared.fingerprint or
                          (prepared.image.stat().st_size, prepared.image.stat().st_mtime_ns),
                          prepared.guest_config.to_json(), vcpus, memory_mb, rw_mb)
        key = input_key(fixed, list(req.expose_ports), req.probe_port, req.probe_path, req.no_memory_sharing,
                        [[s.type, list(s.args), s.files_hash] for s in req.steps], req.start_cmd, req.ready_cmd,
                        req.steps_internet) if definition else \
            input_key(BUILD_PROCEDURE, guest.key, prepared.fingerprint or
                      (prepared.image.stat().st_size, prepared.image.stat().st_mtime_ns),
                      prepared.guest_config.to_json(), vcpus, memory_mb, rw_mb, list(req.expose_ports),
                      req.probe_port, req.probe_path, req.no_memory_sharing)
        existing = self.get(tid)
        forced = any(s.force for s in req.steps)
        if existing is not None and existing.build_key == key and existing.snapshot_dir.is_dir() and not forced:
            shutil.rmtree(staging, ignore_errors=True)
            yield _event(Phase.READY, "template is up to date", template=existing.info)
            return

        work = tdir / "builds" / key
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        done = False
        vs_id = f"build{tid}".replace("-", "").replace("_", "")[:40]
        machine = None
        env = dict(prepared.env)
        state: build_steps.StepState | None = None
        cache: build_steps.LayerCache | None = None
        keep: set[str] = set()
        try:
            os.link(prepared.image, work / "image.ext4")
            shutil.rmtree(staging, ignore_errors=True)
            if definition:
                cache = build_steps.LayerCache(self.settings.step_layers_dir, self.settings.step_cache_mb << 20)
                start_entry = await asyncio.to_thread(self._base_layer, cache, fixed, prepared, base, rw_mb)
                the_plan = build_steps.plan(cache, start_entry, req.steps)
                the_plan = await asyncio.to_thread(self._shallow_start, cache, the_plan)
                keep = set(the_plan.start.chain)
                rw = work / "rw.qcow2"
                await asyncio.to_thread(cow_overlay, cache.path(the_plan.start.layer), rw, self.vmm.qemu_img)
            else:
                rw = writable_layer(work / "rw.img", rw_mb, prepared.guest_config)
            policy = network_pb2.NetworkPolicy(expose_all_ports=True)
            if definition and not req.steps_internet:
                policy.allow_internet_access = False
            net = await self.vs.allocate(vs_id, policy)
            ep = GuestEndpoint(net.host_address, net.proxy_address)
            spec = guest.machine_spec(work / "image.ext4", rw, vcpus=vcpus, memory_mb=memory_mb,
                                      network=vm_attachment(net),
                                      memory_file=work / "memory")
            yield _event(Phase.BOOTING, f"booting ({vcpus} vCPU, {memory_mb} MB)", step="base")
            machine = await boot(self.vmm, f"tplbuild-{tid}", spec, labels={"template_build": tid})
            await machine.wait_guest(300)
            lap("BOOTING")
            yield _event(Phase.PROBING, f"waiting for ports {', '.join(map(str, prepared.probe_ports))}", step="base")
            await wait_healthy(ep, prepared.probe_ports, timeout=600)
            if definition:
                assert cache is not None
                lap("PROBING")
                state = build_steps.StepState()
                async for item in self._run_definition(req, machine, ep, cache, the_plan, rw, dict(prepared.env)):
                    if isinstance(item, build_steps.StepState):
                        state = item
                    else:
                        yield item
                env.update(state.env)
                lap("RUNNING_STEPS")
            if req.probe_port and req.probe_port not in prepared.probe_ports:
                if req.probe_path:
                    probe = wait_http(ep, req.probe_port, req.probe_path, timeout=self.settings.probe_timeout_s)
                else:
                    probe = wait_tcp(ep, req.probe_port, timeout=self.settings.probe_timeout_s)
                await _probe_or_crash(machine, probe)
            if INTERPRETER_PORT in prepared.probe_ports:
                await self._settle(ep, source == "default_image")
            lap("PROBING")
            yield _event(Phase.SNAPSHOTTING, "taking the snapshot", step="finalize" if definition else "")
            snap_dir = work / "snapshot"
            m, machine = machine, None
            await snapshot(m, snap_dir, flatten_disk=definition)
            lap("SNAPSHOTTING")
            (work / "rw.img").unlink(missing_ok=True)
            created = Timestamp()
            created.GetCurrentTime()
            info = pb.TemplateInfo(
                template_id=tid, vcpus=vcpus, memory_mb=memory_mb, writable_layer_mb=rw_mb,
                envd_version=ENVD_VERSION, created_at=created, snapshot_bytes=_dir_bytes(work),
                expose_ports=list(req.expose_ports), source=prepared.source, node_id=self.settings.node_id,
                phase_ms=phase_ms, no_memory_sharing=req.no_memory_sharing)
            if state is not None:  # E2B: the last USER and WORKDIR are the sandboxes' defaults
                info.default_user, info.default_workdir = state.user, state.workdir
            self.write_info(tid, info, key, env)
            done = True
            self.prune(tid)
            await asyncio.to_thread(gc.prune_artifacts, self.settings, self.vmm)
            await self.vs.release(vs_id)
            final = _event(Phase.READY, "ready", template=info)
        except StepFailed as e:
            log.warning("template build step failed", extra={"template_id": tid, "step": e.step, "error": str(e)})
            final = _event(Phase.FAILED, step=e.step, error=f"step {e.step} failed: {e}" if e.step != "finalize"
                           else str(e))
        except (VmmError, GuestAgentError, guest_agent.AgentNotReady, OSError, TemplateError) as e:
            tail = getattr(e, "console_tail", "") or (machine.console_tail(60) if machine else "")
            log.warning("template build failed", extra={"template_id": tid, "error": str(e)})
            final = _event(Phase.FAILED, error=f"{e}\n{tail}".strip())
        finally:
            # Clean up before the last event goes out: a caller that has what it wanted closes
            # the stream, and this generator is then cancelled wherever it is.
            await asyncio.shield(self._finish_build(machine, vs_id, staging, work, tdir, done))
            if cache is not None:
                await asyncio.to_thread(cache.evict, keep)
        yield final

    def _base_layer(self, cache: build_steps.LayerCache, fixed: str, prepared: PreparedImage,
                    base: Template | None, rw_mb: int) -> build_steps.Entry:
        """The cache entry the steps start from: a fresh writable layer with the guest config (an
        image), or the disk the base template's build left, flattened (so the base may go)."""
        cache.ensure()
        key = f"base-{fixed}"
        hit = cache.get(key)
        if hit is not None:
            return hit
        name = f"{key}.img"
        target = cache.path(name)
        if base is not None:
            build_steps.qemu_img_convert(base.load_snapshot().disk, target, "raw")
        else:
            tmp = cache.path(f".{name}.tmp")
            writable_layer(tmp, rw_mb, prepared.guest_config)
            os.replace(tmp, target)
        entry = build_steps.Entry(key, name, build_steps.StepState(), (name,))
        cache.put(entry)
        return entry

    @staticmethod
    def _shallow_start(cache: build_steps.LayerCache, the_plan: build_steps.Plan) -> build_steps.Plan:
        """The plan, its start layer flattened into the cache first when its chain is as deep as a
        build may stack (each rebuild from a cached step adds one overlay)."""
        start = the_plan.start
        if len(start.chain) < build_steps.MAX_CHAIN:
            return the_plan
        name = f"flat-{start.key}.qcow2"
        build_steps.qemu_img_convert(cache.path(start.layer), cache.path(name), "qcow2")
        flat = build_steps.Entry(start.key, name, start.state, (name,))
        cache.put(flat)
        return dataclasses.replace(the_plan, start=flat)

    async def _run_definition(self, req: pb.BuildTemplateRequest, machine: Machine, ep: GuestEndpoint,
                              cache: build_steps.LayerCache, the_plan: build_steps.Plan, rw: Path,
                              base_env: dict[str, str]) -> AsyncIterator[pb.TemplateBuildEvent | build_steps.StepState]:
        """Run the steps the plan did not find cached, cut a cached layer after each that may change
        the disk, then start the start command and wait for the ready command. Yields the events
        (a line of output each), then the final StepState. StepFailed names the failing step."""
        total = len(req.steps)
        start = the_plan.start

        async def cut(name: str) -> None:
            try:
                await machine.control.call("sync_fs", timeout=60)
            except VmmError as e:
                log.warning("guest sync before a step layer failed: %s", e)
            await machine.execute("stop")  # QEMU flushes its images: the overlay file is whole
            try:
                await asyncio.to_thread(build_steps.copy_sparse, rw, cache.path(name))
            finally:
                await machine.execute("cont")

        # COPY archives this node does not share with the API land in the build's work dir (private).
        fetcher = build_file_fetch.Fetcher(self.settings.api_url, rw.parent / "copy-files",
                                           max_bytes=self.settings.build_file_max_mb << 20)
        runner = build_steps.Runner(ep, self.settings.build_files, req.files_team,
                                    step_timeout_s=self.settings.step_timeout_s, base_env=base_env, fetcher=fetcher)
        await runner.detect_shell()
        for i in range(the_plan.first):
            yield _event(Phase.RUNNING_STEPS, f"CACHED [{i + 1}/{total}] {build_steps.describe(req.steps[i])}",
                         step=build_steps.step_label(i))
        state, layer, chain = start.state, start.layer, tuple(start.chain)
        for i in range(the_plan.first, total):
            step, label = req.steps[i], build_steps.step_label(i)
            yield _event(Phase.RUNNING_STEPS, f"[{i + 1}/{total}] {build_steps.describe(step)}", step=label)
            t0 = time.monotonic()
            result: list[build_steps.StepState] = []

            async def one(emit, i=i, step=step, state=state, result=result) -> None:
                result.append(await runner.run_step(i, step, state, emit))

            async for ev in _pumped(one, label):
                yield ev
            state = result[0]
            if step.type in build_steps.DISK_STEPS:
                layer = f"{the_plan.keys[i]}.qcow2"
                await cut(layer)
                # A cut is the whole overlay since boot: it reads through the start layer only.
                chain = (*start.chain, layer)
            entry = build_steps.Entry(the_plan.keys[i], layer, state, chain)
            if all(cache.path(f).is_file() for f in chain):
                cache.put(entry)
            yield _event(Phase.RUNNING_STEPS, f"step {label} done in {time.monotonic() - t0:.1f}s", step=label)
        if req.start_cmd:
            yield _event(Phase.RUNNING_STEPS, f"starting: {req.start_cmd}", step="finalize")
            await runner.start(req.start_cmd, state)
        if req.ready_cmd:
            yield _event(Phase.RUNNING_STEPS, f"waiting for the ready command: {req.ready_cmd}", step="finalize")

            async def ready(emit) -> None:
                await runner.wait_ready(req.ready_cmd, state, self.settings.ready_timeout_s, emit)

            async for ev in _pumped(ready, "finalize"):
                yield ev
        yield state

    async def _finish_build(self, machine, vs_id: str, staging: Path, work: Path, tdir: Path, done: bool) -> None:
        if machine is not None:
            await machine.kill()
        await self.vs.release(vs_id)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work / "copy-files", ignore_errors=True)  # fetched COPY archives (build_file_fetch.py)
        if not done:
            shutil.rmtree(work, ignore_errors=True)
            if not (tdir / "info.json").exists():
                shutil.rmtree(tdir, ignore_errors=True)

    async def _prepare_default(self) -> PreparedImage:
        from . import default_image

        image = await asyncio.to_thread(default_image.ensure_default_image, self.vmm)
        return PreparedImage(image, default_image.default_guest_config(), (ENVD_PORT, INTERPRETER_PORT), "default")

    @staticmethod
    def _discard_staging(tdir: Path, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        if not (tdir / "info.json").exists():
            shutil.rmtree(tdir, ignore_errors=True)

    def layer_cache(self) -> oci.LayerCache:
        if self._layer_cache is None:
            self._layer_cache = oci.LayerCache(self.vmm.state_dir / "oci-cache",
                                               max_bytes=self.settings.layer_cache_mb << 20)
        return self._layer_cache

    def image_limits(self) -> oci.Limits:
        return oci.Limits(max_image_bytes=self.settings.image_max_mb << 20,
                          max_layer_bytes=self.settings.layer_max_mb << 20,
                          max_entries=self.settings.image_max_entries)

    async def _prepare_oci(self, req: pb.BuildTemplateRequest, staging: Path, lap, *,
                           operator: bool = False) -> AsyncIterator:
        """Pull/read and unpack the image into a root filesystem, then make its ext4 image and the
        guest config that runs the agent (envd only: the image may serve 49999 itself) and the
        image's own command. Yields PULLING/UNPACKING events, then the PreparedImage.

        The unpacked tree (in `staging`, 0700) holds only inert content; owners, modes, devices
        and xattrs go straight into the ext4 image (oci.apply_metadata), and the image's users come
        from its layers' /etc/passwd and /etc/group entries, not from the tree."""
        src = req.oci_image
        ref = oci.ImageRef.parse(src.reference, insecure=src.insecure_registry)
        if not ref.is_local and oci.registry_listed(self.settings.plain_http_registries, ref.registry):
            ref = dataclasses.replace(ref, insecure=True)
        if ref.is_local and not operator:
            raise TemplateError(f"{src.reference!r}: local image paths are for operators (cubemastercli); "
                                "give a registry reference")
        creds = oci.Credentials(src.username, src.password) if src.username else None
        cache = await asyncio.to_thread(self.layer_cache)
        access = oci.RegistryAccess(allow_private=operator, allowlist=self.settings.registry_allowlist)
        events: asyncio.Queue = asyncio.Queue()

        def progress(p: oci.Progress) -> None:
            # The OCI phases carry the TemplateBuildPhase names. Value() gives the member (an int;
            # protobuf's stub types it as a plain int, the generated one as TemplateBuildPhase).
            phase = cast(Phase, Phase.Value(p.phase.value))
            events.put_nowait(_event(phase, p.message, bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                     layers_done=p.layers_done, layers_total=p.layers_total))

        await asyncio.to_thread(_private_dir, staging)
        root = staging / "root"
        yield _event(Phase.PULLING, f"fetching {src.reference}")
        task = asyncio.create_task(oci.fetch_image(ref, root, cache, auth=creds, progress=progress,
                                                   access=access, limits=self.image_limits()))
        current = Phase.PULLING
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    ev = getter.result()
                    if ev.phase != current:  # time each phase from the events' own boundaries
                        lap(Phase.Name(current))
                        current = ev.phase
                    yield ev
                else:
                    getter.cancel()
            unpacked: oci.UnpackedImage = task.result()
        finally:
            if not task.done():
                task.cancel()
        lap(Phase.Name(current))
        config = unpacked.config
        yield _event(Phase.BUILDING_IMAGE, "making the template image")
        guest_config = image_guest_config(config, unpacked.tree, req)
        image = await asyncio.to_thread(ext4_from_dir, root, staging / "image.ext4")
        await asyncio.to_thread(oci.apply_metadata, unpacked.tree, image)
        await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)
        yield PreparedImage(image, guest_config, (ENVD_PORT,), src.reference,
                            fingerprint=config.manifest_digest or config.digest,
                            env={**config.env_map(), **dict(req.env)})

    async def _settle(self, ep: GuestEndpoint, every_language: bool) -> None:
        """Wait until the agent's default kernels really run (an empty cell each) before memory is
        frozen: a snapshot taken earlier would leave every clone finishing their start-up. The
        default template's snapshot also gets the languages the agent keeps in reserve (started
        by their empty cell, then stopped until a sandbox uses them); templates built on it or on
        an image start those on first use, so that their builds do not wait for a JVM and R
        under TCG."""
        languages = guest_agent.ALL_LANGUAGES if every_language else None
        async with ep.client(600.0) as c:
            await guest_agent.wait_default_kernels(c, ep.url(INTERPRETER_PORT, ""), timeout=900.0,
                                                   languages=languages)
        await asyncio.sleep(1.0)
