"""Template endpoints: list, get, delete, alias lookup."""

from __future__ import annotations

from sanic import Blueprint, response

from sdk.gen.cube.v1 import master_pb2 as P
from services.api import models as M
from services.api.routes import master_call

bp = Blueprint("templates")


@bp.get("/templates")
async def list_templates(request):
    resp = await master_call(request, "ListTemplateRecords", P.ListTemplateRecordsRequest())
    return response.json([M.template_body(t) for t in resp.templates])


@bp.get("/templates/aliases/<alias>")
async def get_alias(request, alias: str):
    a = await master_call(request, "ResolveTemplateAlias", P.ResolveTemplateAliasRequest(alias=alias))
    return response.json({"templateID": a.template_id, "public": False})


@bp.get("/templates/<template_id>")
async def get_template(request, template_id: str):
    t = await master_call(request, "GetTemplate", P.GetTemplateRequest(template=template_id))
    return response.json(M.template_detail_body(t))


@bp.delete("/templates/<template_id>")
async def delete_template(request, template_id: str):
    await master_call(request, "DeleteTemplateRecord", P.DeleteTemplateRecordRequest(template=template_id), slow=True)
    return response.empty(status=204)
