"""Template tags, E2B's `name:tag`: assign (POST /templates/tags), remove (DELETE
/templates/tags) and list them (GET /templates/{id}/tags), and the reads E2B's dashboard makes of
them (`/tags/count`, `/tags/exists`, `/tags/groups`, `/tags/{tag}/assignments`), shaped here from
the master's one list.

The master owns the rules (services/master/tags.py: names, `default`, builds a rebuild replaced,
who may change what); this module types requests and shapes E2B's bodies. Cube keeps one build
per template, so a tag has one assignment, and "ready" tags (what the dashboard's reads count)
are those naming the template's current build. Page sizes default as E2B's do, and sizes beyond
its bounds are refused (400) rather than clamped; a cursor is only ever one this server issued
(else 400).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from urllib.parse import unquote

from google.protobuf.timestamp_pb2 import Timestamp
from sanic import Blueprint, response

from sdk.gen.cube.v1 import master_pb2 as P
from services.api import models as M
from services.api.errors import bad_request
from services.api.routes import master_call, template_ref

bp = Blueprint("template_tags")

MAX_TAGS_PER_REQUEST = 100  # the master's bound on a template's tags (services/master/tags.py)
# A tag as the master takes it (case-insensitive), and what it refuses among those: UUIDs.
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UUID_TAG_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")
SORTS = ("latest_desc", "latest_asc", "name_asc", "name_desc")
SEARCH_RE = re.compile(r"[A-Za-z0-9._-]{0,64}")
# (default, largest) page sizes, as E2B's dashboard has them.
ASSIGNMENTS_PER_GROUP = (6, 25)
GROUPS_PER_PAGE = (25, 100)
ASSIGNMENTS_PER_PAGE = (50, 100)


# ---- requests ---------------------------------------------------------------------------------

def _tag_request(body: dict, name_key: str) -> tuple[str, list[str]]:
    """`{<name_key>, tags}`: the template's name and the tags, typed (the master checks each tag)."""
    name = body.get(name_key)
    if not isinstance(name, str) or not M.NAME_RE.fullmatch(name):
        raise bad_request(f"'{name_key}' is required: a template id or alias"
                          + (", optionally with ':tag'" if name_key == "target" else ""))
    tags = body.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("'tags' is required (an array of strings)")
    if not tags or len(tags) > MAX_TAGS_PER_REQUEST:
        raise bad_request(f"'tags' must have 1 to {MAX_TAGS_PER_REQUEST} tags, got {len(tags)}")
    return name, tags


def _tag(value: str | None, name: str) -> str:
    """A tag from a query or path parameter, lower-cased as stored."""
    if value is None or not TAG_RE.fullmatch(value) or UUID_TAG_RE.fullmatch(value):
        raise bad_request(f"invalid tag in '{name}': 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit, and not a UUID")
    return value.lower()


def _limit(args, key: str, sizes: tuple[int, int]) -> int:
    n = M.query_int(args, key, 1, sizes[1])
    return sizes[0] if n is None else n


# ---- bodies -----------------------------------------------------------------------------------

def _build_id(t: P.TemplateTag) -> str:
    return M.build_uuid(t.template_id, t.build_id, t.build_created_at)


def _tag_body(t: P.TemplateTag) -> dict:
    """E2B's `TemplateTag`."""
    return {"tag": t.tag, "buildID": _build_id(t), "createdAt": M.rfc3339(t.assigned_at)}


def _assignment_body(t: P.TemplateTag) -> dict:
    """E2B's `TemplateTagAssignment`: the template record's time is when its build was made."""
    return {"assignmentId": t.assignment_id, "buildId": _build_id(t), "assignedAt": M.rfc3339(t.assigned_at),
            "buildCreatedAt": M.rfc3339(t.build_created_at), "buildFinishedAt": M.rfc3339(t.build_created_at)}


async def _tags(request, template_id: str) -> list[P.TemplateTag]:
    resp = await master_call(request, "ListTemplateTags", P.ListTemplateTagsRequest(template=template_ref(template_id)))
    return list(resp.tags)


# ---- routes -----------------------------------------------------------------------------------

@bp.post("/templates/tags")
async def assign_tags(request):
    target, tags = _tag_request(M.parse_body(request.body), "target")
    resp = await master_call(request, "AssignTemplateTags", P.AssignTemplateTagsRequest(target=target, tags=tags))
    return response.json({"tags": [t.tag for t in resp.tags], "buildID": _build_id(resp.tags[0])}, status=201)


@bp.delete("/templates/tags")
async def remove_tags(request):
    name, tags = _tag_request(M.parse_body(request.body), "name")
    await master_call(request, "RemoveTemplateTags", P.RemoveTemplateTagsRequest(name=name, tags=tags))
    return response.empty(status=204)


@bp.get("/templates/<template_id>/tags")
async def list_tags(request, template_id: str):
    return response.json([_tag_body(t) for t in await _tags(request, template_id)])


@bp.get("/templates/<template_id>/tags/count")
async def count_tags(request, template_id: str):
    return response.json({"total": sum(1 for t in await _tags(request, template_id) if t.current)})


@bp.get("/templates/<template_id>/tags/exists")
async def tag_exists(request, template_id: str):
    tag = _tag(request.get_args(keep_blank_values=True).get("tag"), "tag")
    tags = await _tags(request, template_id)
    return response.json({"exists": any(t.tag == tag and t.current for t in tags), "normalizedTag": tag})


def _cursor_time(text: str) -> int:
    t = Timestamp()
    t.FromJsonString(text)  # ValueError when it is no RFC 3339 time
    return t.ToNanoseconds()


def _after_cursor(sort: str, cursor: str | None) -> Callable[[P.TemplateTag], bool]:
    """Which tags come after a groups cursor (`<sort>|<latest assignment>|<tag>`, as E2B's)."""
    if not cursor:
        return lambda t: True
    parts = cursor.split("|")
    if len(parts) != 3 or not parts[2] or not SEARCH_RE.fullmatch(parts[2]):
        raise bad_request("invalid cursor: pass the nextCursor of the previous page as it came")
    if parts[0] != sort:
        raise bad_request("invalid cursor: it was issued for another sort; start again without it")
    try:
        at = _cursor_time(parts[1])
    except ValueError:
        raise bad_request("invalid cursor: pass the nextCursor of the previous page as it came") from None
    tag = parts[2]
    ns: Callable[[P.TemplateTag], int] = lambda t: t.assigned_at.ToNanoseconds()  # noqa: E731
    return {"latest_desc": lambda t: ns(t) < at or (ns(t) == at and t.tag > tag),
            "latest_asc": lambda t: ns(t) > at or (ns(t) == at and t.tag > tag),
            "name_asc": lambda t: t.tag > tag,
            "name_desc": lambda t: t.tag < tag}[sort]


def _sorted(tags: list[P.TemplateTag], sort: str) -> list[P.TemplateTag]:
    if sort.startswith("name"):
        return sorted(tags, key=lambda t: t.tag, reverse=sort == "name_desc")
    sign = -1 if sort == "latest_desc" else 1
    return sorted(tags, key=lambda t: (sign * t.assigned_at.ToNanoseconds(), t.tag))


@bp.get("/templates/<template_id>/tags/groups")
async def tag_groups(request, template_id: str):
    """E2B's `TemplateTagGroupsResponse`: the ready tags, each with its assignments (one here)."""
    args = request.get_args(keep_blank_values=True)  # `sort=` is no sort: refused, not ignored
    sort = args.get("sort", "latest_desc")
    if sort not in SORTS:
        raise bad_request(f"invalid 'sort' {sort[:40]!r}: one of {', '.join(SORTS)}")
    search = args.get("search") or ""
    if not SEARCH_RE.fullmatch(search):
        raise bad_request("invalid 'search': at most 64 letters, digits, '.', '_' or '-'")
    search = search.lower()
    per_group = _limit(args, "assignmentLimit", ASSIGNMENTS_PER_GROUP)
    limit = _limit(args, "tagsLimit", GROUPS_PER_PAGE)
    after = _after_cursor(sort, args.get("tagsCursor"))
    tags = [t for t in await _tags(request, template_id) if t.current and search in t.tag and after(t)]
    page = _sorted(tags, sort)
    more = len(page) > limit
    page = page[:limit]
    last = page[-1] if page else None
    return response.json({
        "tags": [{"tag": t.tag, "assignments": [_assignment_body(t)][:per_group], "hasMore": False} for t in page],
        "nextCursor": f"{sort}|{M.rfc3339(last.assigned_at)}|{last.tag}" if more and last else None})


@bp.get("/templates/<template_id>/tags/<tag>/assignments")
async def tag_assignments(request, template_id: str, tag: str):
    """E2B's `TemplateTagAssignmentsResponse`: the tag's one assignment while it names the current
    build; none for a tag the template does not have (as E2B)."""
    tag = _tag(unquote(tag), "tag")
    args = request.get_args(keep_blank_values=True)
    _limit(args, "limit", ASSIGNMENTS_PER_PAGE)  # typed; a page holds the one there is
    cursor = args.get("cursor")
    before: Callable[[P.TemplateTag], bool] = lambda t: True  # noqa: E731
    if cursor:
        at, _, aid = cursor.partition("|")
        try:
            at_ns, aid = _cursor_time(at), str(uuid.UUID(aid))
        except ValueError:
            raise bad_request("invalid cursor: pass the nextCursor of the previous page as it came") from None
        before = lambda t: (t.assigned_at.ToNanoseconds(), t.assignment_id) < (at_ns, aid)  # noqa: E731
    data = [_assignment_body(t) for t in await _tags(request, template_id) if t.tag == tag and t.current and before(t)]
    return response.json({"data": data, "nextCursor": None})
