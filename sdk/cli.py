"""cubemastercli: operate a Cube cluster through its master.

    cubemastercli [--master HOST:PORT] [--json] COMMAND ...

    tpl list | tpl info TEMPLATE | tpl delete TEMPLATE [--force]
    tpl create-from-image --image REF --writable-layer-size 1G --expose-port 49999 [--expose-port N ...]
        --probe 49999 [--probe-path /health] [--cpu N] [--memory MB] [--env K=V ...] [--cmd X ...]
        [--arg X ...] [--template-id ID] [--alias A ...] [--registry-username U --registry-password P]
        [--insecure-registry] [--no-memory-sharing] [--node NODE] [--wait]
    tpl watch --job-id J | tpl builds [--template T]
    tpl tags TEMPLATE | tpl tag TARGET TAG... | tpl untag TEMPLATE TAG...     (TARGET: name or name:tag)
    sandbox list [--state running,paused,lost] [--metadata k=v ...] [--template T]
    sandbox info ID | sandbox kill ID...
    node list | node drain NODE [--reason TEXT] | node undrain NODE | node remove NODE [--force]
    team create TEAM | team list
    team set-quota TEAM [--max-running N] [--max-vcpus N] [--max-memory 4G] [--max-paused N]   (0: unlimited)
    apikey create [--name NAME] [--team TEAM] [--admin] | apikey list | apikey revoke KEY_ID
    status

The master address comes from --master, else CUBE_MASTER_ADDR, else 127.0.0.1:50051 (the
master's default, cube_common.defaults). The operator certificate it presents (mutual TLS) comes
from --tls-dir, else CUBE_TLS_DIR, else this node's $CUBE_STATE_DIR/pki/operator (sdk.client).
--json prints proto3 JSON (camelCase, enum names as in the
.proto) instead of tables.

Built on the typed client (sdk.client): results are betterproto dataclasses, timestamps datetimes.
It talks to the master as an operator: it sees every team's sandboxes and templates (the TEAM
columns), and what it builds is public.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import betterproto

from cube_common.defaults import MASTER_ADDR
from cube_common.mtls import TlsError
from cube_common.sizes import parse_size_mb
from cube_common.teams import LOCAL_TEAM
from sdk.client import CubeClient, CubeError, Status
from sdk.protojson import to_dict as _dict
from sdk.typed.cube import v1 as pb

READY, FAILED = pb.TemplateBuildPhase.READY, pb.TemplateBuildPhase.FAILED
STEPS = pb.TemplateBuildPhase.RUNNING_STEPS


# ---- output -----------------------------------------------------------------------------------

def print_json(obj) -> None:
    if isinstance(obj, list):
        obj = [_dict(m) if isinstance(m, betterproto.Message) else m for m in obj]
    elif isinstance(obj, betterproto.Message):
        obj = _dict(obj)
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: list[Sequence]) -> None:
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def when(t: datetime) -> str:
    # An unset timestamp reads as the epoch.
    ts = t.timestamp()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def until(t: datetime) -> str:
    left = t.timestamp() - time.time()
    return f"{when(t)} ({int(left)}s)" if left > 0 else f"{when(t)} (due)"


def enum_name(enum: type[betterproto.Enum], value: int) -> str:
    # A value this client does not know (a newer master) has no name: show its number.
    return enum.try_value(value).name or str(value)


def phase(p: int) -> str:
    return enum_name(pb.SandboxPhase, p).lower()


def tpl_status(s: int) -> str:
    return enum_name(pb.TemplateStatus, s).lower()


def tpl_team(team_id: str) -> str:
    return team_id or "public"


def sandbox_team(team_id: str) -> str:
    return team_id or LOCAL_TEAM  # records from before teams belong to the local team


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}G"


def print_fields(pairs: list[tuple[str, object]]) -> None:
    w = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"{k.ljust(w)}  {v}")


# ---- commands ---------------------------------------------------------------------------------

def tpl_list(c: CubeClient, a) -> None:
    tpls = c.list_templates()
    if a.json:
        return print_json(tpls)
    print_table(["TEMPLATE", "ALIASES", "VCPUS", "MEMORY", "DISK", "ENVD", "STATUS", "TEAM", "NODES", "SPAWNS",
                 "CREATED"],
                [[t.template_id, ",".join(t.aliases) or "-", t.vcpus, f"{t.memory_mb}M", f"{t.disk_size_mb}M",
                  t.envd_version, tpl_status(t.status), tpl_team(t.team_id),
                  ",".join(t.node_ids) or "-", t.spawn_count, when(t.created_at)] for t in tpls])


def tpl_info(c: CubeClient, a) -> None:
    t = c.get_template(a.template)
    if a.json:
        return print_json(t)
    print_fields([("template", t.template_id), ("team", tpl_team(t.team_id)), ("aliases", ", ".join(t.aliases) or "-"),
                  ("source", t.source or "-"),
                  ("status", tpl_status(t.status)),
                  ("vcpus", t.vcpus), ("memory", f"{t.memory_mb} MiB"), ("disk", f"{t.disk_size_mb} MiB"),
                  ("envd", t.envd_version), ("nodes", ", ".join(t.node_ids) or "-"),
                  ("snapshot", f"{t.snapshot_bytes / (1 << 20):.1f} MiB"), ("spawns", t.spawn_count),
                  ("last spawn", when(t.last_spawned_at)), ("created", when(t.created_at)),
                  ("memory sharing", "off" if t.no_memory_sharing else "on"),
                  ("exposed ports", ", ".join(map(str, t.expose_ports)) or "-"), ("build", _build_line(c, t))])


def _build_line(c: CubeClient, t) -> str:
    if not t.build_id or t.build_id == t.template_id:
        return "-"
    try:
        job = c.get_template_build(t.build_id)
    except CubeError:
        return t.build_id
    line = f"{job.job_id} ({build_phase(job.phase)}"
    if job.phase not in (READY, FAILED) and (job.layers_total or job.bytes_total):
        line += f", layers {job.layers_done}/{job.layers_total}, {mib(job.bytes_done)}/{mib(job.bytes_total)} MiB"
    return line + ")"


def tpl_delete(c: CubeClient, a) -> None:
    ok = c.delete_template(a.template, force=a.force)
    print_json({"deleted": ok}) if a.json else print(f"deleted template {a.template}")


# ---- template tags ----------------------------------------------------------------------------

def tpl_tags(c: CubeClient, a) -> None:
    tags = c.list_template_tags(a.template)
    if a.json:
        return print_json(tags)
    # BUILD: the build job's id, for a template built through a job (others have none to show).
    print_table(["TAG", "BUILD", "BUILT", "STATE", "ASSIGNED"],
                [[t.tag, t.build_id if t.build_id not in ("", t.template_id) else "-", when(t.build_created_at),
                  "current" if t.current else "replaced", when(t.assigned_at)] for t in tags])


def tpl_tag(c: CubeClient, a) -> None:
    tags = c.assign_template_tags(a.target, a.tags)
    if a.json:
        return print_json(tags)
    print(f"tagged {tags[0].template_id} ({a.target}): {', '.join(t.tag for t in tags)}")


def tpl_untag(c: CubeClient, a) -> None:
    removed = c.remove_template_tags(a.template, a.tags)
    if a.json:
        return print_json({"removed": removed})
    print(f"removed from {a.template}: {', '.join(removed) or 'nothing (it had none of them)'}")


# ---- template builds --------------------------------------------------------------------------

def build_phase(p: int) -> str:
    return "QUEUED" if p == pb.TemplateBuildPhase.UNSPECIFIED else enum_name(pb.TemplateBuildPhase, p)


def build_image(spec: pb.BuildTemplateRequest) -> str:
    # `source` is a oneof: betterproto raises on reading a member that is not the one set.
    _, source = betterproto.which_one_of(spec, "source")
    return source.reference if isinstance(source, pb.OciImageSource) and source.reference else "default"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for kv in items or []:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"error: {flag} wants KEY=VALUE, got {kv!r}")
        out[k] = v
    return out


def count(value: str) -> int:
    """A limit: a whole number, 0 for none."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n < 1 << 32:
        raise argparse.ArgumentTypeError(f"invalid number {value!r} (want 0 or more; 0 = unlimited)")
    return n


def port(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value} (want 1-65535)")
    return n


def tpl_create_from_image(c: CubeClient, a) -> int:
    try:
        size_mb = parse_size_mb(a.writable_layer_size)
    except ValueError as e:
        raise SystemExit(f"error: --writable-layer-size: {e}") from None
    password = a.registry_password if a.registry_password is not None else os.environ.get("CUBE_REGISTRY_PASSWORD", "")
    if bool(a.registry_username) != bool(password):
        raise SystemExit("error: --registry-username and --registry-password (or CUBE_REGISTRY_PASSWORD) go together")
    build = pb.BuildTemplateRequest(
        template_id=a.template_id or "", vcpus=a.cpu or 0, memory_mb=a.memory or 0, writable_layer_mb=size_mb,
        expose_ports=a.expose_port or [], probe_port=a.probe, probe_path=a.probe_path or "",
        env=_key_values(a.env, "--env"), cmd=a.cmd or [], args=a.arg or [], no_memory_sharing=a.no_memory_sharing,
        oci_image=pb.OciImageSource(reference=a.image, username=a.registry_username or "", password=password,
                                   insecure_registry=a.insecure_registry))
    job = c.create_template_build(build, aliases=a.alias or [], node_id=a.node or "")
    if not a.wait:
        print_json(job) if a.json else print(job.job_id)
        return 0
    if not a.json:
        print(f"build {job.job_id}: template {job.template_id} on node {job.node_id}", file=sys.stderr)
    return _follow_build(c, job.job_id, a.json)


def tpl_watch(c: CubeClient, a) -> int:
    return _follow_build(c, a.job_id, a.json)


class BuildRenderer:
    """Phases and a progress bar (layers and bytes) for a terminal: one line per phase, redrawn
    in place; plain lines (a new one when the phase, the message or the layer count changes, or
    the bytes pass another quarter) when the output is not a terminal."""

    BAR = 24

    def __init__(self, out=None, tty: bool | None = None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.phase: int | None = None
        self.last_key: tuple[int, str, int, int] | None = None
        self.open_line = False

    def _progress(self, ev) -> str:
        parts = []
        if ev.layers_total:
            parts.append(f"layers {ev.layers_done}/{ev.layers_total}")
        if ev.bytes_total:
            parts.append(f"{mib(ev.bytes_done)}/{mib(ev.bytes_total)} MiB")
        elif ev.bytes_done:
            parts.append(f"{mib(ev.bytes_done)} MiB")
        return "  ".join(parts)

    def _bar(self, ev) -> str:
        if ev.bytes_total:
            frac = min(1.0, ev.bytes_done / ev.bytes_total)
        elif ev.layers_total:
            frac = min(1.0, ev.layers_done / ev.layers_total)
        else:
            return ""
        n = int(frac * self.BAR)
        return f"[{'#' * n}{'.' * (self.BAR - n)}] {int(frac * 100):3d}%"

    def event(self, ev) -> None:
        name = build_phase(ev.phase)
        if ev.phase in (READY, FAILED):
            self.close()
            if ev.phase == READY:
                t = ev.template
                detail = f"snapshot {mib(t.snapshot_bytes)} MiB on {t.node_id}" if t.node_id else ev.message
            else:
                detail = f"in {build_phase(self.phase) if self.phase is not None else 'QUEUED'}"
                if ev.step:
                    detail += f", step {ev.step}"
            self.out.write(f"{name:<14}  {detail}\n")
            self.out.flush()
            return
        if ev.phase == STEPS:
            # A template step's output: every line stays on screen, as a build log does.
            self.close()
            self.out.write(f"{'STEP ' + (ev.step or '-'):<14}  {ev.message}\n")
            self.phase = ev.phase
            self.out.flush()
            return
        if self.tty:
            if self.phase is not None and ev.phase != self.phase:
                self.out.write("\n")
            line = "  ".join(x for x in (f"{name:<14}", self._bar(ev), self._progress(ev), ev.message) if x)
            # One screen line, so that the next redraw (\r) replaces all of it.
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self.out.write("\r\x1b[K" + line.replace("\n", " ")[:max(width, 20)])
            self.open_line = True
        else:
            quarter = int(4 * ev.bytes_done / ev.bytes_total) if ev.bytes_total else 0
            key = (ev.phase, ev.message, ev.layers_done, quarter)
            if key != self.last_key:
                self.out.write("  ".join(x for x in (f"{name:<14}", self._progress(ev), ev.message) if x) + "\n")
                self.last_key = key
        self.phase = ev.phase
        self.out.flush()

    def close(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.open_line = False
            self.out.flush()


def _follow_build(c: CubeClient, job_id: str, as_json: bool) -> int:
    r = BuildRenderer()
    last = None
    try:
        for ev in c.watch_template_build(job_id):
            last = ev
            if as_json:
                print(json.dumps(_dict(ev), sort_keys=True), flush=True)
            else:
                r.event(ev)
    finally:
        r.close()
    if last is not None and last.phase == READY:
        if not as_json:
            print(last.template.template_id or c.get_template_build(job_id).template_id)
        return 0
    job = c.get_template_build(job_id)
    if job.phase == FAILED:
        print(f"error: build {job_id} of template {job.template_id} failed in {build_phase(job.failed_phase)}: "
              f"{job.error}", file=sys.stderr)
    else:
        print(f"error: the watch ended before build {job_id} finished (it is {build_phase(job.phase)})",
              file=sys.stderr)
    return 1


def tpl_builds(c: CubeClient, a) -> None:
    builds = c.list_template_builds(a.template or "")
    if a.json:
        return print_json(builds)
    print_table(["BUILD", "TEMPLATE", "PHASE", "TEAM", "NODE", "IMAGE", "CREATED", "FINISHED", "ERROR"],
                [[b.job_id, b.template_id, build_phase(b.phase), tpl_team(b.team_id), b.node_id or "-",
                  build_image(b.spec), when(b.created_at), when(b.finished_at),
                  (b.error.splitlines() or ["-"])[0][:60]] for b in builds])


def sandbox_list(c: CubeClient, a) -> None:
    meta = {}
    for kv in a.metadata or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"error: --metadata wants key=value, got {kv!r}")
        meta[k] = v
    states = tuple(s for s in (a.state or "").split(",") if s)
    try:
        sbs = list(c.list_sandboxes(metadata=meta, states=states, template=a.template or ""))
    except ValueError as e:  # an unknown state
        raise SystemExit(f"error: --state: {e}") from None
    if a.json:
        return print_json(sbs)
    print_table(["SANDBOX", "TEAM", "TEMPLATE", "STATE", "NODE", "STARTED", "ENDS", "METADATA", "REASON"],
                [[s.sandbox_id, sandbox_team(s.team_id), s.alias or s.template_id, phase(s.phase), s.node_id,
                  when(s.started_at),
                  until(s.end_at), ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items())) or "-",
                  lost_note(s) or "-"] for s in sbs])


def lost_note(s: pb.Sandbox) -> str:
    """Since when and why a sandbox is lost; empty for any other."""
    return f"{when(s.lost_at)}: {s.lost_reason}" if s.phase == pb.SandboxPhase.LOST else ""


def sandbox_info(c: CubeClient, a) -> None:
    s = c.get_sandbox(a.sandbox_id)
    if a.json:
        d = _dict(s)
        d.pop("envdAccessToken", None)  # a secret; the SDK gets it from connect
        d.pop("envVars", None)
        return print_json(d)
    fields: list[tuple[str, object]] = [
        ("sandbox", s.sandbox_id), ("template", s.template_id + (f" ({s.alias})" if s.alias else "")),
        ("team", sandbox_team(s.team_id)), ("state", phase(s.phase)), ("node", s.node_id),
        ("client", s.client_id),
        ("started", when(s.started_at)), ("ends", until(s.end_at)),
        ("on timeout", "pause" if s.auto_pause else "kill"), ("vcpus", s.vcpus),
        ("memory", f"{s.memory_mb} MiB"), ("disk", f"{s.disk_size_mb} MiB"), ("envd", s.envd_version),
        ("address", s.host_address or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(s.metadata.items())) or "-")]
    if s.phase == pb.SandboxPhase.LOST:
        fields.append(("lost", lost_note(s)))
    print_fields(fields)


def sandbox_kill(c: CubeClient, a) -> None:
    failed = 0
    for sid in a.sandbox_ids:
        try:
            c.kill_sandbox(sid)
            print_json({"sandboxId": sid, "killed": True}) if a.json else print(f"killed {sid}")
        except CubeError as e:
            failed += 1
            print(f"error: {sid}: {e}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def node_state(n: pb.Node) -> str:
    name = enum_name(pb.NodeState, n.state).lower()
    # A lost node an operator drained stays drained when it comes back: say so.
    return f"{name},draining" if n.state == pb.NodeState.LOST and n.admin.draining else name


def age(t: datetime) -> str:
    """How long ago, in whole seconds (``-`` when unset)."""
    ts = t.timestamp()
    return f"{max(0, int(time.time() - ts))}s" if ts else "-"


def node_list(c: CubeClient, a) -> None:
    nodes = c.list_nodes()
    if a.json:
        return print_json(nodes)

    def capacity(n: pb.Node) -> list[object]:
        st = n.status
        if n.state == pb.NodeState.LOST:
            return ["-"] * 6
        memory = f"{gib(st.memory_available_bytes)}/{gib(st.memory_total_bytes)}"
        disk = gib(st.disk_free_bytes) if st.disk_free_bytes else "-"
        can_take = "-" if st.sandboxes_can_take is None else st.sandboxes_can_take
        return [can_take, st.max_sandboxes or "-", st.vcpus_total, memory, disk, len(st.templates)]

    print_table(["NODE", "STATE", "ADDRESS", "ACCEL", "RUNNING", "PAUSED", "LOST", "CAN-TAKE", "MAX", "VCPUS",
                 "MEMORY", "DISK", "TEMPLATES", "HEARTBEAT"],
                [[n.status.node_id, node_state(n), n.status.address or "-", n.status.accel or "-", n.sandboxes_running,
                  n.sandboxes_paused, n.sandboxes_lost, *capacity(n), age(n.heartbeat_at)] for n in nodes])


def node_drain(c: CubeClient, a) -> None:
    n = c.drain_node(a.node, reason=a.reason or "")
    if a.json:
        return print_json(n)
    print(f"node {a.node} draining: no new sandboxes go there; its {n.sandboxes_running} running and "
          f"{n.sandboxes_paused} paused sandbox(es) stay (a paused one moves to another node when resumed)")


def node_undrain(c: CubeClient, a) -> None:
    n = c.undrain_node(a.node)
    if a.json:
        return print_json(n)
    if n.state == pb.NodeState.LOST:
        print(f"node {a.node} undrained: it takes new sandboxes once it is back (lost now)")
    else:
        print(f"node {a.node} {node_state(n)}: it takes new sandboxes again")


def node_remove(c: CubeClient, a) -> int:
    try:
        r = c.remove_node(a.node, force=a.force)
    except CubeError as e:
        if e.code != Status.FAILED_PRECONDITION:
            raise
        print(f"error: {e} (--force)", file=sys.stderr)
        return 1
    if a.json:
        print_json(r)
    else:
        print(f"removed node {a.node}" + (f"; marked lost: {', '.join(r.sandboxes_lost)}" if r.sandboxes_lost else ""))
    if r.still_heartbeating:
        print(f"warning: the cubelet of node {a.node} is still running: it registers the node again at its next "
              "heartbeat, with what it still runs; stop it to keep the node out", file=sys.stderr)
    return 0


def team_create(c: CubeClient, a) -> None:
    team = c.create_team(a.team)
    print_json(team) if a.json else print(f"created team {team.team_id}")


def used_of(used: int, limit: int, unit: str = "") -> str:
    """``2/3`` (used of the limit), ``2/-`` when unlimited."""
    return f"{used}{unit}/{f'{limit}{unit}' if limit else '-'}"


def team_list(c: CubeClient, a) -> None:
    teams = c.list_teams()
    if a.json:
        return print_json(teams)
    print_table(["TEAM", "RUNNING", "VCPUS", "MEMORY", "PAUSED", "CREATED"],
                [[t.team_id, used_of(t.usage.running, t.quota.max_running), used_of(t.usage.vcpus, t.quota.max_vcpus),
                  used_of(t.usage.memory_mb, t.quota.max_memory_mb, "M"), used_of(t.usage.paused, t.quota.max_paused),
                  when(t.created_at)] for t in teams])


def memory_limit(value: str) -> int:
    """--max-memory: a size (``4G``, ``512M``) or 0 for unlimited."""
    if value.strip() == "0":
        return 0
    try:
        return parse_size_mb(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def team_set_quota(c: CubeClient, a) -> None:
    limits = {"max_running": a.max_running, "max_vcpus": a.max_vcpus, "max_memory_mb": a.max_memory,
              "max_paused": a.max_paused}
    if all(v is None for v in limits.values()):
        raise SystemExit("error: give at least one of --max-running, --max-vcpus, --max-memory, --max-paused")
    team = c.set_team_quota(a.team, **limits)
    if a.json:
        return print_json(team)
    q = team.quota
    print(f"team {team.team_id}: running {used_of(team.usage.running, q.max_running)}, "
          f"vCPUs {used_of(team.usage.vcpus, q.max_vcpus)}, "
          f"memory {used_of(team.usage.memory_mb, q.max_memory_mb, 'M')}, "
          f"paused {used_of(team.usage.paused, q.max_paused)}")


def role(r: int) -> str:
    return enum_name(pb.ApiKeyRole, r).lower()


def apikey_create(c: CubeClient, a) -> None:
    rec, key = c.create_api_key(a.name or "", team=a.team, admin=a.admin)
    if a.json:
        return print_json({"apiKey": _dict(rec), "key": key})
    print(key)
    print(f"(key id {rec.key_id}, team {rec.team_id}, role {role(rec.role)}; shown once: only its SHA-256 "
          "is stored)", file=sys.stderr)


def apikey_list(c: CubeClient, a) -> None:
    keys = c.list_api_keys()
    if a.json:
        return print_json(keys)
    print_table(["KEY ID", "TEAM", "ROLE", "NAME", "KEY", "CREATED"],
                [[k.key_id, k.team_id, role(k.role), k.name or "-", k.mask, when(k.created_at)] for k in keys])


def apikey_revoke(c: CubeClient, a) -> None:
    c.revoke_api_key(a.key_id)
    print_json({"keyId": a.key_id, "revoked": True}) if a.json else print(f"revoked {a.key_id}")


def status(c: CubeClient, a) -> None:
    s = c.cluster_status()
    if a.json:
        return print_json(s)
    print_fields([("leader", f"{s.leader.master_id} ({s.leader.address})" if s.leader.master_id else "none"),
                  ("leader since", when(s.leader.since)), ("this master", s.self.master_id),
                  ("is leader", "yes" if s.is_leader else "no")])


# ---- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--master", default=argparse.SUPPRESS,
                        help=f"master gRPC address (env CUBE_MASTER_ADDR, default {MASTER_ADDR})")
    common.add_argument("--tls-dir", default=argparse.SUPPRESS,
                        help="operator certificate directory (env CUBE_TLS_DIR, default: this node's "
                        "$CUBE_STATE_DIR/pki/operator when readable; python -m deploy.pki issues one)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    ap = argparse.ArgumentParser(prog="cubemastercli", description="Operate a Cube cluster", parents=[common])
    groups = ap.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def cmd(sub, name: str, fn: Callable, help: str):
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(fn=fn)
        return p

    tpl = groups.add_parser("tpl", help="templates").add_subparsers(dest="cmd", required=True)
    cmd(tpl, "list", tpl_list, "list templates")
    cmd(tpl, "info", tpl_info, "show a template").add_argument("template", help="template id or alias")
    p = cmd(tpl, "delete", tpl_delete, "delete a template")
    p.add_argument("template")
    p.add_argument("--force", action="store_true", help="kill the sandboxes that use it first")
    p = cmd(tpl, "create-from-image", tpl_create_from_image,
            "build a template from a container image; prints the build job id")
    p.add_argument("--image", required=True, metavar="REF",
                   help="registry/repo:tag, repo@sha256:..., oci-archive:PATH, docker-archive:PATH, oci:DIR[:TAG]")
    p.add_argument("--writable-layer-size", required=True, metavar="SIZE",
                   help="the sandboxes' writable layer: 512M, 1G, ... (a bare number is MiB)")
    p.add_argument("--expose-port", required=True, action="append", type=port, metavar="PORT",
                   help="a guest port served at <port>-<sandboxID>.<domain>; repeatable")
    p.add_argument("--probe", required=True, type=port, metavar="PORT", help="snapshot once this port answers")
    p.add_argument("--probe-path", metavar="PATH", help="HTTP GET this path on the probe port (default: TCP connect)")
    p.add_argument("--cpu", type=int, metavar="N")
    p.add_argument("--memory", type=int, metavar="MB")
    p.add_argument("--env", action="append", metavar="K=V", help="repeatable")
    p.add_argument("--cmd", action="append", metavar="ARG",
                   help="replaces the image's entrypoint; repeatable (--cmd=-x for a value starting with -)")
    p.add_argument("--arg", action="append", metavar="ARG",
                   help="replaces the image's cmd; repeatable (--arg=--port for a value starting with -)")
    p.add_argument("--template-id", metavar="ID", help="default: a new [a-z0-9]{20}")
    p.add_argument("--alias", action="append", metavar="NAME", help="claimed when ready; repeatable")
    p.add_argument("--registry-username", metavar="U")
    p.add_argument("--registry-password", metavar="P", help="or CUBE_REGISTRY_PASSWORD; never stored")
    p.add_argument("--insecure-registry", action="store_true", help="plain-HTTP registry")
    p.add_argument("--no-memory-sharing", action="store_true", help="no copy-on-write memory between sandboxes")
    p.add_argument("--node", metavar="NODE", help="build on this node (default: the least loaded)")
    p.add_argument("--wait", action="store_true", help="then follow it like tpl watch")
    p = cmd(tpl, "watch", tpl_watch, "follow a build; prints the template id when READY, exits 1 on FAILED")
    p.add_argument("--job-id", required=True, metavar="J")
    p = cmd(tpl, "builds", tpl_builds, "list template builds")
    p.add_argument("--template", metavar="ID")
    cmd(tpl, "tags", tpl_tags, "list a template's tags").add_argument("template", help="template id or alias")
    p = cmd(tpl, "tag", tpl_tag, "point tags at a template's build")
    p.add_argument("target", help="template id or alias (its current build), or name:tag (the build that tag names)")
    p.add_argument("tags", nargs="+", metavar="TAG")
    p = cmd(tpl, "untag", tpl_untag, "remove tags from a template")
    p.add_argument("template", help="template id or alias")
    p.add_argument("tags", nargs="+", metavar="TAG")

    sb = groups.add_parser("sandbox", help="sandboxes").add_subparsers(dest="cmd", required=True)
    p = cmd(sb, "list", sandbox_list, "list sandboxes")
    p.add_argument("--state", help="running, paused and/or lost, comma-separated (default all)")
    p.add_argument("--metadata", action="append", metavar="K=V", help="filter; repeatable")
    p.add_argument("--template")
    cmd(sb, "info", sandbox_info, "show a sandbox").add_argument("sandbox_id")
    cmd(sb, "kill", sandbox_kill, "kill sandboxes").add_argument("sandbox_ids", nargs="+", metavar="sandbox_id")

    node = groups.add_parser("node", help="nodes").add_subparsers(dest="cmd", required=True)
    cmd(node, "list", node_list, "list nodes: state (ready, draining, lost), sandboxes, capacity, last heartbeat")
    p = cmd(node, "drain", node_drain, "place no new sandboxes on a node (what runs there stays)")
    p.add_argument("node")
    p.add_argument("--reason", metavar="TEXT", help="why, for the other operators (node list --json shows it)")
    cmd(node, "undrain", node_undrain, "place sandboxes on a drained node again").add_argument("node")
    p = cmd(node, "remove", node_remove, "forget a node (refused while sandboxes are on it)")
    p.add_argument("node")
    p.add_argument("--force", action="store_true", help="remove it anyway: its sandboxes become lost")

    team = groups.add_parser("team", help="teams").add_subparsers(dest="cmd", required=True)
    cmd(team, "create", team_create, "create a team").add_argument(
        "team", help="its id: lowercase letters, digits and '-'")
    cmd(team, "list", team_list, "list teams, with their usage/quota")
    p = cmd(team, "set-quota", team_set_quota, "change a team's limits (the ones given; 0 = unlimited)")
    p.add_argument("team")
    p.add_argument("--max-running", type=count, metavar="N", help="sandboxes running at once")
    p.add_argument("--max-vcpus", type=count, metavar="N", help="vCPUs of the running sandboxes")
    p.add_argument("--max-memory", type=memory_limit, metavar="SIZE", help="memory of the running sandboxes (4G)")
    p.add_argument("--max-paused", type=count, metavar="N", help="paused sandboxes")

    key = groups.add_parser("apikey", help="API keys").add_subparsers(dest="cmd", required=True)
    p = cmd(key, "create", apikey_create, "issue a key (printed once)")
    p.add_argument("--name", default="")
    p.add_argument("--team", default=LOCAL_TEAM, help=f"an existing team (default {LOCAL_TEAM})")
    p.add_argument("--admin", action="store_true",
                   help="the key also manages public templates and sees every team's sandboxes")
    cmd(key, "list", apikey_list, "list keys")
    cmd(key, "revoke", apikey_revoke, "revoke a key").add_argument("key_id")

    cmd(groups, "status", status, "leader and this master")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        client = CubeClient(getattr(args, "master", None), tls_dir=getattr(args, "tls_dir", None))
    except (ValueError, TlsError) as e:  # a malformed address, unusable certificate files
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        try:
            return args.fn(client, args) or 0
        except CubeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
