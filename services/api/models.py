"""E2B request and response bodies as dataclasses, and their mapping to and from the master's
protos. JSON keys follow the E2B OpenAPI spec exactly (camelCase, except the create request's
``allow_internet_access``)."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cube_common import host_mask, https_ports as https_port_rules
from cube_common.sizes import parse_size_mb
from cube_common.volumes import VolumeRuleError, check_mounts, check_name, normalize_path
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P, network_pb2
from services.api.errors import bad_request

MAX_UINT32 = 2**32 - 1
# Names as the master takes them, matched whole here: the master's `^...$` patterns let a
# trailing newline through (Python's `$`), which would put it in a guest's environment or a key.
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
BUILD_TEMPLATE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# writableLayerSize as the document states it (openapi.py); whitespace is Python's (str.isspace).
_WS = "[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
SIZE_RE = re.compile(f"^{_WS}*[0-9]+(\\.[0-9]+)?{_WS}*[KMGTkmgt]?([iI]?[bB])?{_WS}*$")
# The last second a protobuf Timestamp holds (9999-12-31T23:59:59Z); later ones raise ValueError.
MAX_TIMESTAMP_S = 253402300799
MIN_TIMESTAMP_S = -62135596800  # 0001-01-01T00:00:00Z


# ---- request parsing --------------------------------------------------------------------------

def parse_body(raw: bytes | None, required: bool = True) -> dict:
    """The JSON object in a request body; an absent body is {} unless it is required."""
    if not raw or not raw.strip():
        if required:
            raise bad_request("request body is required (a JSON object)")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"invalid JSON body: {e}") from e
    except RecursionError:  # nested deeper than the parser goes: no body of ours is
        raise bad_request("invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def opt_int(body: dict, key: str, lo: int = 0, hi: int = MAX_UINT32) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{key}' must be an integer")
    if v < lo or v > hi:
        raise bad_request(f"'{key}' must be between {lo} and {hi}, got {v}")
    return v


def opt_bool(body: dict, key: str) -> bool | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad_request(f"'{key}' must be a boolean")
    return v


def opt_str(body: dict, key: str, pattern: re.Pattern[str] | None = None) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad_request(f"'{key}' must be a string")
    if pattern is not None and not pattern.fullmatch(v):
        raise bad_request(f"invalid '{key}' {v[:100]!r}")
    return v


def str_map(body: dict, key: str) -> dict[str, str]:
    v = body.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise bad_request(f"'{key}' must be an object of strings")
    return v


def str_list(body: dict, key: str) -> list[str]:
    v = body.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad_request(f"'{key}' must be an array of strings")
    return v


def https_ports(net: dict) -> list[int]:
    """`network.httpsPorts`: sorted and unique, as cube_common.https_ports checks them."""
    v = net.get("httpsPorts")
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise bad_request("'httpsPorts' must be an array of integers")
    try:
        return https_port_rules.check(v)
    except https_port_rules.InvalidHttpsPorts as e:
        raise bad_request(str(e)) from None


MAX_DNS_SERVERS = 10


def dns_servers(net: dict) -> list[str]:
    """`network.dnsServers`, checked as E2B does (IPv4 addresses, at most 10). On E2B they are the
    resolvers a sandbox may reach when `allowOut` names a domain; this server refuses domains in
    `allowOut`, so the list never changes what a sandbox reaches and is not kept."""
    v = str_list(net, "dnsServers")
    if len(v) > MAX_DNS_SERVERS:
        raise bad_request(f"'dnsServers' lists more than {MAX_DNS_SERVERS} servers")
    for x in v:
        try:
            ipaddress.IPv4Address(x)
        except ValueError:
            raise bad_request(f"'dnsServers' entry {x[:100]!r} is not an IPv4 address") from None
    return v


def env_names(env: dict[str, str]) -> dict[str, str]:
    for k in env:
        if not ENV_NAME_RE.fullmatch(k):
            raise bad_request(f"invalid environment variable name {k!r}")
    return env


def content_length(request) -> int | None:
    """The request's declared body size (None: chunked); 400 when it is not a number."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request("bad Content-Length") from None


def query_int(args, key: str, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    v = args.get(key)
    if v is None:
        return None
    try:
        n = int(v)  # an empty value is no integer either
    except ValueError:
        raise bad_request(f"query parameter '{key}' must be an integer") from None
    if n < lo or n > hi:
        raise bad_request(f"query parameter '{key}' must be between {lo} and {hi}")
    return n


def parse_network(body: dict, net: object) -> network_pb2.NetworkPolicy | None:
    """E2B `allow_internet_access` and the network options ``net`` (the create body's `network`,
    or the whole update body) as a NetworkPolicy; None when the body sets neither."""
    allow = opt_bool(body, "allow_internet_access")
    net = {} if net is None else net
    if not isinstance(net, dict):
        raise bad_request("'network' must be an object")
    if allow is None and not net:
        return None
    p = network_pb2.NetworkPolicy()
    if allow is not None:
        p.allow_internet_access = allow
    if net:
        p.allow_out.extend(str_list(net, "allowOut"))
        p.deny_out.extend(str_list(net, "denyOut"))
        if opt_bool(net, "allowPublicTraffic") is False:
            p.require_traffic_token = True
        mask = opt_str(net, "maskRequestHost")
        if mask:  # "" is no mask, as on E2B
            try:
                p.mask_request_host = host_mask.check(mask)
            except host_mask.InvalidHostMask as e:
                raise bad_request(str(e)) from None
        if net.get("egressProxy") is not None:
            raise bad_request("'egressProxy' is not supported by this server")
        rules = net.get("rules")
        if rules is not None and not isinstance(rules, dict):
            raise bad_request("'rules' must be an object")
        if rules:
            # Refused, not ignored: a caller counting on a header (a credential) being added to its
            # sandbox's outbound HTTPS must learn that it is not.
            raise bad_request("'rules' (transforms of outbound HTTPS requests) are not supported by this server")
        dns_servers(net)
        if net.get("httpsPorts") is not None:
            p.https_ports.extend(https_ports(net))
    p.expose_all_ports = True  # E2B exposes every guest port through its proxy
    return p


@dataclass
class NewSandbox:
    """POST /sandboxes (v1, older SDKs) and POST /v2/sandboxes bodies."""
    template_id: str
    timeout: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    auto_pause: bool = False
    auto_resume: bool = False
    network: network_pb2.NetworkPolicy | None = None
    # autoPause with autoPauseMemory false: the timeout's pause keeps the filesystem only.
    auto_pause_filesystem_only: bool = False
    # E2B's volumeMounts: (volume name, normalized guest path) pairs.
    volume_mounts: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, body: dict) -> NewSandbox:
        tid = body.get("templateID")
        if not isinstance(tid, str) or not tid:
            raise bad_request("'templateID' is required (a string)")
        for unsupported in ("mcp", "iam"):
            if body.get(unsupported):
                raise bad_request(f"'{unsupported}' is not supported by this server")
        ar = body.get("autoResume")
        if ar is not None and not (isinstance(ar, dict) and isinstance(ar.get("enabled", False), bool)):
            raise bad_request("'autoResume' must be an object {\"enabled\": bool}")
        opt_bool(body, "secure")  # ignored (every sandbox has a token), but typed like the rest
        auto_pause = bool(opt_bool(body, "autoPause"))
        return cls(template_id=tid, timeout=opt_int(body, "timeout"), metadata=str_map(body, "metadata"),
                   env_vars=env_names(str_map(body, "envVars")), auto_pause=auto_pause,
                   auto_resume=bool((ar or {}).get("enabled", False)),
                   network=parse_network(body, body.get("network")),
                   auto_pause_filesystem_only=auto_pause and opt_bool(body, "autoPauseMemory") is False,
                   volume_mounts=parse_volume_mounts(body))

    def to_proto(self, client_id: str) -> P.CreateSandboxRequest:
        req = P.CreateSandboxRequest(template=self.template_id, timeout_s=self.timeout or 0, metadata=self.metadata,
                                     env_vars=self.env_vars, auto_pause=self.auto_pause,
                                     auto_resume=self.auto_resume, client_id=client_id,
                                     auto_pause_filesystem_only=self.auto_pause_filesystem_only)
        if self.network is not None:
            req.network.CopyFrom(self.network)
        req.volume_mounts.extend(P.SandboxVolumeMount(name=n, path=p) for n, p in self.volume_mounts)
        return req


def volume_name(name: object) -> str:
    """A volume name (or id) by cube_common.volumes' rule."""
    try:
        return check_name(name)  # type: ignore[arg-type]  # it checks the type itself
    except VolumeRuleError as e:
        raise bad_request(str(e)[:300]) from None


def volume_path(raw: str, what: str = "path") -> str:
    """A path within a volume (or a mount path), normalized by cube_common.volumes."""
    try:
        return normalize_path(raw, what=what)
    except VolumeRuleError as e:
        raise bad_request(str(e)) from None


def parse_volume_mounts(body: dict) -> list[tuple[str, str]]:
    """`volumeMounts`: [{name, path}], checked by the shared rules (cube_common.volumes)."""
    raw = body.get("volumeMounts")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("'volumeMounts' must be an array of {\"name\", \"path\"} objects")
    pairs = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("path"), str):
            raise bad_request("each of 'volumeMounts' must be an object {\"name\": string, \"path\": string}")
        pairs.append((m["name"], m["path"]))
    for name, path in pairs:
        volume_name(name)
        volume_path(path, "mount path")
    try:
        return check_mounts(pairs)
    except VolumeRuleError as e:
        raise bad_request(str(e)) from None


# ---- responses --------------------------------------------------------------------------------

def rfc3339(t: Timestamp) -> str:
    return t.ToJsonString()


def e2b_state(phase: int) -> str:
    # E2B has only these two, and its SDKs refuse any other. A lost sandbox was running when its
    # node went (and its VM may still be): "running", with `lost` and the reason beside it.
    return "running" if phase in (P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_LOST) else "paused"


def sandbox_body(rec: P.Sandbox, domain: str) -> dict:
    """The `Sandbox` object (create, connect, resume)."""
    out = {"templateID": rec.template_id, "sandboxID": rec.sandbox_id, "clientID": rec.client_id or "local",
           "envdVersion": rec.envd_version, "envdAccessToken": rec.envd_access_token,
           "trafficAccessToken": rec.traffic_access_token or None, "domain": domain}
    if rec.alias:
        out["alias"] = rec.alias
    return out


def listed_body(rec: P.Sandbox) -> dict:
    """`ListedSandbox` (GET /v2/sandboxes, GET /sandboxes)."""
    out = {"templateID": rec.template_id, "sandboxID": rec.sandbox_id, "clientID": rec.client_id or "local",
           "startedAt": rfc3339(rec.started_at), "endAt": rfc3339(rec.end_at), "cpuCount": rec.vcpus,
           "memoryMB": rec.memory_mb, "diskSizeMB": rec.disk_size_mb, "state": e2b_state(rec.phase),
           "envdVersion": rec.envd_version, "metadata": dict(rec.metadata),
           "volumeMounts": [{"name": m.name, "path": m.path} for m in rec.volume_mounts]}
    if rec.alias:
        out["alias"] = rec.alias
    if rec.node_id:  # Not E2B's (its SDKs keep unknown keys aside): where it runs or its state is kept
        out["nodeID"] = rec.node_id
    if rec.phase == P.SANDBOX_PHASE_LOST:
        # Keys E2B does not define (its SDKs keep unknown keys aside): unreachable, and why.
        out.update({"lost": True, "lostAt": rfc3339(rec.lost_at), "lostReason": rec.lost_reason})
    return out


def detail_body(rec: P.Sandbox, domain: str) -> dict:
    """`SandboxDetail` (GET /sandboxes/{id}); carries the token and domain for SDKs 1.3.1-2.5."""
    out = listed_body(rec)
    out.update({"domain": domain, "envdAccessToken": rec.envd_access_token,
                "lifecycle": {"autoResume": rec.auto_resume, "onTimeout": "pause" if rec.auto_pause else "kill"}})
    if rec.phase == P.SANDBOX_PHASE_PAUSED:  # E2B: what its pause saved, once the pause is over
        out["pauseMode"] = "filesystem" if rec.paused_filesystem_only else "full"
    if rec.HasField("network"):
        n = rec.network
        out["allowInternetAccess"] = n.allow_internet_access if n.HasField("allow_internet_access") else True
        out["network"] = {"allowOut": list(n.allow_out), "denyOut": list(n.deny_out)}
        if n.mask_request_host:
            out["network"]["maskRequestHost"] = n.mask_request_host
        if n.https_ports:
            out["network"]["httpsPorts"] = list(n.https_ports)
        if n.require_traffic_token:  # E2B's default, true, goes unsaid like the other defaults
            out["network"]["allowPublicTraffic"] = False
    else:
        out["allowInternetAccess"] = True
    return out


def metric_body(m: cubelet_pb2.SandboxMetric) -> dict:
    return {"timestamp": rfc3339(m.timestamp), "timestampUnix": m.timestamp.seconds, "cpuCount": m.cpu_count,
            "cpuUsedPct": m.cpu_used_pct, "memUsed": m.mem_used_bytes, "memTotal": m.mem_total_bytes,
            "memCache": m.mem_cache_bytes, "diskUsed": m.disk_used_bytes, "diskTotal": m.disk_total_bytes}


def log_bodies(resp: cubelet_pb2.SandboxLogsResponse) -> tuple[list[dict], list[dict]]:
    """(`SandboxLog` list, `SandboxLogEntry` list)."""
    logs = [{"timestamp": rfc3339(line.timestamp), "line": line.line} for line in resp.lines]
    entries = [{"timestamp": rfc3339(line.timestamp), "message": line.line, "level": "info", "fields": {}}
               for line in resp.lines]
    return logs, entries


def build_uuid(template_id: str, build_id: str, built_at: Timestamp) -> str:
    """E2B's id of a template's build (a UUID): a build through POST /templates has its build
    job's id; any other (the default template, one found on a node, a snapshot) one derived from
    its template id and when it was built, so a rebuild under the same id has another one. A
    tag's build (TemplateTag) is named the same way."""
    if is_job_id(build_id):
        return build_id
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cube-template:{template_id}@{built_at.ToJsonString()}"))


def is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError):
        return False


def template_build_id(t: P.Template) -> str:
    return build_uuid(t.template_id, t.build_id, t.created_at)


@dataclass
class NewTemplateBuild:
    """POST /templates: a template from a container image (this server's own body; E2B's
    Dockerfile-based template builds are not supported)."""
    build: cubelet_pb2.BuildTemplateRequest
    aliases: list[str]
    node_id: str = ""

    @classmethod
    def parse(cls, body: dict) -> NewTemplateBuild:
        for e2b in ("dockerfile", "fromImage", "fromTemplate", "steps", "startCmd", "readyCmd"):
            if e2b in body:
                raise bad_request(f"'{e2b}': E2B template definitions go to POST /v3/templates and then "
                                  "POST /v2/templates/{templateID}/builds/{buildID} (the SDK's Template.build); "
                                  "this endpoint takes a container image reference in 'image'")
        image = body.get("image")
        if not isinstance(image, str) or not image.strip():
            raise bad_request("'image' is required (a container image reference)")
        b = cubelet_pb2.BuildTemplateRequest()
        b.oci_image.reference = image.strip()
        user, password = body.get("registryUsername"), body.get("registryPassword")
        for k, v in (("registryUsername", user), ("registryPassword", password)):
            if v is not None and not isinstance(v, str):
                raise bad_request(f"'{k}' must be a string")
        if bool(user) != bool(password):
            raise bad_request("'registryUsername' and 'registryPassword' go together")
        b.oci_image.username = user or ""
        b.oci_image.password = password or ""
        b.oci_image.insecure_registry = bool(opt_bool(body, "insecureRegistry"))
        tid = body.get("templateID")
        if tid is not None and not isinstance(tid, str):
            raise bad_request("'templateID' must be a string")
        if tid and not BUILD_TEMPLATE_ID_RE.fullmatch(tid):
            raise bad_request(f"invalid template id {tid!r}: use 1-64 letters, digits, '-' or '_', starting with a "
                              "letter or digit")
        b.template_id = tid or ""
        b.vcpus = opt_int(body, "cpuCount", 1, 64) or 0
        b.memory_mb = opt_int(body, "memoryMB", 64, 1 << 20) or 0
        size = body.get("writableLayerSize")
        if size is not None:
            # parse_size_mb takes what the CLI's users type (Unicode digits, case-folded units);
            # the API takes the document's ASCII pattern, and only strings or integers.
            ok = ((isinstance(size, str) and SIZE_RE.match(size))
                  or (isinstance(size, int) and not isinstance(size, bool)))
            if not ok:
                raise bad_request("'writableLayerSize' must be a size like \"512M\" or \"1G\", or an integer of MiB")
            try:
                b.writable_layer_mb = parse_size_mb(size)
            except ValueError:
                raise bad_request("'writableLayerSize' must be more than 0 and at most 4T") from None
        ports = body.get("exposePorts")
        if ports is not None:
            if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
                raise bad_request("'exposePorts' must be an array of integers")
            if any(not 1 <= p <= 65535 for p in ports):
                raise bad_request("'exposePorts' must be ports between 1 and 65535")
            b.expose_ports.extend(ports)
        b.probe_port = opt_int(body, "probePort", 1, 65535) or 0
        path = body.get("probePath")
        if path is not None and not isinstance(path, str):
            raise bad_request("'probePath' must be a string")
        b.probe_path = path or ""
        b.env.update(env_names(str_map(body, "envVars")))
        b.cmd.extend(str_list(body, "cmd"))
        b.args.extend(str_list(body, "args"))
        b.no_memory_sharing = bool(opt_bool(body, "noMemorySharing"))
        node = body.get("nodeID")
        if node is not None and not isinstance(node, str):
            raise bad_request("'nodeID' must be a string")
        aliases = str_list(body, "aliases")
        for a in aliases:
            if not NAME_RE.fullmatch(a):
                raise bad_request(f"invalid alias {a!r}")
        return cls(build=b, aliases=aliases, node_id=node or "")

    def to_proto(self) -> P.CreateTemplateBuildRequest:
        return P.CreateTemplateBuildRequest(build=self.build, aliases=self.aliases, node_id=self.node_id)


def build_status(phase: int) -> str:
    if phase == cubelet_pb2.TEMPLATE_BUILD_PHASE_UNSPECIFIED:
        return "waiting"
    if phase == cubelet_pb2.READY:
        return "ready"
    if phase == cubelet_pb2.FAILED:
        return "error"
    return "building"


def phase_label(phase: int) -> str:
    if phase == cubelet_pb2.TEMPLATE_BUILD_PHASE_UNSPECIFIED:
        return "queued"
    return cubelet_pb2.TemplateBuildPhase.Name(phase).lower()


def _progress_text(ev) -> str:
    parts = []
    if ev.layers_total:
        parts.append(f"layers {ev.layers_done}/{ev.layers_total}")
    if ev.bytes_total:
        parts.append(f"{ev.bytes_done / (1 << 20):.1f}/{ev.bytes_total / (1 << 20):.1f} MiB")
    return f" ({', '.join(parts)})" if parts else ""


def build_log_entries(job: P.TemplateBuild) -> list[dict]:
    """The job's events as E2B `BuildLogEntry`s ({timestamp, level, message, step})."""
    out = []
    last_step = ""
    for ev in job.events:
        step = phase_label(ev.phase)
        if ev.phase == cubelet_pb2.FAILED:
            step = job.failed_step or ev.step or (phase_label(job.failed_phase) if job.failed_phase else
                                                  last_step or step)
            text = f"build failed: {ev.error or ev.message}"
            level = "error"
        elif ev.phase == cubelet_pb2.RUNNING_STEPS:
            # A template step's own output, line by line, under E2B's step label ("1".."N", "finalize").
            step, text, level = ev.step or "finalize", ev.message, "info"
            last_step = step
        else:
            text = f"{step.upper()}: {ev.message}{_progress_text(ev)}"
            level = "info"
            last_step = step
        out.append({"timestamp": rfc3339(ev.timestamp), "level": level, "message": text, "step": step})
    return out


def build_progress(job: P.TemplateBuild) -> dict:
    return {"layersDone": job.layers_done, "layersTotal": job.layers_total, "bytesDone": job.bytes_done,
            "bytesTotal": job.bytes_total}


def build_status_body(job: P.TemplateBuild, logs_offset: int = 0) -> dict:
    """GET /templates/{id}/builds/{buildID}/status: E2B's `TemplateBuildInfo` plus the phase,
    progress and times."""
    entries = build_log_entries(job)[logs_offset:]
    image = job.spec.oci_image.reference or (f"template:{job.spec.from_template.template_id}"
                                             if job.spec.HasField("from_template") else "default")
    out = {"templateID": job.template_id, "buildID": job.job_id, "status": build_status(job.phase),
           "phase": phase_label(job.phase), "message": job.message, "progress": build_progress(job),
           "nodeID": job.node_id, "image": image,
           "createdAt": rfc3339(job.created_at), "updatedAt": rfc3339(job.updated_at),
           "finishedAt": rfc3339(job.finished_at) if job.HasField("finished_at") else None,
           "logs": [f"{e['timestamp']} {e['message']}" for e in entries], "logEntries": entries}
    if job.phase == cubelet_pb2.FAILED:
        out["reason"] = {"message": job.error, "step": job.failed_step or phase_label(job.failed_phase),
                         "logEntries": [e for e in entries if e["level"] == "error"]}
    return out


def build_summary(job: P.TemplateBuild, t: P.Template) -> dict:
    """One entry of `builds` in GET /templates/{id}."""
    return {"buildID": job.job_id, "status": build_status(job.phase), "phase": phase_label(job.phase),
            "progress": build_progress(job), "createdAt": rfc3339(job.created_at),
            "updatedAt": rfc3339(job.updated_at),
            "finishedAt": rfc3339(job.finished_at) if job.HasField("finished_at") else None,
            "cpuCount": t.vcpus, "memoryMB": t.memory_mb, "diskSizeMB": t.disk_size_mb, "envdVersion": t.envd_version}


_BUILD_STATUS = {P.TEMPLATE_STATUS_BUILDING: "building", P.TEMPLATE_STATUS_READY: "ready",
                 P.TEMPLATE_STATUS_ERROR: "error", P.TEMPLATE_STATUS_UNSPECIFIED: "ready"}


def template_body(t: P.Template) -> dict:
    """`Template` (GET /templates)."""
    return {"templateID": t.template_id, "buildID": template_build_id(t), "cpuCount": t.vcpus,
            "memoryMB": t.memory_mb, "diskSizeMB": t.disk_size_mb, "public": not t.team_id, "aliases": list(t.aliases),
            "names": list(t.aliases) or [t.template_id], "createdAt": rfc3339(t.created_at),
            "updatedAt": rfc3339(t.updated_at if t.HasField("updated_at") else t.created_at), "createdBy": None,
            "lastSpawnedAt": rfc3339(t.last_spawned_at) if t.HasField("last_spawned_at") else None,
            "spawnCount": t.spawn_count, "buildCount": 1, "envdVersion": t.envd_version,
            "buildStatus": _BUILD_STATUS.get(t.status, "ready")}


def template_detail_body(t: P.Template, job: P.TemplateBuild | None = None) -> dict:
    """`TemplateWithBuilds` (GET /templates/{id}); with its build job when it has one."""
    out = template_body(t)
    if job is not None:
        out["builds"] = [build_summary(job, t)]
        return out
    out["builds"] = [{"buildID": out["buildID"], "status": out["buildStatus"], "createdAt": out["createdAt"],
                      "updatedAt": out["updatedAt"], "finishedAt": out["updatedAt"], "cpuCount": t.vcpus,
                      "memoryMB": t.memory_mb, "diskSizeMB": t.disk_size_mb, "envdVersion": t.envd_version}]
    return out


_RFC3339_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_time(value: str, name: str) -> Timestamp:
    """An RFC 3339 date-time (the document's `date-time`: a UTC offset is part of it)."""
    bad = bad_request(f"query parameter '{name}' must be an RFC 3339 date-time, with a UTC offset")
    m = _RFC3339_RE.fullmatch(value)
    if m is None:
        raise bad
    date, hours_minutes, seconds, fraction, offset = m.groups()
    # A leap second (:60) counts as the one before it: Python's datetime has none. Python keeps
    # microseconds; the rest of the fraction goes.
    text = (f"{date}T{hours_minutes}:{min(int(seconds), 59):02d}{(fraction or '')[:7]}"
            f"{'+00:00' if offset in ('Z', 'z') else offset}")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise bad from None
    t = Timestamp()
    try:
        t.FromDatetime(dt)
    except OverflowError:
        # Before 0001-01-01 or after 9999-12-31 once at UTC (a first or last day with an offset):
        # the first or last second a timestamp holds.
        t.FromSeconds(MIN_TIMESTAMP_S if dt.year == 1 else MAX_TIMESTAMP_S)
    return t
