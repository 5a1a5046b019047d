"""Service endpoints: health and the OpenAPI document."""

from __future__ import annotations

from sanic import Blueprint, response

from services.api.openapi import document

bp = Blueprint("meta")


@bp.get("/health")
async def health(request):
    return response.json({"status": "ok"})


@bp.get("/openapi.json")
async def openapi(request):
    return response.json(document(request.app.ctx.settings))
