"""Template builds from container images: jobs at <prefix>/template-builds/<job_id>.

    create:  validate -> id free? -> pick a node -> one transaction: job (phase UNSPECIFIED, i.e.
             queued) + the template's BUILDING record (claims the id: it fails if a template or an
             alias has the name) -> answer the caller; the build goes on in a task of this master:
    deferred create (E2B's POST /v3/templates): the same claim of the id and the aliases, but no
             node and no task: the job waits (``deferred``, no node) for
    start:   (E2B's POST /v2/templates/{id}/builds/{buildID}) the definition (source, steps, start
             and ready command) is validated, a node picked (for a build on a template: one that has
             it; the node that built the name's current template first, where its cached step
             layers are), the job rewritten at the revision it was read at (deferred -> started, so a job
             is started once), then run as a create's build is
    run:     Cubelet.BuildTemplate stream on the node; every event is mirrored into the job (phase
             and message changes at once, progress at most every build_progress_write_s), and the
             job's heartbeat is refreshed every build_heartbeat_s
    READY:   the template record (READY, from the event's TemplateInfo), its aliases and the job in
             one transaction (aliases the team's other templates hold move to it: ``move_aliases``)
    FAILED:  (a FAILED event, the stream breaking, the deadline) the BUILDING record is deleted,
             then the job says FAILED with the reason (and the E2B step that failed); nothing else
             is left in etcd, and moved aliases stay where they were

Events: progress events of one phase and message replace each other; RUNNING_STEPS events are the
steps' output lines and are all kept (up to build_log_events_kept, and a bound on their text, so
the job stays a small etcd value), written at most every build_progress_write_s.

The registry credentials live only in the running task (and are handed to the node); the job
keeps the image reference. A master that stops cancels its builds and fails their jobs; one that
dies leaves jobs whose heartbeat stops: the leader's reconciler fails them ("master restarted").
A deferred job has no master running it and no heartbeat: the reconciler fails it only once it was
not started within build_start_timeout_s of its creation (and removes its BUILDING record).
Either way the node's BuildTemplate stream is cancelled, and the cubelet removes what it built.
Every job write compares the job's revision, so the running master and the reconciler never
overwrite each other: a running build whose job was failed meanwhile stops.

Image sources: a team's build (anything cube-api asks for) must name a registry; references
that name files on the node (`oci:`, `oci-archive:`, `docker-archive:`) are an operator's
(cubemastercli) only, refused here with INVALID_ARGUMENT and again by the cubelet. The node is told
which builds are an operator's (`OPERATOR_BUILD` metadata on Cubelet.BuildTemplate): those
may also pull from registries on loopback or private addresses, which a team's build may not unless
the node's `registry_allowlist` names them (services/cubelet/oci/egress.py).

Ownership: a build, its template and its aliases belong to the caller's team (an operator's
build makes a public template with public aliases). A job is seen by its team and by admins
(templates.py has the rules for templates); another team's job answers NOT_FOUND. A non-admin
cannot name a public template or public alias as the id to build (PERMISSION_DENIED), and no
team can claim a name another team's deleted template left (ALREADY_EXISTS; tombstones.py). With
``move_aliases`` an alias the caller's team holds on its own template is not "taken": it moves at
READY (public aliases, other teams' and tombstoned names are refused as ever). A build on a template
(``from_template``) names one the caller may use, READY and not a snapshot; a team's COPY steps read
only that team's uploaded files (``files_team`` is the job's team, whoever starts it).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from cube_common.etcd import EtcdUnavailable
from cube_common.teams import BUILD_ORIGIN_METADATA, BUILD_ORIGIN_OPERATOR, Caller
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master import errors, metrics
from services.master.clock import secs, ts
from services.master.log import get_logger
from services.master.nodes import NodeClients, node_error
from services.master.settings import Settings
from services.master.store import Conflict, Store, Versioned
from services.master.tags import MAX_TAGS, tag_names, tag_records
from services.master.teams import owner
from services.master.templates import NAME_RE, Templates, from_info
from services.master.tombstones import claim

log = get_logger("builds")

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# What a cubelet accepts as a template id (a directory name on the node, an etcd key segment).
TEMPLATE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
TERMINAL = (C.READY, C.FAILED)
MAX_PORTS = 64
MAX_ARGV = 256
MAX_ARG_BYTES = 65536
STORE_RETRY_S = 30.0
# Image references naming files on the node rather than a registry (containers-transports(5)).
LOCAL_IMAGE_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")
OPERATOR_BUILD = ((BUILD_ORIGIN_METADATA, BUILD_ORIGIN_OPERATOR),)
# E2B template definitions (StartTemplateBuild): the SDK's instruction types, as it spells them.
STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")
MAX_STEPS = 256
MAX_STEP_ARG_BYTES = 65536
MAX_COMMAND_BYTES = 65536
MAX_DEFINITION_BYTES = 1 << 20
FILES_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
MODE_RE = re.compile(r"^[0-7]{1,4}\Z")
# A job is one etcd value (etcd refuses requests over 1.5 MiB by default) that is rewritten on
# every flush: a step's output line is clipped, and the kept lines' text is bounded as a whole.
MAX_EVENT_MESSAGE_BYTES = 4096
MAX_EVENTS_TEXT = 256 * 1024
CLIPPED = " [... truncated]"


def is_operator(caller: Caller) -> bool:
    """An operator's call: no team (cubemastercli, deploy). cube-api always names a team."""
    return not caller.team_id


def new_template_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(20))


def phase_name(phase: int) -> str:
    return "QUEUED" if phase == C.TEMPLATE_BUILD_PHASE_UNSPECIFIED else C.TemplateBuildPhase.Name(phase)


def source_label(spec: C.BuildTemplateRequest) -> str:
    """What a template record says it was built from."""
    source = spec.WhichOneof("source")
    if source == "oci_image":
        return spec.oci_image.reference
    if source == "from_template":
        return f"template:{spec.from_template.template_id}"
    return "default" if source == "default_image" else ""   # "": a deferred build's, not known yet


def has_definition(spec: C.BuildTemplateRequest) -> bool:
    """An E2B template definition: its build runs steps, whose output lines are its events."""
    return bool(spec.steps or spec.start_cmd or spec.ready_cmd)


def clip(text: str, limit: int = MAX_EVENT_MESSAGE_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, marker included, when it is longer."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - len(CLIPPED)].decode(errors="ignore") + CLIPPED


def _event_text(ev: C.TemplateBuildEvent) -> int:
    # An estimate of an event's share of the job's size: its strings plus the fixed fields.
    return len(ev.message) + len(ev.error) + len(ev.step) + 96


def _extra(job: P.TemplateBuild, **kw) -> dict:
    return {"job_id": job.job_id, "template_id": job.template_id, **kw}


def _check_step(n: int, step: C.BuildStep) -> None:
    """One instruction of an E2B template definition, step ``n`` (1-based); InvalidArgument if bad."""
    def bad(why: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"step {n} ({step.type or 'no type'}): {why}")

    if step.type not in STEP_TYPES:
        raise errors.InvalidArgument(f"step {n}: unknown instruction type {step.type!r} "
                                     f"(want {', '.join(STEP_TYPES[:-1])} or {STEP_TYPES[-1]})")
    args = list(step.args)
    for a in args:
        if len(a.encode()) > MAX_STEP_ARG_BYTES:
            raise bad(f"an argument is {len(a.encode())} bytes; at most {MAX_STEP_ARG_BYTES}")
        if "\0" in a:
            raise bad("an argument contains a NUL character")

    def user(name: str) -> None:
        # "" is the SDK's "no user given" (COPY always sends the slot): the current user.
        if name and not USER_RE.match(name):
            raise bad(f"invalid user name {name!r}")

    if step.type == "RUN":
        if not 1 <= len(args) <= 2:
            raise bad(f"want a command and optionally a user, got {len(args)} arguments")
        if not args[0].strip():
            raise bad("the command is empty")
        if len(args) == 2:
            user(args[1])
    elif step.type == "COPY":
        if not 2 <= len(args) <= 4:
            raise bad(f"want a source, a destination and optionally a user and a mode, got {len(args)} arguments")
        if not args[0] or not args[1]:
            raise bad("the source and the destination are required")
        if len(args) >= 3:
            user(args[2])
        if len(args) == 4 and args[3] and not MODE_RE.match(args[3]):
            raise bad(f"invalid mode {args[3]!r} (want octal, such as 0755)")
        if not FILES_HASH_RE.match(step.files_hash):
            raise bad(f"the files hash must be 64 lowercase hex digits (the hash of the uploaded files), "
                      f"got {step.files_hash!r}")
    elif step.type == "ENV":
        if not args or len(args) % 2:
            raise bad(f"want name and value pairs, got {len(args)} arguments")
        for name in args[::2]:
            if not ENV_NAME_RE.match(name):
                raise bad(f"invalid environment variable name {name!r}")
    else:  # WORKDIR, USER
        if len(args) != 1 or not args[0]:
            raise bad(f"want exactly one non-empty argument, got {len(args)}")
        if step.type == "USER" and not USER_RE.match(args[0]):
            raise bad(f"invalid user name {args[0]!r}")


class _Interrupted(Exception):
    """The job was finished by someone else (the reconciler) while this master ran the build."""


@dataclass
class _Running:
    job: P.TemplateBuild
    rev: int
    template_rev: int                  # revision of the BUILDING record this build wrote
    node: C.NodeStatus
    task: asyncio.Task | None = None
    # the node's BuildTemplate call, to cancel it
    call: grpc.aio.UnaryStreamCall[C.BuildTemplateRequest, C.TemplateBuildEvent] | None = None
    dirty: bool = False
    last_write: float = field(default_factory=time.monotonic)
    started: bool = False              # the node sent at least one event
    interrupted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Builds:
    def __init__(self, store: Store, nodes: NodeClients, templates: Templates, settings: Settings):
        self.store = store
        self.nodes = nodes
        self.templates = templates
        self.settings = settings
        self._running: dict[str, _Running] = {}

    # ---- validation ---------------------------------------------------------------------------

    def _validate(self, spec: C.BuildTemplateRequest, aliases, caller: Caller | None = None,
                  deferred: bool = False) -> None:
        """The build's settings; ``deferred``: a deferred create's, whose source may come with its start."""
        bad = errors.InvalidArgument
        source = spec.WhichOneof("source")
        if source is None and not deferred:
            raise bad("an image reference is required")
        if source == "oci_image":
            img = spec.oci_image
            ref = img.reference
            if not ref or len(ref) > 1024 or any(c.isspace() for c in ref):
                raise bad(f"invalid image reference {ref!r}")
            if ref.lower().startswith(LOCAL_IMAGE_TRANSPORTS) and (caller is None or not is_operator(caller)):
                raise bad(f"image {ref!r}: local image paths (oci:, oci-archive:, docker-archive:) are for "
                          "operators (cubemastercli); give a registry reference such as registry.example/app:1")
            if bool(img.username) != bool(img.password):
                raise bad("registry username and password go together")
        if spec.template_id and not TEMPLATE_ID_RE.match(spec.template_id):
            raise bad(f"invalid template id {spec.template_id!r}: use 1-64 letters, digits, '-' or '_', "
                      "starting with a letter or digit")
        # The operator's maximums (settings), for every template whoever builds it.
        most = self.settings
        if spec.vcpus > most.max_template_vcpus:
            raise bad(f"cpu must be between 1 and {most.max_template_vcpus}, got {spec.vcpus}")
        if spec.memory_mb and not 64 <= spec.memory_mb <= most.max_template_memory_mb:
            raise bad(f"memory must be between 64 and {most.max_template_memory_mb} MiB, got {spec.memory_mb}")
        if spec.writable_layer_mb > most.max_template_disk_mb:
            raise bad(f"writable layer must be at most {most.max_template_disk_mb} MiB, got {spec.writable_layer_mb}")
        if len(spec.expose_ports) > MAX_PORTS:
            raise bad(f"at most {MAX_PORTS} exposed ports")
        for port in list(spec.expose_ports) + ([spec.probe_port] if spec.probe_port else []):
            if not 1 <= port <= 65535:
                raise bad(f"invalid port {port} (want 1-65535)")
        if len(set(spec.expose_ports)) != len(spec.expose_ports):
            raise bad("exposed ports are repeated")
        if spec.probe_path and (not spec.probe_path.startswith("/") or any(c.isspace() for c in spec.probe_path)):
            raise bad(f"invalid probe path {spec.probe_path!r} (want an absolute HTTP path)")
        for k in spec.env:
            if not ENV_NAME_RE.match(k):
                raise bad(f"invalid environment variable name {k!r}")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in spec.env.items())
        if size > self.settings.max_env_bytes:
            raise bad(f"env is {size} bytes; at most {self.settings.max_env_bytes}")
        argv = list(spec.cmd) + list(spec.args)
        if len(argv) > MAX_ARGV or sum(len(a.encode()) for a in argv) > MAX_ARG_BYTES:
            raise bad(f"cmd and args: at most {MAX_ARGV} strings and {MAX_ARG_BYTES} bytes")
        for a in aliases:
            if not NAME_RE.match(a):
                raise bad(f"invalid alias {a!r}")
        if len(set(aliases)) != len(aliases):
            raise bad("aliases are repeated")

    async def _taken(self, tid: str, caller: Caller) -> str | None:
        """Why the template id cannot be built now, or None when it is free. Template ids are one
        namespace, so another team's template takes an id too, but its build is not named."""
        rec = await self.store.get_template(tid)
        if rec is not None:
            if rec.value.status == P.TEMPLATE_STATUS_BUILDING and caller.sees(owner(rec.value.team_id)):
                return f"template '{tid}' is being built (build {rec.value.build_id})"
            return f"template '{tid}' already exists"
        alias = await self.store.get_alias(tid)
        if alias is not None:
            return f"'{tid}' is already an alias of template '{alias.value.template_id}'"
        for node in await self.store.list_nodes():
            if tid in node.templates:
                return f"template '{tid}' already exists on node {node.node_id}"
        for b in await self.store.list_builds():
            if b.value.template_id == tid and b.value.phase not in TERMINAL:
                if not caller.sees(owner(b.value.team_id)):
                    return f"template '{tid}' already exists"
                return f"template '{tid}' is being built (build {b.value.job_id})"
        return None

    async def _check_public(self, tid: str, caller: Caller) -> None:
        """Only admins may name a public template (or alias) as the template to build."""
        if caller.admin:
            return
        # A template a node has but etcd lacks is registered as public: by_id counts it.
        tpl, alias = await asyncio.gather(self.templates.by_id(tid), self.store.get_alias(tid))
        if (tpl is not None and not tpl.team_id) or alias is not None:
            raise errors.PermissionDenied(f"template '{tid}' is public; only an admin can rebuild it")

    async def _check_aliases(self, tid: str, aliases, caller: Caller, move: bool = False) -> None:
        """The aliases must be free in the team's namespace, no team may claim a public one, and no
        team a name another team's deleted template left. With ``move``, an alias the team holds
        on one of its own templates counts as free: it moves to this template at READY."""
        team_id = caller.team_id
        for a in aliases:
            if a == tid:
                raise errors.InvalidArgument(f"alias '{a}' is the template id itself")
            cur = await self.store.get_alias(a)
            if cur is None and team_id:
                cur = await self.store.get_alias(a, team_id)
            if cur is not None and not (move and await self._movable(cur.value, team_id)):
                raise errors.AlreadyExists(f"alias '{a}' is already taken (template '{cur.value.template_id}')")
            if await self.store.get_template(a) is not None:
                raise errors.AlreadyExists(f"alias '{a}' is the id of another template")
            if await claim(self.store, a, caller) is None:
                raise errors.AlreadyExists(f"alias '{a}' is already taken")

    async def _movable(self, alias: P.TemplateAlias, team_id: str) -> bool:
        """May a build of ``team_id`` take ``alias`` over (``move_aliases``)? Only a team's own
        alias (its namespace) on the team's own template: a public alias is refused for a team
        even when it names the team's template, and one in the team's namespace that names a
        public template was the team's choice to point elsewhere, not a template it rebuilds."""
        if not team_id or alias.team_id != team_id:
            return False
        rec = await self.store.get_template(alias.template_id)
        return rec is None or rec.value.team_id == team_id

    async def _previous_build_node(self, job: P.TemplateBuild) -> str:
        """The node that built the template the job's name (its team's alias) names now, while that
        build's job is kept: a definition's cached step layers are on the node that ran its steps,
        so the next build of the same name goes there when it can ("" when there is none)."""
        for name in job.aliases:
            alias = await self.store.get_alias(name, job.team_id)
            if alias is None or alias.value.team_id != job.team_id:
                continue
            tpl = await self.store.get_template(alias.value.template_id)
            if tpl is None or tpl.value.team_id != job.team_id or not JOB_ID_RE.match(tpl.value.build_id):
                continue
            built = await self.store.get_build(tpl.value.build_id)
            if built is not None and built.value.node_id:
                return built.value.node_id
        return ""

    async def _pick_node(self, node_id: str, *, prefer: str = "") -> C.NodeStatus:
        nodes = [n for n in await self.store.list_nodes() if n.address]
        if node_id:
            for n in nodes:
                if n.node_id == node_id:
                    return n
            raise errors.NotFound(f"node '{node_id}' is not registered")
        if not nodes:
            raise errors.Unavailable("no nodes are registered")
        # A draining node takes no new work unless an operator names it (above).
        draining = await self.store.draining_nodes()
        nodes = [n for n in nodes if n.node_id not in draining]
        if not nodes:
            raise errors.Unavailable("every registered node is draining")
        return await self._least_loaded(nodes, prefer)

    async def _least_loaded(self, nodes: list[C.NodeStatus], prefer: str = "") -> C.NodeStatus:
        """``prefer`` (a node with the build's cache) when it is among ``nodes``, else the least loaded."""
        for n in nodes:
            if prefer and n.node_id == prefer:
                return n
        building: dict[str, int] = {}
        for b in await self.store.list_builds():
            if b.value.phase not in TERMINAL and b.value.node_id:
                building[b.value.node_id] = building.get(b.value.node_id, 0) + 1
        # Least loaded: fewest builds in progress, then fewest sandboxes, then most free memory.
        return min(nodes, key=lambda n: (building.get(n.node_id, 0), n.sandboxes_running + n.sandboxes_paused,
                                         -n.memory_available_bytes, n.node_id))

    async def _node_with(self, base: str, *, prefer: str = "") -> C.NodeStatus:
        """The least loaded node that can build on template ``base``: a build on a template starts
        from that template's disk, which only the nodes that have it hold."""
        draining = await self.store.draining_nodes()
        nodes = [n for n in await self.store.list_nodes()
                 if n.address and base in n.templates and n.node_id not in draining]
        if not nodes:
            raise errors.FailedPrecondition(f"base template '{base}' is on no node that takes builds "
                                            "(its nodes are gone or draining)")
        return await self._least_loaded(nodes, prefer)

    # ---- create -------------------------------------------------------------------------------

    async def create(self, req: P.CreateTemplateBuildRequest, caller: Caller) -> P.TemplateBuild:
        spec = C.BuildTemplateRequest()
        spec.CopyFrom(req.build)
        aliases = list(req.aliases)
        self._validate(spec, aliases, caller, deferred=req.deferred)
        tags = tag_names(req.tags, "assigned") if req.tags else []
        if len(tags) > MAX_TAGS:
            raise errors.InvalidArgument(f"at most {MAX_TAGS} tags on a template")
        if req.deferred:
            # The definition comes with the start, which replaces whatever steps came here.
            del spec.steps[:]
        else:
            self._validate_definition(spec, req.ByteSize())
        spec.files_team = caller.team_id  # COPY steps read the caller's team's uploads only
        if req.deferred and req.node_id:
            # The node is picked when the definition is known (a build on a template needs one
            # that has it); nothing would keep a node named an hour earlier fit for it.
            raise errors.InvalidArgument("a deferred build cannot name a node: it is picked when the build starts")
        if req.deferred and (spec.oci_image.username or spec.oci_image.password):
            # Credentials live only in a running build's task, never in etcd, so a job that waits
            # could not keep them: they come with the start.
            raise errors.InvalidArgument("registry credentials of a deferred build go with its start")
        if spec.template_id:
            await self._check_public(spec.template_id, caller)
        else:
            spec.template_id = new_template_id()
        tid = spec.template_id
        why = await self._taken(tid, caller)
        name = await claim(self.store, tid, caller)
        if why or name is None:
            raise errors.AlreadyExists(why or f"template '{tid}' already exists")
        await self._check_aliases(tid, aliases, caller, move=req.move_aliases)
        node = None if req.deferred else await self._pick_node(req.node_id)

        now = ts()
        job = P.TemplateBuild(job_id=str(uuid.uuid4()), template_id=tid, node_id=node.node_id if node else "",
                              master_id=self.settings.master_id, aliases=aliases, created_at=now, updated_at=now,
                              heartbeat_at=now, team_id=caller.team_id, deferred=req.deferred,
                              move_aliases=req.move_aliases,
                              tags=tags)
        self._set_spec(job, spec)
        building = P.Template(
            template_id=tid, vcpus=spec.vcpus or 1, memory_mb=spec.memory_mb or 512,
            disk_size_mb=spec.writable_layer_mb or 1024, envd_version=self.settings.envd_version,
            source=source_label(spec), status=P.TEMPLATE_STATUS_BUILDING, no_memory_sharing=spec.no_memory_sharing,
            expose_ports=list(spec.expose_ports), build_id=job.job_id, created_at=now, updated_at=now,
            team_id=caller.team_id)
        ok, rev = await self.store.create_build(job, building, name)
        if not ok:
            raise errors.AlreadyExists(await self._taken(tid, caller) or f"template '{tid}' already exists")
        if node is None:
            log.info("template build reserved; waiting for its start", extra=_extra(job, aliases=aliases))
            return self._copy(job)
        return self._launch(job, rev, rev, node, spec)

    @staticmethod
    def _copy(job: P.TemplateBuild) -> P.TemplateBuild:
        out = P.TemplateBuild()
        out.CopyFrom(job)
        return out

    @staticmethod
    def _set_spec(job: P.TemplateBuild, spec: C.BuildTemplateRequest) -> None:
        """The job keeps the spec without the registry credentials and the COPY steps' signed file
        URLs (they live in the running task only)."""
        job.spec.CopyFrom(spec)
        for step in job.spec.steps:
            step.ClearField("files_url")
        if spec.WhichOneof("source") == "oci_image":
            job.registry_auth = bool(spec.oci_image.username or spec.oci_image.password)
            job.spec.oci_image.ClearField("username")
            job.spec.oci_image.ClearField("password")

    def _launch(self, job: P.TemplateBuild, rev: int, template_rev: int, node: C.NodeStatus,
                spec: C.BuildTemplateRequest) -> P.TemplateBuild:
        """Run the build whose job was just written at ``rev`` (its BUILDING record at
        ``template_rev``) in a task of this master; the answer to the caller. No await here: the
        job is in ``_running`` before this master's reconciler can look at it again."""
        run = _Running(job=job, rev=rev, template_rev=template_rev, node=node)
        self._running[job.job_id] = run
        run.task = asyncio.get_running_loop().create_task(self._run(run, spec))
        log.info("template build started", extra=_extra(job, node_id=node.node_id, source=source_label(spec),
                                                         registry_auth=job.registry_auth, steps=len(spec.steps)))
        return self._copy(job)

    # ---- start (a deferred build) -------------------------------------------------------------

    async def start(self, req: P.StartTemplateBuildRequest, caller: Caller) -> P.TemplateBuild:
        """Start a deferred build with its definition (see the module docstring)."""
        v = await self._job(req.job_id, caller)
        job = self._copy(v.value)
        self._check_startable(job)
        spec = self._definition(job, req.build)
        if spec.WhichOneof("source") is None:
            raise errors.InvalidArgument("the template has no base: give an image (fromImage) or a "
                                         "template (fromTemplate)")
        self._validate(spec, [], caller)  # the aliases were checked (and are kept) by the create
        self._validate_definition(spec, req.ByteSize())
        previous = await self._previous_build_node(job)
        if spec.WhichOneof("source") == "from_template":
            base = await self._base_template(spec.from_template.template_id, job, caller)
            spec.from_template.template_id = base.template_id
            node = await self._node_with(base.template_id, prefer=previous)
        else:
            node = await self._pick_node("", prefer=previous)
        rec = await self.store.get_template(job.template_id)
        if rec is None or rec.value.status != P.TEMPLATE_STATUS_BUILDING or rec.value.build_id != job.job_id:
            raise errors.FailedPrecondition(f"template build '{job.job_id}' no longer holds template "
                                            f"'{job.template_id}'; create the build again")
        now = ts()
        job.deferred = False
        job.node_id = node.node_id
        job.master_id = self.settings.master_id  # this master runs it (and heartbeats it) from now on
        self._set_spec(job, spec)
        job.updated_at.CopyFrom(now)
        job.heartbeat_at.CopyFrom(now)
        try:
            rev = await self.store.update_build(job, v.mod_revision)
        except Conflict:
            # Started by another call meanwhile, or failed by the reconciler: say which.
            cur = await self.store.get_build(job.job_id)
            if cur is None:
                raise errors.NotFound(f"template build '{job.job_id}' not found") from None
            self._check_startable(cur.value)
            raise errors.FailedPrecondition(f"template build '{job.job_id}' changed while it was being "
                                            "started; try again") from None
        return self._launch(job, rev, rec.mod_revision, node, spec)

    @staticmethod
    def _check_startable(job: P.TemplateBuild) -> None:
        if job.phase in TERMINAL:
            raise errors.FailedPrecondition(f"template build '{job.job_id}' has already finished "
                                            f"({phase_name(job.phase)})")
        if not job.deferred:
            raise errors.FailedPrecondition(f"template build '{job.job_id}' was already started")

    @staticmethod
    def _definition(job: P.TemplateBuild, build: C.BuildTemplateRequest) -> C.BuildTemplateRequest:
        """The spec a started build runs: the create's (template id and resources), with the
        definition the start brings (source, steps, commands, env merged over the create's,
        ports and probe when given)."""
        spec = C.BuildTemplateRequest()
        spec.CopyFrom(job.spec)
        source = build.WhichOneof("source")
        if source is not None:
            part = getattr(spec, source)
            part.CopyFrom(getattr(build, source))
            part.SetInParent()  # an empty message (default_image) selects the oneof too
        del spec.steps[:]
        spec.steps.extend(build.steps)
        spec.start_cmd = build.start_cmd
        spec.ready_cmd = build.ready_cmd
        spec.env.update(build.env)
        spec.steps_internet = build.steps_internet
        if build.expose_ports:
            del spec.expose_ports[:]
            spec.expose_ports.extend(build.expose_ports)
        if build.probe_port:
            spec.probe_port = build.probe_port
        if build.probe_path:
            spec.probe_path = build.probe_path
        # COPY steps read the files the job's team uploaded, never those of whoever starts it.
        spec.files_team = job.team_id
        return spec

    @staticmethod
    def _validate_definition(spec: C.BuildTemplateRequest, size: int) -> None:
        """E2B's template definition: the steps and the commands (INVALID_ARGUMENT naming the step
        by its 1-based number, as the SDK counts them); ``size``: the request's, in bytes."""
        bad = errors.InvalidArgument
        if size > MAX_DEFINITION_BYTES:
            raise bad(f"the template definition is {size} bytes; at most {MAX_DEFINITION_BYTES}")
        if len(spec.steps) > MAX_STEPS:
            raise bad(f"the template has {len(spec.steps)} steps; at most {MAX_STEPS}")
        for n, step in enumerate(spec.steps, 1):
            _check_step(n, step)
        for what, cmd in (("start command", spec.start_cmd), ("ready command", spec.ready_cmd)):
            if len(cmd.encode()) > MAX_COMMAND_BYTES:
                raise bad(f"the {what} is {len(cmd.encode())} bytes; at most {MAX_COMMAND_BYTES}")
            if "\0" in cmd:
                raise bad(f"the {what} contains a NUL character")

    async def _base_template(self, name: str, job: P.TemplateBuild, caller: Caller) -> P.Template:
        """The template a build on a template starts from: one the caller may use, READY, not a
        snapshot (a snapshot reads through its own base and lives on one node), not itself."""
        if not name:
            raise errors.InvalidArgument("fromTemplate: the template to build on is required")
        try:
            base, _ = await self.templates.resolve(name, caller)
        except errors.NotFound:
            raise errors.NotFound(f"base template '{name}' not found") from None
        if base.template_id == job.template_id:
            raise errors.InvalidArgument(f"template '{job.template_id}' cannot be built on itself")
        if base.base_template_id:
            raise errors.InvalidArgument(f"base template '{name}' is a snapshot of a sandbox: "
                                         "cannot build on a snapshot")
        if base.status != P.TEMPLATE_STATUS_READY:
            raise errors.FailedPrecondition(f"base template '{name}' is not ready "
                                            f"({P.TemplateStatus.Name(base.status).removeprefix('TEMPLATE_STATUS_')})")
        return base

    # ---- running a build ----------------------------------------------------------------------

    async def _run(self, run: _Running, spec: C.BuildTemplateRequest) -> None:
        job, node = run.job, run.node
        beat = asyncio.get_running_loop().create_task(self._heartbeat(run))
        try:
            verdict = None
            error = ""
            try:
                run.call = self.nodes.stub(node.address).BuildTemplate(
                    spec, timeout=self.settings.build_timeout_s,
                    metadata=OPERATOR_BUILD if not run.job.team_id else None)
                async for ev in run.call:
                    run.started = True
                    if ev.phase in TERMINAL:
                        verdict = ev
                        break
                    await self._on_event(run, ev)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED and run.interrupted:
                    raise _Interrupted() from None
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    error = f"node {node.node_id}: the build did not finish within {self.settings.build_timeout_s:g}s"
                else:
                    error = str(node_error(e, node.node_id))
            except asyncio.CancelledError:
                if run.interrupted:
                    raise _Interrupted() from None
                raise
            finally:
                beat.cancel()
            if run.interrupted:
                raise _Interrupted()
            if verdict is not None and verdict.phase == C.READY:
                await self._ready(run, verdict)
            elif verdict is not None:
                await self._failed(run, verdict.error or verdict.message or "the build failed", verdict)
            else:
                # The stream broke (node gone, deadline) or ended without a verdict: whatever the node
                # has of the template must go too (it may have finished just before).
                error = error or f"node {node.node_id}: the build stream ended without a result"
                await self._failed(run, error, cleanup_node=node if run.started else None)
        except _Interrupted:
            log.warning("template build interrupted: its job was finished meanwhile", extra=_extra(job))
        except asyncio.CancelledError:
            # This master is stopping: the node's stream is cancelled with this task (the cubelet
            # cleans up its side); fail the job now rather than leave it to the reconciler.
            await asyncio.shield(self._failed(
                run, f"master restarted: the master running this build ({self.settings.master_id}) stopped "
                     "before it finished", cleanup_node=None, retry_s=3.0))
            raise
        except Exception as e:  # noqa: BLE001 - a build must always end in a verdict
            log.exception("template build error", extra=_extra(job))
            await self._failed(run, f"internal error in the master: {type(e).__name__}: {e}", cleanup_node=node)
        finally:
            beat.cancel()
            if run.call is not None:
                run.call.cancel()
            self._running.pop(job.job_id, None)

    def _record_event(self, job: P.TemplateBuild, ev: C.TemplateBuildEvent) -> None:
        """Append ``ev`` to the job's history: a progress event of the same phase and message
        replaces the previous one (a step's output line never does: two equal lines are two
        lines); the oldest are dropped beyond the limit (more are kept for a build with a
        definition, whose events are its log) or beyond the bound on their text."""
        ev.message = clip(ev.message)
        last = job.events[-1] if job.events else None
        if (last is not None and last.phase == ev.phase and last.message == ev.message
                and ev.phase not in TERMINAL and ev.phase != C.RUNNING_STEPS and not ev.error):
            last.CopyFrom(ev)
        else:
            job.events.append(ev)
        kept = self.settings.build_log_events_kept if has_definition(job.spec) else self.settings.build_events_kept
        extra = max(len(job.events) - kept, 0)
        text = sum(_event_text(e) for e in job.events[extra:])
        while text > MAX_EVENTS_TEXT and extra < len(job.events) - 1:
            text -= _event_text(job.events[extra])
            extra += 1
        if extra > 0:
            del job.events[:extra]
            job.events_dropped += extra

    async def _on_event(self, run: _Running, ev: C.TemplateBuildEvent) -> None:
        job = run.job
        if not ev.HasField("timestamp"):
            ev.timestamp.CopyFrom(ts())
        if ev.phase == C.RUNNING_STEPS:
            # Output lines: a new step is written at once, the lines of one step at most every
            # build_progress_write_s (the heartbeat task flushes the rest within a tick), so a
            # chatty step costs a few writes a second, not one per line.
            last = job.events[-1] if job.events else None
            urgent = ev.phase != job.phase or last is None or last.step != ev.step
        else:
            urgent = ev.phase != job.phase or clip(ev.message) != job.message
        if ev.phase != job.phase:
            log.info("template build phase", extra=_extra(job, phase=phase_name(ev.phase), detail=clip(ev.message)))
        job.phase = ev.phase
        job.message = clip(ev.message)
        job.bytes_done, job.bytes_total = ev.bytes_done, ev.bytes_total
        job.layers_done, job.layers_total = ev.layers_done, ev.layers_total
        self._record_event(job, ev)
        if urgent or time.monotonic() - run.last_write >= self.settings.build_progress_write_s:
            await self._flush(run)
        else:
            run.dirty = True

    async def _flush(self, run: _Running) -> None:
        """Write the job as this master has it (progress, heartbeat)."""
        async with run.lock:
            job = run.job
            now = ts()
            job.updated_at.CopyFrom(now)
            job.heartbeat_at.CopyFrom(now)
            try:
                try:
                    run.rev = await self.store.update_build(job, run.rev)
                except Conflict as err:
                    cur = await self.store.get_build(job.job_id)
                    if cur is None or cur.value.phase in TERMINAL:
                        run.interrupted = True
                        if run.call is not None:
                            run.call.cancel()
                        raise _Interrupted() from err
                    run.rev = await self.store.update_build(job, cur.mod_revision)
            except (EtcdUnavailable, Conflict) as e:
                log.warning("build progress not written", extra=_extra(job, error=str(e)))
                run.dirty = True
                return
            run.dirty = False
            run.last_write = time.monotonic()

    async def _heartbeat(self, run: _Running) -> None:
        tick = min(self.settings.build_heartbeat_s, max(self.settings.build_progress_write_s, 0.05))
        try:
            while True:
                await asyncio.sleep(tick)
                if run.dirty or time.monotonic() - run.last_write >= self.settings.build_heartbeat_s:
                    await self._flush(run)
        except _Interrupted:
            pass

    async def _store_retry(self, fn, retry_s: float = STORE_RETRY_S):
        """Run a store write, retrying while etcd is unavailable (a verdict must be written)."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return await fn()
            except EtcdUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _cas_final(self, run: _Running, write, retry_s: float = STORE_RETRY_S) -> bool:
        """Write the job's verdict with ``write(expected_revision)``. On a conflict the job is read
        again: False when someone else finished it (the reconciler); otherwise the write is retried
        at its current revision (an earlier write of ours whose answer was lost)."""
        async with run.lock:
            try:
                run.rev = await self._store_retry(lambda: write(run.rev), retry_s)
            except Conflict:
                cur = await self.store.get_build(run.job.job_id)
                if cur is None or cur.value.phase in TERMINAL:
                    return False
                run.rev = await self._store_retry(lambda: write(cur.mod_revision), retry_s)
        return True

    async def _ready(self, run: _Running, ev: C.TemplateBuildEvent) -> None:
        job = run.job
        spec = job.spec
        info = C.TemplateInfo()
        if ev.HasField("template"):
            info.CopyFrom(ev.template)
        else:
            info = C.TemplateInfo(vcpus=spec.vcpus, memory_mb=spec.memory_mb, writable_layer_mb=spec.writable_layer_mb,
                                  expose_ports=list(spec.expose_ports), no_memory_sharing=spec.no_memory_sharing)
        info.template_id = job.template_id
        info.node_id = info.node_id or run.node.node_id
        if not info.source:
            info.source = source_label(spec) or "default"
        tpl = from_info(info, self.settings.envd_version)
        tpl.build_id = job.job_id
        tpl.team_id = job.team_id
        if not ev.HasField("timestamp"):
            ev.timestamp.CopyFrom(ts())
        job.phase = C.READY
        job.message = ev.message or "ready"
        job.error = ""
        job.template.CopyFrom(info)
        self._record_event(job, ev)
        now = ts()
        job.finished_at.CopyFrom(now)
        job.updated_at.CopyFrom(now)
        job.heartbeat_at.CopyFrom(now)
        # The READY transaction writes each alias in the team's namespace whatever it named
        # before: with move_aliases, those the team's other templates held (accepted by the
        # create's check) are re-pointed here, so a create by that name gets this build.
        aliases = list(job.aliases)
        replaced = await self._held_elsewhere(job) if job.move_aliases else set()
        # The build's tags (E2B's `name:tag` of Template.build, checked at the create) go in the same
        # transaction: a client that sees the build ready creates from `name:tag` at once.
        tags = tag_records(tpl, job.tags)
        try:
            done = await self._cas_final(run, lambda rev: self.store.finish_build(job, rev, tpl, aliases, tags))
        except EtcdUnavailable as e:
            # The job stays running without a heartbeat: the reconciler fails it (and deletes the
            # node's template) once it is stale.
            log.warning("build result not written", extra=_extra(job, error=str(e)))
            return
        if not done:
            # The reconciler failed the job meanwhile: the node's template must not outlive it.
            log.warning("template built after its job was failed; deleting it on the node", extra=_extra(job))
            await self._delete_on_node(run.node, job.template_id)
            return
        log.info("template build ready", extra=_extra(job, node_id=run.node.node_id,
                                                       snapshot_bytes=info.snapshot_bytes,
                                                       phase_ms=dict(info.phase_ms)))
        metrics.build_finished(job, "ready", time.time() - secs(job.created_at))
        if tags:
            log.info("template tags assigned", extra=_extra(job, tags=list(job.tags)))
        for old in replaced:
            await self._retire(old, job)

    async def _held_elsewhere(self, job: P.TemplateBuild) -> set[str]:
        """The team's other templates that hold the job's aliases now (a rebuild by name)."""
        held = set()
        for a in job.aliases:
            cur = await self.store.get_alias(a, job.team_id) if job.team_id else None
            if cur is not None and cur.value.template_id != job.template_id:
                held.add(cur.value.template_id)
        return held

    async def _retire(self, tid: str, job: P.TemplateBuild) -> None:
        """A template whose name a rebuild took: deleted once nothing needs it, as E2B drops a
        replaced build. One that sandboxes use, or that snapshots read through, stays (by its id)
        until it is deleted like any template."""
        try:
            rec = await self.store.get_template(tid)
            if rec is None or rec.value.team_id != job.team_id or rec.value.status != P.TEMPLATE_STATUS_READY:
                return
            users = [v.value.sandbox_id for v in await self.store.list_sandboxes() if v.value.template_id == tid]
            bases = [v.value.template_id for v in await self.store.list_templates()
                     if v.value.base_template_id == tid]
            if users or bases:
                log.info("replaced template kept while in use", extra=_extra(job, replaced=tid, sandboxes=users[:5],
                                                                              snapshots=bases[:5]))
                return
            await self.templates.delete(rec.value, [], kill=None)
            log.info("replaced template deleted", extra=_extra(job, replaced=tid))
        except (errors.MasterError, EtcdUnavailable) as e:
            log.warning("replaced template not deleted", extra=_extra(job, replaced=tid, error=str(e)))

    async def _failed(self, run: _Running, error: str, event: C.TemplateBuildEvent | None = None,
                      cleanup_node: C.NodeStatus | None = None, retry_s: float = STORE_RETRY_S) -> None:
        job = run.job
        if cleanup_node is not None:
            await self._delete_on_node(cleanup_node, job.template_id)
        try:
            await self._store_retry(lambda: self.store.delete_template_at(job.template_id, run.template_rev), retry_s)
            self._fail_record(job, error, event)
            if not await self._cas_final(run, lambda rev: self.store.update_build(job, rev), retry_s):
                return
        except EtcdUnavailable as e:
            log.warning("build failure not written; the reconciler finishes it", extra=_extra(job, error=str(e)))
            return
        log.warning("template build failed", extra=_extra(job, node_id=job.node_id,
                                                           failed_phase=phase_name(job.failed_phase),
                                                           error=error[-2000:]))
        metrics.build_finished(job, "failed", time.time() - secs(job.created_at))

    def _fail_record(self, job: P.TemplateBuild, error: str, event: C.TemplateBuildEvent | None = None) -> None:
        ev = C.TemplateBuildEvent()
        if event is not None:
            ev.CopyFrom(event)
        ev.phase = C.FAILED
        ev.error = error
        if not ev.HasField("timestamp"):
            ev.timestamp.CopyFrom(ts())
        job.failed_phase = job.phase if job.phase not in TERMINAL else job.failed_phase
        if ev.step:
            job.failed_step = ev.step
        job.phase = C.FAILED
        job.deferred = False  # a deferred job failed unstarted waits for nothing any more
        job.error = error
        job.message = ev.message or "failed"
        self._record_event(job, ev)
        now = ts()
        job.finished_at.CopyFrom(now)
        job.updated_at.CopyFrom(now)

    async def _delete_on_node(self, node: C.NodeStatus, tid: str) -> None:
        try:
            await self.nodes.call(node, "DeleteTemplate", C.DeleteTemplateRequest(template_id=tid, force=True))
            log.info("partial template deleted on node", extra={"template_id": tid, "node_id": node.node_id})
        except errors.NotFound:
            pass
        except errors.MasterError as e:
            log.warning("could not delete template on node", extra={"template_id": tid, "node_id": node.node_id,
                                                                    "error": str(e)})

    # ---- read ---------------------------------------------------------------------------------

    async def _job(self, job_id: str, caller: Caller) -> Versioned[P.TemplateBuild]:
        v = await self.store.get_build(job_id) if JOB_ID_RE.match(job_id or "") else None
        if v is None or not caller.sees(owner(v.value.team_id)):
            raise errors.NotFound(f"template build '{job_id}' not found")
        return v

    async def get(self, job_id: str, caller: Caller) -> P.TemplateBuild:
        return (await self._job(job_id, caller)).value

    async def list(self, caller: Caller, template_id: str = "") -> list[P.TemplateBuild]:
        out = [v.value for v in await self.store.list_builds()
               if (not template_id or v.value.template_id == template_id) and caller.sees(owner(v.value.team_id))]
        out.sort(key=lambda j: (j.created_at.ToNanoseconds(), j.job_id), reverse=True)
        return out

    async def watch(self, job_id: str, caller: Caller, poll_s: float = 1.0) -> AsyncIterator[C.TemplateBuildEvent]:
        """The job's events: history, then live ones (each update of the job read from etcd, on
        an etcd watch of its key, polling as a fallback); ends after READY or FAILED."""
        v = await self._job(job_id, caller)
        changed = asyncio.Event()
        follower = asyncio.get_running_loop().create_task(self._follow(self.store.build_key(job_id),
                                                                       v.mod_revision + 1, changed))
        sent = 0            # absolute index (events_dropped + i) of the next event to send
        last = b""          # the last event sent, serialized (a progress event may be replaced in place)
        try:
            while True:
                job = v.value
                for i, ev in enumerate(job.events):
                    a = job.events_dropped + i
                    data = ev.SerializeToString(deterministic=True)
                    if a < sent - 1 or (a == sent - 1 and data == last):
                        continue
                    last = data
                    sent = max(sent, a + 1)
                    yield ev
                if job.phase in TERMINAL:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), poll_s)
                except TimeoutError:
                    pass
                changed.clear()
                nv = await self.store.get_build(job_id)
                if nv is None:
                    return
                v = nv
        finally:
            follower.cancel()

    async def _follow(self, key: bytes, start_revision: int, changed: asyncio.Event) -> None:
        watch = None
        try:
            async with self.store.using() as client:
                try:
                    watch = await client.watch(key, start_revision=start_revision)
                    async for _ in watch:
                        changed.set()
                finally:
                    if watch is not None:
                        try:
                            await asyncio.wait_for(watch.cancel(), 2)
                        except Exception:  # noqa: BLE001 - best effort on a failing channel
                            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the watcher polls instead
            log.debug("build watch failed; polling", extra={"error": repr(e)})

    # ---- leader: abandoned builds, retention --------------------------------------------------

    async def reconcile(self) -> int:
        """Fail the running jobs whose master went away, delete BUILDING records without a running
        build, drop finished jobs past retention. Returns how many records changed."""
        s = self.settings
        now = time.time()
        changed = 0
        builds = {v.value.job_id: v for v in await self.store.list_builds()}
        for v in builds.values():
            j = v.value
            if j.phase not in TERMINAL:
                if j.job_id in self._running:
                    continue
                if j.deferred:
                    # No master runs it and nothing heartbeats it: only its start is awaited.
                    if secs(j.created_at) + s.build_start_timeout_s <= now and await self._fail_unstarted(v):
                        changed += 1
                    continue
                stale = secs(j.heartbeat_at) + s.build_stale_s <= now
                mine = j.master_id == s.master_id  # restarted under the same id: it has no such task
                if stale or mine:
                    await self._fail_abandoned(v)
                    changed += 1
            elif j.HasField("finished_at") and secs(j.finished_at) + s.build_retention_s <= now:
                if await self.store.delete_build(j.job_id, v.mod_revision):
                    changed += 1
        for t in await self.store.list_templates():
            tpl = t.value
            if tpl.status != P.TEMPLATE_STATUS_BUILDING or tpl.build_id in self._running:
                continue
            b = builds.get(tpl.build_id) or await self.store.get_build(tpl.build_id)
            if (b is None or b.value.phase in TERMINAL) and secs(tpl.updated_at) + s.build_stale_s <= now:
                if await self.store.delete_template_at(tpl.template_id, t.mod_revision):
                    log.info("leftover BUILDING template record removed", extra={"template_id": tpl.template_id,
                                                                                "job_id": tpl.build_id})
                    changed += 1
        return changed

    async def _fail_abandoned(self, v: Versioned[P.TemplateBuild]) -> None:
        job = P.TemplateBuild()
        job.CopyFrom(v.value)
        # Its node's stream was cancelled with the master; should the node have finished the
        # template just before, it must not outlive the failed job.
        node = await self.store.get_node(job.node_id)
        if node is not None and job.template_id in node.templates:
            await self._delete_on_node(node, job.template_id)
        rec = await self.store.get_template(job.template_id)
        if rec is not None and rec.value.status == P.TEMPLATE_STATUS_BUILDING and rec.value.build_id == job.job_id:
            await self.store.delete_template_at(job.template_id, rec.mod_revision)
        self._fail_record(job, f"master restarted: the master running this build ({job.master_id}) went away "
                               "before it finished; start the build again")
        try:
            await self.store.update_build(job, v.mod_revision)
            log.warning("abandoned template build failed", extra=_extra(job, master_id=job.master_id))
        except Conflict:
            pass

    async def _fail_unstarted(self, v: Versioned[P.TemplateBuild]) -> bool:
        """Fail a deferred job nobody started in time, then remove its BUILDING record. The job is
        written first, at the revision it was read at: a start that won the race keeps its build
        (and its record); one that comes later finds the job failed. Its aliases were never
        written (they are at READY), so the record was its only claim."""
        job = self._copy(v.value)
        self._fail_record(job, f"the build was not started within {self.settings.build_start_timeout_s:g}s")
        try:
            await self.store.update_build(job, v.mod_revision)
        except Conflict:
            return False
        rec = await self.store.get_template(job.template_id)
        if rec is not None and rec.value.status == P.TEMPLATE_STATUS_BUILDING and rec.value.build_id == job.job_id:
            # Should this fail (etcd gone), the leftover-BUILDING sweep above removes it later.
            await self.store.delete_template_at(job.template_id, rec.mod_revision)
        log.warning("template build never started; failed", extra=_extra(job))
        return True

    # ---- stop ---------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel this master's builds (each fails its job)."""
        tasks = [r.task for r in self._running.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await asyncio.wait_for(t, 10)
            except BaseException:
                pass

    def running(self) -> set[str]:
        return set(self._running)
