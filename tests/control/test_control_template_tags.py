"""Template tags (E2B's `name:tag`) through the real API and master, with auth on: assign, list,
remove; creates from `name:tag`; the dashboard's reads (count, exists, groups, assignments);
another team's template; bad names (400, nothing written); unknown tags (404); a template's tags
deleted with it; a tag whose build a rebuild replaced never resolves to the new build; tag
writes racing a delete; and the unmodified E2B SDK's `Template.assign_tags`, `get_tags` and
`remove_tags` against it."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sdk.gen.cube.v1 import master_pb2 as P
from services.master.store import Store
from tests.control.cli import cubemastercli
from tests.control.teams_support import Teams, build, point_sdk_at

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def t(teams) -> Teams:
    return teams  # the auth-on cluster of this module (conftest.py)


def tag_keys(t: Teams, tid: str) -> list[str]:
    return t.c.etcd.keys(f"{t.c.prefix}/template-tags/{tid}/")


def error(r, status: int, text: str = "") -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == status, body
    assert text in body["message"], body["message"]
    return body["message"]


def assign(t: Teams, key: str, target: str, *tags: str):
    return t.api(key, "POST", "/templates/tags", json={"target": target, "tags": list(tags)})


def remove(t: Teams, key: str, name: str, *tags: str):
    return t.api(key, "DELETE", "/templates/tags", json={"name": name, "tags": list(tags)})


def create(t: Teams, key: str, template: str):
    return t.api(key, "POST", "/v2/sandboxes", json={"templateID": template, "timeout": 60})


def listed(t: Teams, key: str, template: str) -> dict[str, dict]:
    r = t.api(key, "GET", f"/templates/{template}/tags")
    assert r.status_code == 200, r.text
    return {x["tag"]: x for x in r.json()}


def test_assign_list_resolve_remove(t):
    tid = build(t, t.a, templateID="tg-app", aliases=["tg-web"])
    bid = t.api(t.a, "GET", f"/templates/{tid}").json()["buildID"]
    # `name` (and `name:default`) is the current build; tags are lower-cased and deduplicated.
    r = assign(t, t.a, "tg-web", "v1", "Stable", "stable")
    assert r.status_code == 201, r.text
    assert r.json() == {"tags": ["stable", "v1"], "buildID": bid}
    assert assign(t, t.a, "tg-web:default", "latest").json()["buildID"] == bid
    # From a tag: the build that tag names.
    assert assign(t, t.a, "tg-web:v1", "prod").json() == {"tags": ["prod"], "buildID": bid}
    assert sorted(k.rsplit("/", 1)[1] for k in tag_keys(t, tid)) == ["latest", "prod", "stable", "v1"]
    tags = listed(t, t.a, "tg-web")
    assert list(tags) == ["default", "latest", "prod", "stable", "v1"]
    assert {x["buildID"] for x in tags.values()} == {bid} and all(x["createdAt"] for x in tags.values())
    assert listed(t, t.a, tid) == listed(t, t.a, "tg-web:v1") == tags  # by id, and a tag after the name is ignored
    # Creates from `name:tag`, by alias or id, in any case; an unknown tag is E2B's 404.
    for ref in ("tg-web:v1", "tg-web:PROD", f"{tid}:stable", "tg-web:default"):
        r = create(t, t.a, ref)
        assert r.status_code == 201 and r.json()["templateID"] == tid, (ref, r.text)
        t.api(t.a, "DELETE", f"/sandboxes/{r.json()['sandboxID']}")
    error(create(t, t.a, "tg-web:nope"), 404, "tag 'nope' of template 'tg-web' not found")
    error(create(t, t.a, "tg-web:"), 404)
    error(assign(t, t.a, "tg-web:nope", "x"), 404, "tag 'nope'")
    # What E2B's dashboard reads.
    assert t.api(t.a, "GET", "/templates/tg-web/tags/count").json() == {"total": 5}
    assert t.api(t.a, "GET", "/templates/tg-web/tags/exists", params={"tag": "V1"}).json() == {
        "exists": True, "normalizedTag": "v1"}
    assert t.api(t.a, "GET", "/templates/tg-web/tags/exists", params={"tag": "nope"}).json()["exists"] is False
    page = t.api(t.a, "GET", "/templates/tg-web/tags/groups", params={"sort": "name_asc", "tagsLimit": 2}).json()
    assert [g["tag"] for g in page["tags"]] == ["default", "latest"] and page["nextCursor"]
    assert all(g["hasMore"] is False and g["assignments"][0]["buildId"] == bid for g in page["tags"])
    rest = t.api(t.a, "GET", "/templates/tg-web/tags/groups",
                 params={"sort": "name_asc", "tagsCursor": page["nextCursor"]}).json()
    assert [g["tag"] for g in rest["tags"]] == ["prod", "stable", "v1"] and rest["nextCursor"] is None
    found = t.api(t.a, "GET", "/templates/tg-web/tags/groups", params={"search": "ST"}).json()
    assert [g["tag"] for g in found["tags"]] == ["latest", "stable"]  # latest first (assigned after stable)
    one = t.api(t.a, "GET", "/templates/tg-web/tags/v1/assignments").json()
    assert one["nextCursor"] is None and [a["buildId"] for a in one["data"]] == [bid]
    assert uuid.UUID(one["data"][0]["assignmentId"]) and one["data"][0]["assignedAt"] == tags["v1"]["createdAt"]
    assert t.api(t.a, "GET", "/templates/tg-web/tags/nope/assignments").json() == {"data": [], "nextCursor": None}
    # Remove: `default` stays, tags it does not have are no error.
    assert remove(t, t.a, "tg-web", "v1", "never-had").status_code == 204
    error(create(t, t.a, "tg-web:v1"), 404, "tag 'v1'")
    assert remove(t, t.a, "tg-web", "v1").status_code == 204
    error(remove(t, t.a, "tg-web", "default"), 400, "'default'")
    error(remove(t, t.a, "tg-web:stable", "prod"), 400, "carries a tag")
    assert list(listed(t, t.a, "tg-web")) == ["default", "latest", "prod", "stable"]
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204


def test_another_teams_template_is_not_there(t):
    tid = build(t, t.a, templateID="tg-mine", aliases=["tg-mine-alias"])
    assert assign(t, t.a, "tg-mine", "v1").status_code == 201
    for ref in ("tg-mine", "tg-mine-alias"):
        error(assign(t, t.b, ref, "v2"), 404)
        error(assign(t, t.b, f"{ref}:v1", "v2"), 404)
        error(remove(t, t.b, ref, "v1"), 404)
        error(t.api(t.b, "GET", f"/templates/{ref}/tags"), 404)
        error(t.api(t.b, "GET", f"/templates/{ref}/tags/count"), 404)
        error(t.api(t.b, "GET", f"/templates/{ref}/tags/exists", params={"tag": "v1"}), 404)
        error(t.api(t.b, "GET", f"/templates/{ref}/tags/groups"), 404)
        error(t.api(t.b, "GET", f"/templates/{ref}/tags/v1/assignments"), 404)
        error(create(t, t.b, f"{ref}:v1"), 404)
    assert sorted(k.rsplit("/", 1)[1] for k in tag_keys(t, tid)) == ["v1"]
    # Public templates: every team reads their tags, only admins change them.
    assert list(listed(t, t.b, "tiny")) == ["default"]
    error(assign(t, t.b, "tiny", "mine"), 403, "public")
    error(remove(t, t.b, "tiny", "mine"), 403, "public")
    assert assign(t, t.admin, "tiny", "ops").status_code == 201
    assert "ops" in listed(t, t.b, "tiny")
    r = create(t, t.b, "tiny:ops")
    assert r.status_code == 201, r.text
    t.api(t.b, "DELETE", f"/sandboxes/{r.json()['sandboxID']}")
    assert remove(t, t.admin, "tiny", "ops").status_code == 204
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204


@pytest.mark.parametrize("body,text", [
    ({"target": "tiny", "tags": []}, "1 to 100 tags"),
    ({"target": "tiny", "tags": "v1"}, "'tags' is required"),
    ({"target": "tiny", "tags": ["v1", 7]}, "'tags' is required"),
    ({"target": "tiny"}, "'tags' is required"),
    ({"tags": ["v1"]}, "'target' is required"),
    ({"target": "bad/name", "tags": ["v1"]}, "'target' is required"),
    ({"target": "tiny", "tags": ["bad tag"]}, "invalid tag 'bad tag'"),
    ({"target": "tiny", "tags": ["-v1"]}, "invalid tag"),
    ({"target": "tiny", "tags": ["v" * 65]}, "invalid tag"),
    ({"target": "tiny", "tags": ["v1/x"]}, "invalid tag"),
    ({"target": "tiny", "tags": ["ünïcode"]}, "invalid tag"),
    ({"target": "tiny", "tags": ["\u212a8s"]}, "invalid tag"),  # KELVIN SIGN: lower-cases to 'k'
    ({"target": "tiny", "tags": [str(uuid.uuid4())]}, "cannot be a UUID"),
    ({"target": "tiny", "tags": [uuid.uuid4().hex.upper()]}, "cannot be a UUID"),
    ({"target": "tiny", "tags": ["v1", "Default"]}, "'default' tag always names"),
    ({"target": "tiny", "tags": [f"t{i}" for i in range(101)]}, "1 to 100 tags"),
])
def test_bad_tags_are_400_and_write_nothing(t, body, text):
    error(t.api(t.admin, "POST", "/templates/tags", json=body), 400, text)
    # DELETE takes the same tags, and the template as `name`.
    named = {("name" if k == "target" else k): v for k, v in body.items()}
    error(t.api(t.admin, "DELETE", "/templates/tags", json=named), 400, text.replace("'target'", "'name'"))
    assert tag_keys(t, "tiny") == []


@pytest.mark.parametrize("path,params,text", [
    ("/templates/tiny/tags/exists", {"tag": "bad tag"}, "invalid tag"),
    ("/templates/tiny/tags/exists", {"tag": ""}, "invalid tag"),
    ("/templates/tiny/tags/exists", {}, "invalid tag"),
    ("/templates/tiny/tags/exists", {"tag": str(uuid.uuid4())}, "invalid tag"),
    (f"/templates/tiny/tags/{uuid.uuid4()}/assignments", {}, "invalid tag"),
    ("/templates/tiny/tags/v1/assignments", {"limit": 0}, "'limit'"),
    ("/templates/tiny/tags/v1/assignments", {"cursor": "nope"}, "invalid cursor"),
    ("/templates/tiny/tags/groups", {"sort": "newest"}, "invalid 'sort'"),
    ("/templates/tiny/tags/groups", {"sort": ""}, "invalid 'sort'"),
    ("/templates/tiny/tags/groups", {"search": "a b"}, "invalid 'search'"),
    ("/templates/tiny/tags/groups", {"tagsLimit": 101}, "'tagsLimit'"),
    ("/templates/tiny/tags/groups", {"assignmentLimit": "x"}, "'assignmentLimit'"),
    ("/templates/tiny/tags/groups", {"tagsCursor": "nope"}, "invalid cursor"),
    ("/templates/tiny/tags/groups", {"tagsCursor": "name_asc|2026-01-01T00:00:00Z|v1"}, "another sort"),
])
def test_bad_reads_are_400(t, path, params, text):
    error(t.api(t.a, "GET", path, params=params), 400, text)


def test_unknown_templates_and_tags_are_404(t):
    error(assign(t, t.a, "no-such-template", "v1"), 404, "not found")
    error(assign(t, t.a, "no-such-template:v1", "v2"), 404, "not found")
    error(remove(t, t.a, "no-such-template", "v1"), 404, "not found")
    error(t.api(t.a, "GET", "/templates/no-such-template/tags"), 404)
    error(create(t, t.a, "tiny:no-such-tag"), 404, "tag 'no-such-tag' of template 'tiny' not found")


def test_deleting_a_template_deletes_its_tags(t):
    tid = build(t, t.a, templateID="tg-gone")
    assert assign(t, t.a, "tg-gone", "v1", "v2").status_code == 201
    assert len(tag_keys(t, tid)) == 2
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204
    assert tag_keys(t, tid) == []
    # Built again under the same id (its team may), it starts with `default` alone.
    assert build(t, t.a, templateID="tg-gone") == tid
    assert list(listed(t, t.a, tid)) == ["default"]
    error(create(t, t.a, f"{tid}:v1"), 404, "tag 'v1'")
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204


def test_a_tag_whose_build_was_replaced_never_names_the_new_build(t):
    """An operator's re-registration is a rebuild under the same id (Cube keeps one build): the
    tag keeps naming the old build, which cannot be started, and says so; assigned again, it
    names the new one."""
    old = t.api(t.admin, "GET", "/templates/tiny").json()["buildID"]
    assert assign(t, t.admin, "tiny", "pinned").json()["buildID"] == old
    ch, stub = t.c.master_stub()
    with ch:
        tpl = stub.GetTemplate(P.GetTemplateRequest(template="tiny"), timeout=10)
        rebuilt = P.Template()
        rebuilt.CopyFrom(tpl)
        rebuilt.created_at.CopyFrom(Timestamp(seconds=tpl.created_at.seconds + 3600))
        del rebuilt.aliases[:]
        stub.PutTemplate(P.PutTemplateRequest(template=rebuilt), timeout=10)
    new = t.api(t.admin, "GET", "/templates/tiny").json()["buildID"]
    assert new != old
    msg = error(create(t, t.a, "tiny:pinned"), 404, "tag 'pinned' of template 'tiny' names the build made at")
    assert "rebuild replaced" in msg and "Assign the tag again" in msg
    error(assign(t, t.admin, "tiny:pinned", "other"), 404, "rebuild replaced")
    tags = listed(t, t.a, "tiny")
    assert (tags["pinned"]["buildID"], tags["default"]["buildID"]) == (old, new)
    assert t.api(t.a, "GET", "/templates/tiny/tags/count").json() == {"total": 1}
    assert t.api(t.a, "GET", "/templates/tiny/tags/exists", params={"tag": "pinned"}).json()["exists"] is False
    assert t.api(t.a, "GET", "/templates/tiny/tags/pinned/assignments").json()["data"] == []
    # Assigned again from the current build, it names that one.
    assert assign(t, t.admin, "tiny", "pinned").json()["buildID"] == new
    r = create(t, t.a, "tiny:pinned")
    assert r.status_code == 201, r.text
    t.api(t.a, "DELETE", f"/sandboxes/{r.json()['sandboxID']}")
    assert remove(t, t.admin, "tiny", "pinned").status_code == 204


def test_tag_writes_lose_to_a_delete_or_a_rebuild(t):
    """A write checked against the template record fails when the record changed or went
    meanwhile (Store.write_tags): no tag outlives its template or names a build it never had."""
    async def run() -> None:
        store = Store([t.c.etcd_endpoint], t.c.prefix)
        try:
            await store.put_template(P.Template(template_id="tg-raced", team_id="team-a"))
            seen = await store.get_template("tg-raced")
            assert seen is not None
            tag = P.TemplateTag(tag="v1", template_id="tg-raced")
            await store.put_template(P.Template(template_id="tg-raced", team_id="team-a", build_id="rebuilt"))
            assert not await store.write_tags(seen, put=[tag])
            now = await store.get_template("tg-raced")
            assert now is not None and await store.write_tags(now, put=[tag])
            assert await store.delete_template("tg-raced", [])
            assert not await store.write_tags(now, put=[tag])
            assert await store.list_tags("tg-raced") == []
        finally:
            await store.close()

    asyncio.run(run())


def test_too_many_tags_is_409(t):
    tid = build(t, t.a, templateID="tg-many")
    assert assign(t, t.a, tid, *(f"t{i}" for i in range(100))).status_code == 201
    error(assign(t, t.a, tid, "one-more"), 409, "at most 100")
    assert assign(t, t.a, tid, "t0").status_code == 201  # moving one it has is no new tag
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204
    assert tag_keys(t, tid) == []


def test_the_e2b_sdk_assigns_lists_and_removes_tags(t, monkeypatch):
    from e2b import Template
    from e2b.exceptions import TemplateException

    point_sdk_at(t, monkeypatch)
    tid = build(t, t.a, templateID="tg-sdk", aliases=["tg-sdk-alias"])
    bid = t.api(t.a, "GET", f"/templates/{tid}").json()["buildID"]
    info = Template.assign_tags("tg-sdk-alias:default", ["v1", "prod"], api_key=t.a)
    assert info.build_id == bid and sorted(info.tags) == ["prod", "v1"]
    got = Template.get_tags("tg-sdk-alias", api_key=t.a)
    assert [(x.tag, x.build_id) for x in got] == [("default", bid), ("prod", bid), ("v1", bid)]
    Template.remove_tags("tg-sdk-alias", "prod", api_key=t.a)
    assert [x.tag for x in Template.get_tags(tid, api_key=t.a)] == ["default", "v1"]
    with pytest.raises(TemplateException) as e:
        Template.assign_tags("tg-sdk-alias:nope", "v2", api_key=t.a)
    assert "404" in str(e.value)
    with pytest.raises(TemplateException):
        Template.get_tags("tg-sdk-alias", api_key=t.b)  # another team's: not there
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204


def test_master_rpcs_as_an_operator(t):
    """The master's RPCs as cubemastercli reaches them: the operator sees every template's tags."""
    ch, stub = t.c.master_stub()
    with ch:
        resp = stub.ListTemplateTags(P.ListTemplateTagsRequest(template="tiny"), timeout=10)
        assert resp.template_id == "tiny" and resp.tags[0].tag == "default" and resp.tags[0].current
        with pytest.raises(grpc.RpcError) as e:
            stub.AssignTemplateTags(P.AssignTemplateTagsRequest(target="tiny", tags=["default"]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli_tags(t):
    tid = build(t, t.a, templateID="tg-cli")
    out = cubemastercli(t.master, "tpl", "tag", tid, "cli-v1", "CLI-v2").stdout
    assert out.strip() == f"tagged {tid} ({tid}): cli-v1, cli-v2"
    rows = [line.split() for line in cubemastercli(t.master, "tpl", "tags", tid).stdout.splitlines()]
    assert rows[0] == ["TAG", "BUILD", "BUILT", "STATE", "ASSIGNED"]
    assert [r[0] for r in rows[1:]] == ["default", "cli-v1", "cli-v2"] and all("current" in r for r in rows[1:])
    job = t.api(t.a, "GET", f"/templates/{tid}").json()["buildID"]
    assert {r[1] for r in rows[1:]} == {job}
    listed = json.loads(cubemastercli(t.master, "--json", "tpl", "tags", tid).stdout)
    assert [(x["tag"], x.get("current")) for x in listed] == [("default", True), ("cli-v1", True), ("cli-v2", True)]
    bad = cubemastercli(t.master, "tpl", "tag", tid, "default", check=False)
    assert bad.returncode == 1 and "'default' tag always names" in bad.stderr
    out = cubemastercli(t.master, "tpl", "untag", tid, "cli-v1", "cli-v3").stdout
    assert out.strip() == f"removed from {tid}: cli-v1"
    assert [x["tag"] for x in json.loads(cubemastercli(t.master, "--json", "tpl", "tags", tid).stdout)] == [
        "default", "cli-v2"]
    assert t.api(t.a, "DELETE", f"/templates/{tid}").status_code == 204
