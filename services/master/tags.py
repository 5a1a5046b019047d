"""Template tags, E2B's `name:tag`: names for a template's builds, one TemplateTag each at
<prefix>/template-tags/<template_id>/<tag>.

On E2B a tag names one build of a template, and `default` always names its latest build: a
sandbox created from `name:tag` starts from the build the tag names, whatever was built since.
Here:

* A tag records the build it was assigned to: the template record's ``build_id`` and
  ``created_at`` at that moment (``same_build``: a rebuild under the same id changes the time).
  `default` is never stored; it always names the template's current build.
* Cube keeps one build per template (the node prunes older ones). A tag whose build a rebuild
  replaced stays, listed with the build it names (``current`` false), and never resolves to the
  new build: `name:tag` answers NOT_FOUND (``BuildReplaced``), naming the build it named and
  saying that a rebuild replaced it and how to point the tag at the current build (assign it
  again from `name`). The rebuilds that keep a template's id today are an operator's
  re-registration (PutTemplate, e.g. `make up` after the default template was rebuilt on its
  node); a team's template is rebuilt by deleting it, which deletes its tags.
* Tag writes compare the template record at the revision they checked and rewrite it unchanged
  (``Store.write_tags``): a template deleted or rebuilt meanwhile keeps no tag written for what it
  was (the write starts again from the record as it is), and tag writes of one template
  serialize, so ``MAX_TAGS`` holds. Deleting a template deletes its tags in the transaction that
  deletes its record (``Store.delete_template``).
* Names are E2B's: case-insensitive (stored lower-case), of [a-z0-9._-]; here also starting with a
  letter or digit and at most 64 long (an etcd key segment). Never a UUID (E2B reads
  `name:<uuid>` as a build id), and `default` can be neither assigned nor removed:
  INVALID_ARGUMENT.
* Who: a caller that may use a template lists its tags and creates sandboxes from `name:tag`;
  changing its tags is changing the template (``Templates.may_change``): another team's answers
  NOT_FOUND, as an unknown name does, and a public one's needs an admin (PERMISSION_DENIED).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cube_common.teams import Caller
from sdk.gen.cube.v1 import master_pb2 as P
from services.master import errors
from services.master.clock import ts
from services.master.log import get_logger
from services.master.store import Conflict, Store

if TYPE_CHECKING:
    from services.master.templates import Templates

log = get_logger("tags")

DEFAULT = "default"
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
# A tag as given, before lower-casing: ASCII only (str.lower maps some other letters into a-z).
GIVEN_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# What E2B's tag check refuses as a UUID, in our charset: the hyphenated and the bare hex form.
UUID_RE = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})\Z")
MAX_TAGS = 100          # stored tags per template (`default` aside): etcd stays small
WRITE_ATTEMPTS = 5      # against concurrent writes of the template record (spawn counts, other tags)
READY = (P.TEMPLATE_STATUS_READY, P.TEMPLATE_STATUS_UNSPECIFIED)


class BuildReplaced(errors.NotFound):
    """`name:tag` names a build a rebuild replaced: Cube keeps one build of a template, so that
    build cannot be started, and the tag never silently means the new one."""


def normalize(tag: str) -> str:
    """A tag as stored (lower-case); INVALID_ARGUMENT saying what is wrong with it."""
    t = tag.lower()
    if not GIVEN_TAG_RE.match(tag):
        raise errors.InvalidArgument(f"invalid tag {tag[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                                     "starting with a letter or digit")
    if UUID_RE.match(t):
        raise errors.InvalidArgument(f"invalid tag {tag!r}: a tag cannot be a UUID (that names a build)")
    return t


def tag_names(tags: Iterable[str], verb: str) -> list[str]:
    """The request's tags, normalized, deduplicated, sorted: at least one, never `default`."""
    out = sorted({normalize(t) for t in tags})
    if not out:
        raise errors.InvalidArgument("at least one tag is required")
    if DEFAULT in out:
        raise errors.InvalidArgument(f"the '{DEFAULT}' tag always names the template's latest build; it cannot be "
                                     f"{verb}")
    return out


def tag_records(tpl: P.Template, names: Iterable[str]) -> list[P.TemplateTag]:
    """New assignments of ``names`` to ``tpl``'s current build (its id and its time), now."""
    now = ts()
    return [P.TemplateTag(tag=n, template_id=tpl.template_id, build_id=tpl.build_id, build_created_at=tpl.created_at,
                          assigned_at=now, assignment_id=str(uuid.uuid4())) for n in names]


def same_build(tag: P.TemplateTag, tpl: P.Template) -> bool:
    """Whether ``tag`` names ``tpl``'s current build. A template registered from its node has its
    id as build id and one re-registered by an operator none: only a build job's id counts, with
    the build's time."""
    return _job(tag.build_id) == _job(tpl.build_id) and tag.build_created_at == tpl.created_at


def _job(build_id: str) -> str:
    try:
        return build_id if str(uuid.UUID(build_id)) == build_id else ""
    except ValueError:
        return ""


def _when(t) -> str:
    return t.ToJsonString() if t.seconds or t.nanos else "an unknown time"


def default_tag(tpl: P.Template) -> P.TemplateTag:
    """`default`, as listed: the current build, assigned when that build was made."""
    build = f"{tpl.template_id}/{tpl.build_id}/{tpl.created_at.ToNanoseconds()}"
    return P.TemplateTag(tag=DEFAULT, template_id=tpl.template_id, build_id=tpl.build_id,
                         build_created_at=tpl.created_at, assigned_at=tpl.created_at,
                         assignment_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cube-template-default:{build}")),
                         current=tpl.status in READY)


async def check_pinned(store: Store, tpl: P.Template, name: str, tag: str) -> None:
    """That ``tag`` of the template ``name`` resolved to names its current build; NOT_FOUND when
    the template has no such tag, BuildReplaced when a rebuild replaced the build it names."""
    rec = await store.get_tag(tpl.template_id, tag) if TAG_RE.match(tag) else None
    if rec is None:
        raise errors.NotFound(f"tag '{tag}' of template '{name}' not found")
    if not same_build(rec.value, tpl):
        raise BuildReplaced(
            f"tag '{tag}' of template '{name}' names the build made at {_when(rec.value.build_created_at)}, which a "
            f"rebuild replaced (the template's build now was made at {_when(tpl.created_at)}); Cube keeps only a "
            f"template's latest build, so the tagged one cannot be started. Assign the tag again to use the "
            f"current build (POST /templates/tags with target '{name}')")


class Tags:
    def __init__(self, store: Store, templates: Templates, max_tags: int = MAX_TAGS):
        self.store = store
        self.templates = templates
        self.max_tags = max_tags

    async def assign(self, target: str, tags: list[str], caller: Caller) -> list[P.TemplateTag]:
        """Point ``tags`` at the build ``target`` (`name`, `name:default` or `name:tag`) names."""
        names = tag_names(tags, "assigned")
        for _ in range(WRITE_ATTEMPTS):
            tpl, _alias = await self.templates.resolve(target, caller)
            self.templates.may_change(tpl, caller)
            v = await self.store.get_template(tpl.template_id)
            if v is None:
                raise errors.NotFound(f"template '{target}' not found")
            cur = v.value
            if cur.build_id != tpl.build_id or cur.created_at != tpl.created_at:
                continue  # rebuilt since it was resolved: resolve the target again
            if cur.status not in READY:
                raise errors.FailedPrecondition(f"template '{cur.template_id}' has no ready build yet; tag it once "
                                                "its build is ready")
            have = {t.value.tag for t in await self.store.list_tags(cur.template_id)}
            if len(have | set(names)) > self.max_tags:
                raise errors.FailedPrecondition(
                    f"template '{cur.template_id}' would have {len(have | set(names))} tags; at most "
                    f"{self.max_tags} (remove some first)")
            recs = tag_records(cur, names)
            if await self.store.write_tags(v, put=recs):
                log.info("template tags assigned", extra={"template_id": cur.template_id, "team_id": cur.team_id,
                                                          "tags": names, "target": target, "build_id": cur.build_id})
                for r in recs:
                    r.current = True
                return recs
        raise Conflict(f"template '{target}' kept changing while its tags were written; try again")

    async def remove(self, name: str, tags: list[str], caller: Caller) -> list[str]:
        """Remove ``tags`` from the template ``name`` (without a tag); returns those it had."""
        names = tag_names(tags, "removed")
        for _ in range(WRITE_ATTEMPTS):
            tpl, _alias, tag = await self.templates.resolve_tagged(name, caller)
            if tag:
                raise errors.InvalidArgument(f"'{name}' carries a tag: name the template alone, the tags to remove "
                                             "go in 'tags'")
            self.templates.may_change(tpl, caller)
            v = await self.store.get_template(tpl.template_id)
            if v is None:
                raise errors.NotFound(f"template '{name}' not found")
            have = {t.value.tag for t in await self.store.list_tags(tpl.template_id)}
            gone = [n for n in names if n in have]
            if not gone:
                return []
            if await self.store.write_tags(v, delete=gone):
                log.info("template tags removed", extra={"template_id": tpl.template_id, "team_id": tpl.team_id,
                                                         "tags": gone})
                return gone
        raise Conflict(f"template '{name}' kept changing while its tags were removed; try again")

    async def list(self, ref: str, caller: Caller) -> tuple[P.Template, list[P.TemplateTag]]:
        """The template ``ref`` names (a tag after it is ignored) and its tags: `default` first,
        then by name, each saying whether it names the current build."""
        tpl, _alias, _tag = await self.templates.resolve_tagged(ref, caller)
        recs = sorted((v.value for v in await self.store.list_tags(tpl.template_id)), key=lambda t: t.tag)
        for r in recs:
            r.current = same_build(r, tpl) and tpl.status in READY
        return tpl, [default_tag(tpl), *recs]
