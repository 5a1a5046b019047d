"""Sandbox endpoints (E2B spec §2.3, plus the older SDKs' v1 paths of §8)."""

from __future__ import annotations

from urllib.parse import unquote_plus

from sanic import Blueprint, response

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P, network_pb2
from services.api import models as M
from services.api.errors import ApiError, bad_request, http_status
from services.api.routes import master_call, sandbox_id

bp = Blueprint("sandboxes")

MAX_LIST_LIMIT = 100


def parse_metadata_query(value: str | None) -> dict[str, str]:
    """The SDK's metadata filter: percent-encoded pairs, form-encoded, encoded again as a query
    value. Sanic decoded the query once; decode the whole string again, split, decode each."""
    if not value:
        return {}
    out = {}
    for pair in unquote_plus(value).split("&"):
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise bad_request(f"invalid metadata filter '{value}' (want key=value pairs)")
        out[unquote_plus(k)] = unquote_plus(v)
    return out


# A lost sandbox is listed as running (models.e2b_state), so `running` asks for both.
_STATES = {"running": (P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_LOST), "paused": (P.SANDBOX_PHASE_PAUSED,)}


def parse_states(value: str | None) -> list[P.SandboxPhase]:
    """`state`: E2B's comma-joined array of states (as the SDK sends it), each exactly as spelled."""
    if not value:
        return []
    phases: list[P.SandboxPhase] = []
    for s in value.split(","):
        if s not in _STATES:
            raise bad_request(f"invalid state '{s}' (want running or paused, comma-separated)")
        phases.extend(_STATES[s])
    return phases


# ---- create / connect / resume ----------------------------------------------------------------

async def _create(request):
    new = M.NewSandbox.parse(M.parse_body(request.body))
    rec = await master_call(request, "CreateSandbox", new.to_proto(request.ctx.client_id), slow=True)
    return response.json(M.sandbox_body(rec, request.app.ctx.settings.domain), status=201)


@bp.post("/v2/sandboxes")
async def create_v2(request):
    return await _create(request)


@bp.post("/sandboxes")
async def create_v1(request):
    return await _create(request)


async def _connect(request, raw_id: str):
    body = M.parse_body(request.body, required=False)
    timeout = M.opt_int(body, "timeout")
    # memory: false cold-boots a paused sandbox on its disk (what a filesystem-only pause always does).
    reboot = M.opt_bool(body, "memory") is False
    resp = await master_call(request, "ConnectSandbox", P.ConnectSandboxRequest(
        sandbox_id=sandbox_id(raw_id), timeout_s=timeout or 0, reboot=reboot), slow=True)
    return response.json(M.sandbox_body(resp.sandbox, request.app.ctx.settings.domain),
                         status=201 if resp.resumed else 200)


@bp.post("/v2/sandboxes/<raw_id>/connect")
async def connect_v2(request, raw_id: str):
    return await _connect(request, raw_id)


@bp.post("/sandboxes/<raw_id>/connect")
async def connect_v1(request, raw_id: str):
    return await _connect(request, raw_id)


@bp.post("/sandboxes/<raw_id>/resume")
async def resume(request, raw_id: str):
    """SDK 2.0-2.5: 201 when resumed, 409 when it was running (those SDKs take that as OK)."""
    body = M.parse_body(request.body, required=False)
    timeout = M.opt_int(body, "timeout")
    M.opt_bool(body, "autoPause")  # ignored: the sandbox keeps the lifecycle it was created with
    rec = await master_call(request, "GetSandbox", P.GetSandboxRequest(sandbox_id=sandbox_id(raw_id)))
    if rec.phase == P.SANDBOX_PHASE_RUNNING:
        raise ApiError(409, f"sandbox '{rec.sandbox_id}' is already running")
    resp = await master_call(request, "ConnectSandbox",
                             P.ConnectSandboxRequest(sandbox_id=rec.sandbox_id, timeout_s=timeout or 0), slow=True)
    return response.json(M.sandbox_body(resp.sandbox, request.app.ctx.settings.domain), status=201)


# ---- read -------------------------------------------------------------------------------------

@bp.get("/v2/sandboxes")
async def list_v2(request):
    args = request.args
    req = P.ListSandboxRecordsRequest(metadata=parse_metadata_query(args.get("metadata")),
                                      phases=parse_states(args.get("state")),
                                      limit=M.query_int(args, "limit", 1, MAX_LIST_LIMIT) or MAX_LIST_LIMIT,
                                      page_token=args.get("nextToken") or "", template=args.get("template") or "")
    order = args.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"invalid order '{order}' (want asc or desc)")
    req.ascending = order == "asc"
    if args.get("startedAfter"):
        req.started_after.CopyFrom(M.parse_time(args.get("startedAfter"), "startedAfter"))
    resp = await master_call(request, "ListSandboxRecords", req)
    headers = {"X-Next-Token": resp.next_page_token} if resp.next_page_token else {}
    return response.json([M.listed_body(r) for r in resp.sandboxes], headers=headers)


@bp.get("/sandboxes")
async def list_v1(request):
    """The v1 list: every running sandbox, unpaged (SDK 1.x)."""
    meta = parse_metadata_query(request.args.get("metadata"))
    out: list[dict] = []
    token = ""
    while True:
        resp = await master_call(request, "ListSandboxRecords", P.ListSandboxRecordsRequest(
            metadata=meta, phases=list(_STATES["running"]), limit=1000, page_token=token))
        out.extend(M.listed_body(r) for r in resp.sandboxes)
        token = resp.next_page_token
        if not token:
            return response.json(out)


@bp.get("/sandboxes/<raw_id>")
async def get_sandbox(request, raw_id: str):
    rec = await master_call(request, "GetSandbox", P.GetSandboxRequest(sandbox_id=sandbox_id(raw_id)))
    return response.json(M.detail_body(rec, request.app.ctx.settings.domain))


# ---- kill / timeouts / pause ------------------------------------------------------------------

@bp.delete("/sandboxes/<raw_id>")
async def kill(request, raw_id: str):
    await master_call(request, "KillSandboxRecord", P.KillSandboxRecordRequest(sandbox_id=sandbox_id(raw_id)))
    return response.empty(status=204)


@bp.post("/sandboxes/<raw_id>/timeout")
async def set_timeout(request, raw_id: str):
    body = M.parse_body(request.body)
    timeout = M.opt_int(body, "timeout")
    if timeout is None:
        raise bad_request("'timeout' is required (seconds)")
    await master_call(request, "SetSandboxTimeout",
                      P.SetSandboxTimeoutRequest(sandbox_id=sandbox_id(raw_id), timeout_s=timeout))
    return response.empty(status=204)


@bp.post("/sandboxes/<raw_id>/refreshes")
async def refresh(request, raw_id: str):
    body = M.parse_body(request.body, required=False)
    duration = M.opt_int(body, "duration", 0, 3600)
    await master_call(request, "SetSandboxTimeout", P.SetSandboxTimeoutRequest(
        sandbox_id=sandbox_id(raw_id), timeout_s=60 if duration is None else duration, extend_only=True))
    return response.empty(status=204)


@bp.post("/sandboxes/<raw_id>/pause")
async def pause(request, raw_id: str):
    body = M.parse_body(request.body, required=False)
    await master_call(request, "PauseSandboxRecord", P.PauseSandboxRecordRequest(
        sandbox_id=sandbox_id(raw_id), filesystem_only=M.opt_bool(body, "memory") is False,
        require_healthy_guest=bool(M.opt_bool(body, "requireHealthyGuest"))), slow=True)
    return response.empty(status=204)


# ---- metrics, logs, network -------------------------------------------------------------------

@bp.get("/sandboxes/<raw_id>/metrics")
async def metrics(request, raw_id: str):
    req = P.GetSandboxMetricsRequest(sandbox_id=sandbox_id(raw_id))
    start = M.query_int(request.args, "start", 0, M.MAX_TIMESTAMP_S)
    end = M.query_int(request.args, "end", 0, M.MAX_TIMESTAMP_S)
    if start is not None:
        req.start.FromSeconds(start)
    if end is not None:
        req.end.FromSeconds(end)
    resp = await master_call(request, "GetSandboxMetrics", req)
    return response.json([M.metric_body(m) for m in resp.metrics])


@bp.get("/sandboxes/metrics")
async def metrics_many(request):
    ids = [sandbox_id(s) for s in (request.args.get("sandbox_ids") or "").split(",") if s]
    if not ids:
        raise bad_request("query parameter 'sandbox_ids' is required")
    if len(ids) > 100:
        raise bad_request("at most 100 sandbox_ids")
    out = {}
    for sid in ids:
        try:
            resp = await master_call(request, "GetSandboxMetrics", P.GetSandboxMetricsRequest(sandbox_id=sid))
        except ApiError as e:
            if e.status == 404:
                continue
            raise
        if resp.metrics:
            out[sid] = M.metric_body(resp.metrics[-1])
    return response.json({"sandboxes": out})


async def _logs(request, raw_id: str, start_key: str):
    req = cubelet_pb2.SandboxLogsRequest(sandbox_id=sandbox_id(raw_id))
    start_ms = M.query_int(request.args, start_key, 0, M.MAX_TIMESTAMP_S * 1000 + 999)
    if start_ms is not None:
        req.since.FromMilliseconds(start_ms)
    req.limit = M.query_int(request.args, "limit", 0, 10000) or 1000
    return await master_call(request, "GetSandboxLogs", req)


@bp.get("/sandboxes/<raw_id>/logs")
async def logs_v1(request, raw_id: str):
    logs, entries = M.log_bodies(await _logs(request, raw_id, "start"))
    return response.json({"logs": logs, "logEntries": entries})


@bp.get("/v2/sandboxes/<raw_id>/logs")
async def logs_v2(request, raw_id: str):
    direction = request.args.get("direction") or "forward"
    if direction not in ("forward", "backward"):
        raise bad_request(f"invalid direction '{direction}' (want forward or backward)")
    _, entries = M.log_bodies(await _logs(request, raw_id, "cursor"))
    if direction == "backward":
        entries.reverse()
    return response.json({"logs": entries})


@bp.put("/sandboxes/<raw_id>/network")
async def update_network(request, raw_id: str):
    body = M.parse_body(request.body)
    for fixed in ("maskRequestHost", "httpsPorts"):
        if fixed in body:
            # Fixed at create, like allowPublicTraffic's token (the master keeps them on an
            # update); refused rather than ignored, so no caller believes it changed.
            raise bad_request(f"'{fixed}' is set when the sandbox is created and cannot be updated")
    policy = M.parse_network(body, body) or network_pb2.NetworkPolicy(expose_all_ports=True)
    await master_call(request, "UpdateSandboxNetwork", cubelet_pb2.UpdateNetworkRequest(
        sandbox_id=sandbox_id(raw_id), network=policy))
    return response.empty(status=204)


# ---- snapshots --------------------------------------------------------------------------------

def snapshot_body(t: P.Template) -> dict:
    """E2B's SnapshotInfo: the id with its tag (Cube keeps one build per template, `default`), and
    the names, which are the team's aliases of it."""
    return {"snapshotID": f"{t.template_id}:default", "names": [f"{a}:default" for a in t.aliases]}


@bp.post("/sandboxes/<raw_id>/snapshots")
async def create_snapshot(request, raw_id: str):
    body = M.parse_body(request.body, required=False)
    name = M.opt_str(body, "name", M.NAME_RE) or ""
    t = await master_call(request, "SnapshotSandbox", P.SnapshotSandboxRecordRequest(
        sandbox_id=sandbox_id(raw_id), name=name, filesystem_only=M.opt_bool(body, "memory") is False), slow=True)
    return response.json(snapshot_body(t), status=201)


SNAPSHOT_QUERY = frozenset({"sandboxID", "name", "limit", "nextToken"})


@bp.get("/snapshots")
async def list_snapshots(request):
    args = request.get_args(keep_blank_values=True)  # `limit=` is no number: refused, not ignored
    if unknown := sorted(set(args) - SNAPSHOT_QUERY):
        raise bad_request(f"unknown query parameter '{unknown[0]}' (want {', '.join(sorted(SNAPSHOT_QUERY))})")
    limit = M.query_int(args, "limit", 1, MAX_LIST_LIMIT) or MAX_LIST_LIMIT
    source = args.get("sandboxID") or ""
    name = (args.get("name") or "").removesuffix(":default")
    resp = await master_call(request, "ListTemplateRecords", P.ListTemplateRecordsRequest())
    snaps = sorted((t for t in resp.templates if t.base_template_id and not t.fork_base
                    and t.status == P.TEMPLATE_STATUS_READY
                    and (not source or t.source_sandbox_id == source) and (not name or name in t.aliases)),
                   key=lambda t: (-t.created_at.ToNanoseconds(), t.template_id))
    token = args.get("nextToken") or ""
    start = 0
    if token:
        try:
            start = [t.template_id for t in snaps].index(token)
        except ValueError:
            raise bad_request(f"invalid page token '{token[:100]}'") from None
    page = snaps[start:start + limit]
    more = snaps[start + limit:start + limit + 1]
    headers = {"X-Next-Token": more[0].template_id} if more else {}
    return response.json([snapshot_body(t) for t in page], headers=headers)


@bp.post("/sandboxes/<raw_id>/fork")
async def fork(request, raw_id: str):
    """E2B's fork: 201 with one entry per fork, a sandbox or the error its create met."""
    body = M.parse_body(request.body, required=False)
    count = M.opt_int(body, "count", 1, 20)
    timeout = M.opt_int(body, "timeout", 0, M.MAX_UINT32)
    # Absent is 0 for both: the master's defaults (one fork; its default timeout).
    resp = await master_call(request, "ForkSandbox", P.ForkSandboxRequest(
        sandbox_id=sandbox_id(raw_id), count=count or 0, timeout_s=timeout or 0), slow=True)
    domain = request.app.ctx.settings.domain
    out = []
    for r in resp.results:
        if r.HasField("sandbox"):
            out.append({"sandbox": M.sandbox_body(r.sandbox, domain)})
        else:
            out.append({"error": {"code": http_status(r.error_code), "message": r.error_message}})
    return response.json(out, status=201)
