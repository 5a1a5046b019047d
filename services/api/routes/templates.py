"""Template endpoints: list, get, delete, alias lookup, and builds from container images
(POST /templates, build status)."""

from __future__ import annotations

import asyncio
import tarfile

from sanic import Blueprint, response

from cube_common.build_files import HASH_RE
from sdk.gen.cube.v1 import master_pb2 as P
from services.api import models as M
from services.api.build_files import files_hash
from services.api.definitions import NewTemplate, parse_definition
from services.api.errors import ApiError, bad_request
from services.api.routes import master_call, template_ref
from services.api.routes.build_files import files_store, read_url

bp = Blueprint("templates")


@bp.get("/templates")
async def list_templates(request):
    resp = await master_call(request, "ListTemplateRecords", P.ListTemplateRecordsRequest())
    return response.json([M.template_body(t) for t in resp.templates])


@bp.post("/templates")
async def create_template(request):
    """Build a template from a container image; 202 with the ids, the build goes on."""
    new = M.NewTemplateBuild.parse(M.parse_body(request.body))
    job = await master_call(request, "CreateTemplateBuild", new.to_proto())
    return response.json({"templateID": job.template_id, "buildID": job.job_id}, status=202)


@bp.post("/v3/templates")
async def reserve_template(request):
    """E2B's `Template.build()`, first call: a template id and a build id for the caller's team under
    a name; the build starts when its definition arrives (POST /v2/templates/{id}/builds/{buildID}).
    A name the team already uses moves to the new template once its build is ready."""
    new = NewTemplate.parse(M.parse_body(request.body))
    job = await master_call(request, "CreateTemplateBuild", new.to_proto())
    return response.json({"templateID": job.template_id, "buildID": job.job_id, "public": False,
                          "names": [new.name], "aliases": [new.name], "tags": new.tags}, status=202)


@bp.post("/v2/templates/<template_id>/builds/<build_id>")
async def start_build(request, template_id: str, build_id: str):
    """E2B's `Template.build()`, last call: the definition (base, steps, start and ready command)."""
    template_id = template_ref(template_id)
    req = parse_definition(M.parse_body(request.body))
    req.job_id = build_id
    job = await master_call(request, "GetTemplateBuild", P.GetTemplateBuildRequest(job_id=build_id))
    if job.template_id != template_id:
        raise ApiError(404, f"build '{build_id}' of template '{template_id}' not found")
    await _check_copied_files(request, job.team_id, job.template_id, req)
    await master_call(request, "StartTemplateBuild", req)
    return response.empty(status=202)


async def _check_copied_files(request, team_id: str, template_id: str, req: P.StartTemplateBuildRequest) -> None:
    """Each COPY step's uploaded archive must hold what its hash says (the SDK's hash of the step's
    src and dest and the files): a mismatch is refused before any build VM starts. An archive not
    uploaded is the build's error, at its step (as E2B reports it). Archives holding directories
    are not checked: the JS SDK's hash counts a directory's size on the client's filesystem, which
    no archive carries (the Python SDK's leaves it out). A checked step carries a signed read URL
    of its archive (`files_url`): the node that runs the build may not share this API's disk."""
    store = files_store(request.app)
    for i, step in enumerate(req.build.steps):
        if step.type != "COPY" or len(step.args) < 2 or not HASH_RE.match(step.files_hash):
            continue  # the master's checks name what is wrong with it
        path = await asyncio.to_thread(store.path, team_id, step.files_hash)
        if path is None:
            continue
        actual = await asyncio.to_thread(files_hash, path, step.args[0], step.args[1])
        if actual != step.files_hash and not await asyncio.to_thread(_holds_directories, path):
            raise bad_request(f"step {i + 1} (COPY {step.args[0]}): the uploaded files do not match their hash "
                              f"{step.files_hash}; upload them again (force_upload)")
        step.files_url = await asyncio.to_thread(read_url, store, team_id, template_id, step.files_hash)


@bp.get("/templates/aliases/<alias>")
async def get_alias(request, alias: str):
    alias = template_ref(alias)
    a = await master_call(request, "ResolveTemplateAlias", P.ResolveTemplateAliasRequest(alias=alias))
    return response.json({"templateID": a.template_id, "public": not a.team_id})


@bp.get("/templates/<template_id>")
async def get_template(request, template_id: str):
    template_id = template_ref(template_id)
    t = await master_call(request, "GetTemplate", P.GetTemplateRequest(template=template_id))
    job = None
    if M.is_job_id(t.build_id):
        try:
            job = await master_call(request, "GetTemplateBuild", P.GetTemplateBuildRequest(job_id=t.build_id))
        except ApiError as e:
            if e.status != 404:  # a finished job past its retention
                raise
    return response.json(M.template_detail_body(t, job))


@bp.get("/templates/<template_id>/builds/<build_id>/status")
async def build_status(request, template_id: str, build_id: str):
    template_id = template_ref(template_id)
    offset = M.query_int(request.args, "logsOffset", 0, 1 << 31) or 0
    job = await master_call(request, "GetTemplateBuild", P.GetTemplateBuildRequest(job_id=build_id))
    if template_id != job.template_id:
        # The path may name the template by an alias.
        try:
            t = await master_call(request, "GetTemplate", P.GetTemplateRequest(template=template_id))
        except ApiError:
            t = None
        if t is None or t.template_id != job.template_id:
            raise ApiError(404, f"build '{build_id}' of template '{template_id}' not found")
    return response.json(M.build_status_body(job, offset))


@bp.delete("/templates/<template_id>")
async def delete_template(request, template_id: str):
    template_id = template_ref(template_id)
    force = (request.get_args(keep_blank_values=True).get("force", "false")).lower()
    if force not in ("true", "false"):
        raise bad_request("query parameter 'force' must be true or false")
    await master_call(request, "DeleteTemplateRecord",
                      P.DeleteTemplateRecordRequest(template=template_id, force=force == "true"), slow=True)
    return response.empty(status=204)


def _holds_directories(path) -> bool:
    with tarfile.open(path, "r:") as tf:
        return any(m.isdir() for m in tf)
