"""TEST DOUBLE of the node agent: an in-memory ``cube.v1.Cubelet`` for control-plane tests.

It runs no VM. It keeps sandboxes in a dict, answers with the status codes cubelet.proto
promises, registers its NodeStatus in etcd the way a cubelet does (<prefix>/nodes/<node_id>,
proto3 JSON), and lets a test slow down or fail calls and read what was asked of it.
A resume naming another node as the source of a paused sandbox "pulls" it from the fake serving at
that address in this process (its entry is copied; the holder keeps its own until told to kill
it), as a cubelet pulls the saved state from its peer.
Volumes are in-memory trees (``FakeVolume``), one per volume id, with the semantics cubelet.proto
gives each VolumeOp; a sandbox run with volumes records them (SandboxStatus.volumes), and the
content calls and DeleteVolume refuse a volume a sandbox here (running or paused) mounts.
The end-to-end tests use the real cubelet.
"""

from __future__ import annotations

import posixpath
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from cube_common import volumes as volume_rules
from sdk.gen.cube.v1 import cubelet_pb2 as C, cubelet_pb2_grpc
from tests.control.etcd_http import EtcdHttp

# Every fake serving in this process, by address: where a resume with a source "pulls" from.
_SERVING: dict[str, FakeCubelet] = {}


def _now() -> Timestamp:
    t = Timestamp()
    t.GetCurrentTime()
    return t


CHUNK = 64 << 10  # ReadVolumeFile's chunk size


@dataclass
class _Node:
    """One entry of a fake volume: a directory or a regular file."""

    is_dir: bool
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    atime: Timestamp = field(default_factory=_now)
    mtime: Timestamp = field(default_factory=_now)
    ctime: Timestamp = field(default_factory=_now)


class VolumeError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class FakeVolume:
    """A volume's filesystem as a dict of absolute path -> entry; "/" always exists."""

    volume_id: str
    team_id: str
    size_bytes: int
    tree: dict[str, _Node] = field(default_factory=lambda: {"/": _Node(True, 0o755)})

    @staticmethod
    def norm(path: str) -> str:
        try:
            return volume_rules.normalize_path(path or "/")
        except volume_rules.VolumeRuleError as e:
            raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    def entry(self, path: str) -> C.VolumeEntry:
        n = self.tree[path]
        return C.VolumeEntry(name=posixpath.basename(path) or "/", path=path, size=0 if n.is_dir else len(n.data),
                             type=C.VOLUME_ENTRY_TYPE_DIRECTORY if n.is_dir else C.VOLUME_ENTRY_TYPE_FILE,
                             mode=n.mode, uid=n.uid, gid=n.gid, atime=n.atime, mtime=n.mtime, ctime=n.ctime)

    def get(self, path: str) -> _Node:
        n = self.tree.get(path)
        if n is None:
            raise VolumeError(grpc.StatusCode.NOT_FOUND, f"{path} does not exist")
        return n

    def _parent(self, path: str, force: bool) -> None:
        parent = posixpath.dirname(path)
        p = self.tree.get(parent)
        if p is None:
            if not force:
                raise VolumeError(grpc.StatusCode.NOT_FOUND, f"parent directory {parent} does not exist")
            self.make_dir(parent, force=True)
        elif not p.is_dir:
            raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, f"{parent} is not a directory")

    def used(self) -> int:
        return sum(len(n.data) for n in self.tree.values())

    def stat(self, path: str) -> C.VolumeEntry:
        self.get(path)
        return self.entry(path)

    def list(self, path: str, depth: int) -> list[C.VolumeEntry]:
        if not self.get(path).is_dir:
            raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} is not a directory")
        base = path.rstrip("/") + "/"
        out = []
        for p in sorted(self.tree):
            if p != path and p.startswith(base) and p[len(base):].count("/") < max(depth, 1):
                out.append(self.entry(p))
        return out

    def make_dir(self, path: str, force: bool) -> C.VolumeEntry:
        n = self.tree.get(path)
        if n is not None:
            if n.is_dir and force:
                return self.entry(path)
            raise VolumeError(grpc.StatusCode.ALREADY_EXISTS,
                              f"{path} already exists" + ("" if n.is_dir else " and is not a directory"))
        self._parent(path, force)
        self.tree[path] = _Node(True, 0o755)
        return self.entry(path)

    def update(self, path: str, req: C.VolumeContentRequest) -> C.VolumeEntry:
        n = self.get(path)
        if req.HasField("uid"):
            n.uid = req.uid
        if req.HasField("gid"):
            n.gid = req.gid
        if req.HasField("mode"):
            if req.mode & ~0o7777:
                raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, f"mode {req.mode:#o} is not permission bits")
            n.mode = req.mode
        n.ctime = _now()
        return self.entry(path)

    def remove(self, path: str) -> None:
        if path == "/":
            raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, "the volume's root directory cannot be removed")
        self.get(path)
        for p in [p for p in self.tree if p == path or p.startswith(path + "/")]:
            del self.tree[p]

    def write(self, path: str, data: bytes, force: bool) -> C.VolumeEntry:
        if path == "/" or (path in self.tree and self.tree[path].is_dir):
            raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} is a directory")
        self._parent(path, force)
        old = self.tree.get(path)
        self.tree[path] = _Node(False, old.mode if old else 0o644, old.uid if old else 0, old.gid if old else 0,
                                data)
        return self.entry(path)


@dataclass
class FakeCubelet(cubelet_pb2_grpc.CubeletServicer):
    node_id: str = "node-a"
    templates: tuple[str, ...] = ("code-interpreter", "tiny")
    max_sandboxes: int = 0
    disk_free_bytes: int = 0  # reported in NodeStatus (volumes go to the node with the most)
    # Knobs a test may turn while it runs.
    run_delay_s: float = 0.0
    fail_run: grpc.StatusCode | None = None
    fail_all: grpc.StatusCode | None = None
    fail_calls: dict[str, grpc.StatusCode] = field(default_factory=dict)  # method name -> code it fails with
    sandboxes: dict[str, C.SandboxStatus] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    envd_version: str = "0.6.13"
    # Templates whose build here differs from every other node's: a sandbox paused elsewhere
    # cannot resume here (FAILED_PRECONDITION, as a cubelet answers).
    other_builds: tuple[str, ...] = ()
    arrivals: list[tuple[str, str]] = field(default_factory=list)  # (sandbox id, node it came from)
    pauses: list[C.PauseSandboxRequest] = field(default_factory=list)  # as asked, in order
    resumes: list[C.ResumeSandboxRequest] = field(default_factory=list)
    address: str = ""
    proxy_address: str = "127.0.0.1:1"
    # BuildTemplate script (see BuildTemplate): pause between events, a phase to fail in (with
    # an error), a phase at which the stream is cut (UNAVAILABLE), and a gate the build waits on
    # before that phase until a test sets it.
    build_step_s: float = 0.01
    build_fail: tuple[int, str] | None = None
    build_cut_at: int | None = None
    build_hold_at: int | None = None
    build_requests: list[C.BuildTemplateRequest] = field(default_factory=list)
    build_cancelled: list[str] = field(default_factory=list)
    snapshot_bases: dict[str, str] = field(default_factory=dict)  # snapshot template id -> its base
    volumes: dict[str, FakeVolume] = field(default_factory=dict)  # volume id -> its tree

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._n = 0
        self.run_started = threading.Event()
        self.build_gate = threading.Event()
        self.build_waiting = threading.Event()
        self._etcd: tuple[EtcdHttp, str] | None = None

    # ---- lifecycle of the double ----

    def start(self) -> FakeCubelet:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
        cubelet_pb2_grpc.add_CubeletServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.address = f"127.0.0.1:{port}"
        _SERVING[self.address] = self
        return self

    def stop(self) -> None:
        _SERVING.pop(self.address, None)
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def node_status(self) -> C.NodeStatus:
        with self._lock:
            running = sum(s.state == C.SANDBOX_STATE_RUNNING for s in self.sandboxes.values())
            paused = len(self.sandboxes) - running
        return C.NodeStatus(node_id=self.node_id, address=self.address, proxy_address=self.proxy_address,
                            vcpus_total=2, memory_total_bytes=8 << 30, memory_available_bytes=6 << 30,
                            sandboxes_running=running, sandboxes_paused=paused, templates=list(self.templates),
                            accel="tcg", max_sandboxes=self.max_sandboxes, disk_free_bytes=self.disk_free_bytes)

    def register(self, etcd: EtcdHttp, prefix: str) -> None:
        self._etcd = (etcd, prefix)
        etcd.put(f"{prefix}/nodes/{self.node_id}", json_format.MessageToJson(self.node_status(), indent=None))

    def ids(self, state=None) -> set[str]:
        with self._lock:
            return {k for k, s in self.sandboxes.items() if state is None or s.state == state}

    def calls_of(self, method: str) -> list[str]:
        return [sid for m, sid in self.calls if m == method]

    # ---- Cubelet ----

    def _enter(self, context: grpc.ServicerContext, method: str, sid: str = "") -> None:
        self.calls.append((method, sid))
        code = self.fail_all if self.fail_all is not None else self.fail_calls.get(method)
        if code is not None:
            context.abort(code, f"fake failure of {method}")

    def _get(self, context: grpc.ServicerContext, sid: str) -> C.SandboxStatus:
        s = self.sandboxes.get(sid)
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {sid} not found")
        return s

    def RunSandbox(self, request, context):
        self._enter(context, "RunSandbox", request.sandbox_id)
        self.run_started.set()
        if self.run_delay_s:
            time.sleep(self.run_delay_s)
        if self.fail_run is not None:
            context.abort(self.fail_run, "fake run failure")
        if request.template_id not in self.templates:
            context.abort(grpc.StatusCode.NOT_FOUND, f"template {request.template_id} not found")
        with self._lock:
            if request.sandbox_id in self.sandboxes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "exists")
            for m in request.volumes:
                vol = self.volumes.get(m.volume_id)
                if vol is None or vol.team_id != m.team_id:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"volume {m.volume_id} not found")
                if (by := self._mounter(m.volume_id)) is not None:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"volume {m.volume_id} is mounted by sandbox {by}")
            self._n += 1
            st = C.SandboxStatus(sandbox_id=request.sandbox_id, template_id=request.template_id, node_id=self.node_id,
                                 state=C.SANDBOX_STATE_RUNNING, host_address=f"198.19.0.{self._n % 250 + 2}",
                                 proxy_source_address="198.19.0.1", started_at=_now(), vcpus=1, memory_mb=512,
                                 disk_size_mb=1024, envd_version=self.envd_version, network=request.network,
                                 metadata=dict(request.metadata), volumes=list(request.volumes))
            self.sandboxes[request.sandbox_id] = st
        return st

    def KillSandbox(self, request, context):
        self._enter(context, "KillSandbox", request.sandbox_id)
        with self._lock:
            return C.KillSandboxResponse(killed=self.sandboxes.pop(request.sandbox_id, None) is not None)

    def PauseSandbox(self, request, context):
        self._enter(context, "PauseSandbox", request.sandbox_id)
        with self._lock:
            s = self._get(context, request.sandbox_id)
            if s.state == C.SANDBOX_STATE_PAUSED:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already paused")
            s.state, s.filesystem_only = C.SANDBOX_STATE_PAUSED, request.filesystem_only
            self.pauses.append(request)
            return s

    def ResumeSandbox(self, request, context):
        self._enter(context, "ResumeSandbox", request.sandbox_id)
        if request.HasField("source") and request.source.node_id != self.node_id:
            self._arrive(request, context)
        with self._lock:
            s = self._get(context, request.sandbox_id)
            if s.state == C.SANDBOX_STATE_RUNNING:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already running")
            s.state, s.filesystem_only = C.SANDBOX_STATE_RUNNING, False
            self.resumes.append(request)
            return s

    def _arrive(self, request, context) -> None:
        """The paused sandbox the request's source holds becomes this node's (a copy of its entry)."""
        sid = request.sandbox_id
        with self._lock:
            if sid in self.sandboxes and self.sandboxes[sid].state == C.SANDBOX_STATE_RUNNING:
                return  # resumed here already: ResumeSandbox answers FAILED_PRECONDITION
        holder = _SERVING.get(request.source.address)
        if holder is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"node {request.source.node_id} unreachable")
        assert holder is not None  # (abort raised)
        with holder._lock:
            held = holder.sandboxes.get(sid)
            st = C.SandboxStatus()
            if held is not None:
                st.CopyFrom(held)
        if held is None or st.state != C.SANDBOX_STATE_PAUSED:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.source.node_id} holds no paused sandbox {sid}")
        if st.template_id not in self.templates:
            context.abort(grpc.StatusCode.NOT_FOUND, f"template {st.template_id} is on no node")
        if st.template_id in self.other_builds:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"another build of template {st.template_id}")
        with self._lock:
            self._n += 1
            st.node_id = self.node_id
            st.host_address = f"198.19.1.{self._n % 250 + 2}"
            self.sandboxes[sid] = st
            self.arrivals.append((sid, request.source.node_id))

    def GetSandbox(self, request, context):
        self._enter(context, "GetSandbox", request.sandbox_id)
        with self._lock:
            return self._get(context, request.sandbox_id)

    def ListSandboxes(self, request, context):
        self._enter(context, "ListSandboxes")
        with self._lock:
            return C.ListSandboxesResponse(sandboxes=list(self.sandboxes.values()))

    def UpdateNetwork(self, request, context):
        self._enter(context, "UpdateNetwork", request.sandbox_id)
        with self._lock:
            s = self._get(context, request.sandbox_id)
            s.network.CopyFrom(request.network)
            return s

    def SandboxMetrics(self, request, context):
        self._enter(context, "SandboxMetrics", request.sandbox_id)
        with self._lock:
            self._get(context, request.sandbox_id)
        t1, t2 = Timestamp(), Timestamp()
        t2.GetCurrentTime()
        t1.FromSeconds(t2.seconds - 5)

        def metric(ts: Timestamp) -> C.SandboxMetric:
            return C.SandboxMetric(timestamp=ts, cpu_count=1, cpu_used_pct=12.5, mem_used_bytes=64 << 20,
                                   mem_total_bytes=512 << 20, mem_cache_bytes=8 << 20, disk_used_bytes=10 << 20,
                                   disk_total_bytes=1024 << 20)

        return C.SandboxMetricsResponse(metrics=[metric(t1), metric(t2)])

    def SandboxLogs(self, request, context):
        self._enter(context, "SandboxLogs", request.sandbox_id)
        with self._lock:
            self._get(context, request.sandbox_id)
        return C.SandboxLogsResponse(lines=[C.LogLine(timestamp=_now(), line="booted"),
                                            C.LogLine(timestamp=_now(), line="envd ready")])

    def reset_builds(self) -> None:
        self.build_step_s = 0.01
        self.build_fail = self.build_cut_at = self.build_hold_at = None
        self.build_requests.clear()
        self.build_cancelled.clear()
        self.build_gate.clear()
        self.build_waiting.clear()

    def BuildTemplate(self, request, context):
        """A scripted build: PULLING with progress over 3 layers (many small progress events),
        UNPACKING, BUILDING_IMAGE, BOOTING, PROBING, SNAPSHOTTING, READY with a TemplateInfo; the
        template is then listed in NodeStatus. A build on a template (from_template, which must be
        listed here) skips PULLING and UNPACKING. Knobs: build_fail=(phase, error) sends FAILED right
        after that phase's first event; build_cut_at aborts the stream there with UNAVAILABLE; build_hold_at
        waits there until build_gate is set (or the master goes away: recorded in
        build_cancelled). A definition (steps, start or ready command) runs after BUILDING_IMAGE as
        RUNNING_STEPS events (see _steps_script)."""
        self._enter(context, "BuildTemplate", request.template_id)
        self.build_requests.append(request)
        tid = request.template_id
        if tid in self.templates:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"template {tid} exists")
        source = request.WhichOneof("source")
        if source == "from_template":
            base = request.from_template.template_id
            if base not in self.templates:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"base template {base} is not on this node")
            ref = f"template:{base}"
        else:
            ref = request.oci_image.reference if source == "oci_image" else "default"
        gone = threading.Event()
        context.add_callback(gone.set)
        mib = 1 << 20

        def ev(phase, message, **kw):
            return C.TemplateBuildEvent(phase=phase, message=message, timestamp=_now(), **kw)

        script = []
        if source != "from_template":
            script.append(ev(C.PULLING, f"pulling {ref}", layers_total=3, bytes_total=30 * mib))
            for i in range(1, 31):
                script.append(ev(C.PULLING, f"pulling {ref}", layers_done=i // 10, layers_total=3,
                                 bytes_done=i * mib, bytes_total=30 * mib))
            script.append(ev(C.UNPACKING, "unpacking layers", layers_done=3, layers_total=3))
        script.append(ev(C.BUILDING_IMAGE,
                         f"building the root filesystem ({request.writable_layer_mb or 1024} MiB layer)"))
        script += self._steps_script(request, ref, ev)
        script += [ev(C.BOOTING, "booting"),
                   ev(C.PROBING, f"waiting for :{request.probe_port or 49983}{request.probe_path}"),
                   ev(C.SNAPSHOTTING, "taking the snapshot")]
        for e in script:
            if e.phase == C.FAILED:  # a step of the definition failed (_steps_script)
                yield e
                return
            if self.build_hold_at == e.phase and not self.build_gate.is_set():
                self.build_waiting.set()
                while not self.build_gate.wait(0.05):
                    if gone.is_set() or not context.is_active():
                        self.build_cancelled.append(tid)
                        return
            if gone.is_set() or not context.is_active():
                self.build_cancelled.append(tid)
                return
            if self.build_cut_at == e.phase:
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake: connection reset by peer")
            if self.build_fail is not None and self.build_fail[0] == e.phase:
                yield e
                yield ev(C.FAILED, "", error=self.build_fail[1])
                return
            yield e
            if self.build_step_s:
                time.sleep(self.build_step_s)
        created = _now()
        info = C.TemplateInfo(template_id=tid, vcpus=request.vcpus or 1, memory_mb=request.memory_mb or 512,
                              writable_layer_mb=request.writable_layer_mb or 1024, envd_version=self.envd_version,
                              created_at=created, snapshot_bytes=64 * mib, expose_ports=list(request.expose_ports),
                              source=ref, node_id=self.node_id, no_memory_sharing=request.no_memory_sharing,
                              phase_ms={"PULLING": 300, "SNAPSHOTTING": 200})
        self.templates = self.templates + (tid,)
        if self._etcd is not None:
            self.register(*self._etcd)
        yield ev(C.READY, "ready", template=info)

    @staticmethod
    def _steps_script(request: C.BuildTemplateRequest, ref: str, ev) -> list[C.TemplateBuildEvent]:
        """The RUNNING_STEPS events of a definition, labelled as E2B labels them: "base", each
        step's 1-based number, "finalize" (start and ready command). Each step logs itself; a RUN
        step's command is "run": `echo X` prints X, `seq N` prints 1..N, `exit N` (N > 0) prints
        a line to stderr and fails the build at that step (the last event is then FAILED)."""
        if not (request.steps or request.start_cmd or request.ready_cmd):
            return []
        out = [ev(C.RUNNING_STEPS, f"FROM {ref}", step="base")]
        for n, step in enumerate(request.steps, 1):
            label = str(n)
            out.append(ev(C.RUNNING_STEPS, f"{step.type} {' '.join(step.args)}".rstrip(), step=label))
            if step.type != "RUN":
                continue
            cmd = step.args[0].strip()
            if cmd.startswith("echo "):
                out.append(ev(C.RUNNING_STEPS, cmd[5:], step=label))
            elif cmd.startswith("seq "):
                out += [ev(C.RUNNING_STEPS, str(i), step=label) for i in range(1, int(cmd[4:]) + 1)]
            elif cmd.startswith("exit ") and cmd[5:] != "0":
                out.append(ev(C.RUNNING_STEPS, f"sh: {cmd}: failing on purpose", step=label, stderr=True))
                out.append(ev(C.FAILED, "", step=label,
                              error=f"step {n} (RUN {cmd}) failed: the command exited with status {cmd[5:]}"))
                return out
        for what, cmd in (("start", request.start_cmd), ("ready", request.ready_cmd)):
            if cmd:
                out.append(ev(C.RUNNING_STEPS, f"{what} command: {cmd}", step="finalize"))
        return out

    def SnapshotSandbox(self, request, context):
        """As a cubelet answers (services/cubelet/sandboxes.py: snapshot): a running sandbox only;
        the new template is then this node's (and reported in its status)."""
        self._enter(context, "SnapshotSandbox", request.sandbox_id)
        s = self._get(context, request.sandbox_id)
        if s.state != C.SANDBOX_STATE_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"sandbox {request.sandbox_id} is not running")
        if request.template_id in self.templates:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"template {request.template_id} already exists")
        self.templates = self.templates + (request.template_id,)
        self.snapshot_bases[request.template_id] = s.template_id
        if self._etcd is not None:
            self.register(*self._etcd)
        ts = Timestamp()
        ts.GetCurrentTime()
        return C.TemplateInfo(template_id=request.template_id, filesystem_only=request.filesystem_only,
                              vcpus=1, memory_mb=512, writable_layer_mb=1024,
                              envd_version=self.envd_version, created_at=ts, source="default", node_id=self.node_id,
                              snapshot_bytes=1 << 20, base_template_id=s.template_id,
                              source_sandbox_id=request.sandbox_id, phase_ms={"SNAPSHOTTING": 100})

    def ListTemplates(self, request, context):
        self._enter(context, "ListTemplates")
        ts = Timestamp()
        ts.FromSeconds(1_700_000_000)
        return C.ListTemplatesResponse(templates=[
            C.TemplateInfo(template_id=t, vcpus=1, memory_mb=512, writable_layer_mb=1024,
                           envd_version=self.envd_version, created_at=ts,
                           source="default" if t == "code-interpreter" else f"oci:{t}",
                           node_id=self.node_id, snapshot_bytes=1 << 20,
                           base_template_id=self.snapshot_bases.get(t, ""))
            for t in self.templates])

    def DeleteTemplate(self, request, context):
        self._enter(context, "DeleteTemplate", request.template_id)
        if request.template_id not in self.templates:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such template")
        self.templates = tuple(t for t in self.templates if t != request.template_id)
        if self._etcd is not None:
            self.register(*self._etcd)
        return C.DeleteTemplateResponse(deleted=True)

    def GetNode(self, request, context):
        return self.node_status()

    # ---- volumes ----

    def _mounter(self, volume_id: str) -> str | None:
        """The sandbox here (running or paused) that mounts the volume (call with the lock held)."""
        return next((sid for sid, st in self.sandboxes.items() if any(m.volume_id == volume_id for m in st.volumes)),
                    None)

    def mounted_volumes(self, sandbox_id: str) -> list[str]:
        with self._lock:
            st = self.sandboxes.get(sandbox_id)
            return [m.volume_id for m in st.volumes] if st is not None else []

    def CreateVolume(self, request, context):
        self._enter(context, "CreateVolume", request.volume_id)
        with self._lock:
            if request.volume_id in self.volumes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"volume {request.volume_id} exists")
            self.volumes[request.volume_id] = FakeVolume(request.volume_id, request.team_id, request.size_bytes)
        return C.NodeVolume(volume_id=request.volume_id, size_bytes=request.size_bytes, used_bytes=0)

    def DeleteVolume(self, request, context):
        self._enter(context, "DeleteVolume", request.volume_id)
        with self._lock:
            vol = self.volumes.get(request.volume_id)
            if vol is None or vol.team_id != request.team_id:
                return C.DeleteVolumeResponse(deleted=False)
            if (by := self._mounter(request.volume_id)) is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {request.volume_id} is mounted by "
                              f"sandbox {by}")
            del self.volumes[request.volume_id]
        return C.DeleteVolumeResponse(deleted=True)

    def _volume(self, context, req: C.VolumeContentRequest) -> FakeVolume:
        """The unmounted volume a content call is about (call with the lock held)."""
        vol = self.volumes.get(req.volume_id)
        if vol is None or vol.team_id != req.team_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {req.volume_id} not found")
        assert vol is not None
        if req.token:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node never gets a volume token")
        if (by := self._mounter(req.volume_id)) is not None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is mounted by sandbox {by}")
        return vol

    def VolumeContent(self, request, context):
        self._enter(context, "VolumeContent", request.volume_id)
        with self._lock:
            vol = self._volume(context, request)
            try:
                path = vol.norm(request.path)
                op = request.op
                if op == C.VOLUME_OP_STAT:
                    return C.VolumeContentResponse(entries=[vol.stat(path)])
                if op == C.VOLUME_OP_LIST:
                    return C.VolumeContentResponse(entries=vol.list(path, request.depth))
                if op == C.VOLUME_OP_MAKE_DIR:
                    return C.VolumeContentResponse(entries=[vol.make_dir(path, request.force)])
                if op == C.VOLUME_OP_UPDATE_METADATA:
                    return C.VolumeContentResponse(entries=[vol.update(path, request)])
                if op == C.VOLUME_OP_REMOVE:
                    vol.remove(path)
                    return C.VolumeContentResponse()
                raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"op {C.VolumeOp.Name(op)} is not a VolumeContent operation")
            except VolumeError as e:
                context.abort(e.code, str(e))

    def ReadVolumeFile(self, request, context):
        self._enter(context, "ReadVolumeFile", request.volume_id)
        with self._lock:
            vol = self._volume(context, request)
            try:
                path = vol.norm(request.path)
                n = vol.get(path)
                if n.is_dir:
                    raise VolumeError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} is a directory")
            except VolumeError as e:
                context.abort(e.code, str(e))
            entry, data = vol.entry(path), n.data
        yield C.VolumeFileChunk(entry=entry, data=data[:CHUNK])
        for i in range(CHUNK, len(data), CHUNK):
            yield C.VolumeFileChunk(data=data[i:i + CHUNK])

    def WriteVolumeFile(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("request"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message carries the request")
        assert first is not None
        req = first.request
        self._enter(context, "WriteVolumeFile", req.volume_id)
        with self._lock:
            self._volume(context, req)
        msgs = [first, *request_iterator]
        if not msgs[-1].eof:  # as the real node: a cut upload writes nothing
            context.abort(grpc.StatusCode.CANCELLED, "the upload ended before its last message: nothing was written")
        parts = [m.data for m in msgs]
        with self._lock:
            vol = self._volume(context, req)
            try:
                return vol.write(vol.norm(req.path), b"".join(parts), req.force)
            except VolumeError as e:
                context.abort(e.code, str(e))
