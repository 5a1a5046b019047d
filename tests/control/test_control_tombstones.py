"""Tombstones with auth on: a deleted template's id and public aliases cannot be claimed by another
team (409, as for a live name), as a template id or as an alias; the team that owned them and
admins can claim them again; a team's own aliases leave no tombstone; and a claim checked before a
delete commits fails in the transaction rather than slipping through."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cube_common.teams import Caller
from sdk.gen.cube.v1 import master_pb2 as P
from services.master.store import NameClaim, Store
from services.master.tombstones import claim
from tests.control.cli import cubemastercli
from tests.control.teams_support import Teams, as_caller, build

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def t(teams) -> Teams:
    return teams  # the auth-on cluster of this module (conftest.py)


def start_build(t: Teams, key: str, template_id: str = "", aliases: tuple[str, ...] = ()):
    body: dict = {"image": "registry.test:5000/app:1", "exposePorts": [49999], "probePort": 49999}
    if template_id:
        body["templateID"] = template_id
    if aliases:
        body["aliases"] = list(aliases)
    return t.api(key, "POST", "/templates", json=body)


def conflict(t: Teams, key: str, template_id: str = "", aliases: tuple[str, ...] = ()) -> str:
    r = start_build(t, key, template_id, aliases)
    assert r.status_code == 409 and r.json()["code"] == 409, r.text
    return r.json()["message"]


def set_alias(t: Teams, team: str, alias: str, template_id: str = "tiny") -> P.TemplateAlias:
    ch, stub = t.c.master_stub()
    with ch:
        return stub.SetTemplateAlias(P.TemplateAlias(alias=alias, template_id=template_id),
                                     metadata=as_caller(team, "user"), timeout=10)


def tombstone(t: Teams, name: str) -> dict | None:
    return t.c.etcd.get_json(f"{t.c.prefix}/template-tombstones/{name}")


def test_a_deleted_team_templates_id_stays_its_teams(t):
    tid = build(t, t.a, templateID="ta-app", aliases=["ta-alias"])
    live = conflict(t, t.b, "ta-app")
    assert t.api(t.a, "DELETE", "/templates/ta-app").status_code == 204
    stone = tombstone(t, "ta-app")
    assert stone is not None and stone["templateId"] == tid and stone["teamId"] == "team-a" and stone["deletedAt"]
    # Team A's own alias lived in its namespace: it leaves nothing behind.
    assert tombstone(t, "ta-alias") is None
    # Another team gets what it got while the template lived, as an id and as an alias.
    assert conflict(t, t.b, "ta-app") == live == "template 'ta-app' already exists"
    assert conflict(t, t.b, aliases=("ta-app",)) == "alias 'ta-app' is already taken"
    with pytest.raises(grpc.RpcError) as e:
        set_alias(t, "team-b", "ta-app")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert t.c.etcd.get(f"{t.c.prefix}/team-aliases/team-b/ta-app") is None
    # Team A's old alias is free for team B (it only ever was team A's name for it).
    assert set_alias(t, "team-b", "ta-alias").team_id == "team-b"
    # Team A may use the name again, and so may an admin.
    assert build(t, t.a, templateID="ta-app") == "ta-app"
    assert set_alias(t, "team-a", "ta-app-2", "ta-app").template_id == "ta-app"
    assert t.api(t.a, "DELETE", "/templates/ta-app").status_code == 204
    assert build(t, t.admin, templateID="ta-app") == "ta-app"
    assert t.api(t.admin, "DELETE", "/templates/ta-app").status_code == 204
    assert (tombstone(t, "ta-app") or {}).get("teamId") == "local"  # the last owner's now


def test_a_deleted_public_templates_names_stay_public(t):
    cubemastercli(t.master, "tpl", "create-from-image", "--image", "registry.test:5000/app:1",
                  "--writable-layer-size", "512M", "--expose-port", "49999", "--probe", "49999",
                  "--template-id", "pub-app", "--alias", "pub-alias", "--wait")
    assert t.c.etcd.get_json(f"{t.c.prefix}/template-aliases/pub-alias")["templateId"] == "pub-app"
    assert t.api(t.admin, "DELETE", "/templates/pub-app").status_code == 204
    for name in ("pub-app", "pub-alias"):
        stone = tombstone(t, name)
        assert stone is not None and stone["templateId"] == "pub-app" and "teamId" not in stone  # public
    # No team may take either name, in any form.
    for key in (t.a, t.b):
        assert conflict(t, key, "pub-app") == "template 'pub-app' already exists"
        assert conflict(t, key, "pub-alias") == "template 'pub-alias' already exists"
        assert conflict(t, key, aliases=("pub-alias",)) == "alias 'pub-alias' is already taken"
    with pytest.raises(grpc.RpcError) as e:
        set_alias(t, "team-a", "pub-alias")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # An admin may (the names were the cluster's).
    assert build(t, t.admin, templateID="pub-app", aliases=["pub-alias"]) == "pub-app"
    assert t.api(t.admin, "DELETE", "/templates/pub-app").status_code == 204


def test_a_claim_fails_when_a_delete_commits_after_its_check(t):
    """The check and the write are one: a tombstone written between them fails the write."""
    user_b = Caller(team_id="team-b", admin=False)

    async def run() -> None:
        store = Store([t.c.etcd_endpoint], t.c.prefix)
        try:
            seen = await claim(store, "raced", user_b)
            assert seen == NameClaim("raced", 0)
            # Team A's template of that name is deleted now (its tombstone appears).
            await store.put_template(P.Template(template_id="raced", team_id="team-a"))
            assert await store.delete_template("raced", [], [P.TemplateTombstone(
                name="raced", template_id="raced", team_id="team-a")])
            alias = P.TemplateAlias(alias="raced", template_id="tiny", team_id="team-b")
            assert not await store.put_alias(alias, claim=seen)
            job = P.TemplateBuild(job_id="00000000-0000-4000-8000-000000000001", template_id="raced")
            ok, _ = await store.create_build(job, P.Template(template_id="raced"), seen)
            assert not ok
            assert await store.get_alias("raced", "team-b") is None and await store.get_template("raced") is None
            assert await claim(store, "raced", user_b) is None
            # The owner's fresh claim holds.
            mine = await claim(store, "raced", Caller(team_id="team-a", admin=False))
            assert mine is not None and mine.mod_revision > 0
            assert await store.put_alias(P.TemplateAlias(alias="raced", template_id="tiny", team_id="team-a"),
                                         claim=mine)
        finally:
            await store.close()

    asyncio.run(run())
