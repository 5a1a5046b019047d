"""Teams and ownership with auth on: two teams' keys (issued with cubemastercli, as an operator
would), the unmodified E2B SDK and raw HTTP. Another team's sandboxes, builds and templates
answer 404 exactly as unknown ones do and never leak an access token; lists hold only the
caller's team's; public templates are read-only to non-admin keys (403); aliases are per team;
team and key RPCs are admin-only; revoked and malformed keys get 401 bodies."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, SandboxNotFoundException

from sdk.gen.cube.v1 import master_pb2 as P
from tests.control.cli import cubemastercli
from tests.control.teams_support import as_caller, build, point_sdk_at

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "zzzzzzzzzzzzzzzzzzzz"  # a well-formed id nobody has


@pytest.fixture
def t(teams, monkeypatch):
    point_sdk_at(teams, monkeypatch)
    teams.c.wipe_sandboxes()
    yield teams
    teams.c.wipe_sandboxes()


def not_found(r: httpx.Response, sid: str) -> None:
    assert r.status_code == 404, (r.status_code, r.text)
    assert r.json() == {"code": 404, "message": f"sandbox '{sid}' not found"}


# ---- sandboxes ----------------------------------------------------------------------------------

def test_another_teams_sandbox_is_not_there(t):
    sbx = Sandbox.create(metadata={"owner": "a"}, **t.sdk(t.a))
    sa = sbx.sandbox_id
    token = t.c.record(sa)["envdAccessToken"]
    assert t.c.record(sa)["teamId"] == "team-a"
    b = t.sdk(t.b)

    # The SDK, as team B: every call on A's sandbox is "not found".
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sa, **b)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sa, **b)  # so B never gets a Sandbox (its files URLs, its envd token)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(sa, 30, **b)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics(sa, **b)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(sa, **b)
    assert Sandbox.kill(sa, **b) is False
    assert Sandbox.list(**b).next_items() == []
    assert Sandbox.list(query=SandboxQuery(metadata={"owner": "a"}), **b).next_items() == []

    # Raw HTTP, every route that takes a sandbox id: the body an unknown id gets, and no token.
    seen = []
    for sid in (sa, UNKNOWN):
        for method, path, body in [
            ("GET", "/sandboxes/{}", None), ("DELETE", "/sandboxes/{}", None),
            ("POST", "/sandboxes/{}/timeout", {"timeout": 30}), ("POST", "/sandboxes/{}/refreshes", {}),
            ("POST", "/sandboxes/{}/pause", {}), ("POST", "/v2/sandboxes/{}/connect", {"timeout": 30}),
            ("POST", "/sandboxes/{}/connect", {"timeout": 30}), ("POST", "/sandboxes/{}/resume", {}),
            ("GET", "/sandboxes/{}/metrics", None), ("GET", "/sandboxes/{}/logs", None),
            ("GET", "/v2/sandboxes/{}/logs", None), ("PUT", "/sandboxes/{}/network", {"allowOut": ["10.0.0.1"]}),
        ]:
            r = t.api(t.b, method, path.format(sid), json=body)
            not_found(r, sid)
            seen.append(r.text)
        # The SDK 1.x form <sandboxID>-<clientID> too.
        not_found(t.api(t.b, "GET", f"/sandboxes/{sid}-{t.a_id}"), sid)
    r = t.api(t.b, "GET", f"/sandboxes/metrics?sandbox_ids={sa}")
    assert r.status_code == 200 and r.json() == {"sandboxes": {}}
    for path in ("/v2/sandboxes", "/v2/sandboxes?state=running,paused", "/sandboxes", "/v2/sandboxes?template=base"):
        r = t.api(t.b, "GET", path)
        assert r.status_code == 200 and r.json() == [], (path, r.text)
        seen.append(r.text)
    assert not any(token in text for text in seen)

    # A's sandbox was not touched: same record, still running on the node, and A can use it.
    rec = t.c.record(sa)
    assert rec["phase"] == "SANDBOX_PHASE_RUNNING" and rec["envdAccessToken"] == token
    assert "allowOut" not in rec.get("network", {})
    assert sa in t.c.cubelets[0].ids() and not t.c.cubelets[0].calls_of("PauseSandbox")
    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING and info.metadata == {"owner": "a"}
    assert [s.sandbox_id for s in Sandbox.list(**t.sdk(t.a)).next_items()] == [sa]
    sbx.set_timeout(120)
    assert sbx.pause() is not False
    # Paused state is A's too: B cannot resume it, and it stays paused.
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sa, **b)
    assert t.c.record(sa)["phase"] == "SANDBOX_PHASE_PAUSED"
    resumed = Sandbox.connect(sa, **t.sdk(t.a))
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.kill() is True and t.c.sandbox_ids() == set()


def test_lists_hold_the_callers_team_and_admins_see_all(t):
    sa = Sandbox.create(**t.sdk(t.a)).sandbox_id
    sb = Sandbox.create(**t.sdk(t.b)).sandbox_id
    assert [s.sandbox_id for s in Sandbox.list(**t.sdk(t.a)).next_items()] == [sa]
    assert [s.sandbox_id for s in Sandbox.list(**t.sdk(t.b)).next_items()] == [sb]
    # An admin key sees (and may act on) every team's; what it creates is its own team's.
    assert {s.sandbox_id for s in Sandbox.list(**t.sdk(t.admin)).next_items()} == {sa, sb}
    assert Sandbox.get_info(sa, **t.sdk(t.admin)).sandbox_id == sa
    so = Sandbox.create(**t.sdk(t.admin)).sandbox_id
    assert t.c.record(so)["teamId"] == "local"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(so, **t.sdk(t.a))
    # The operator's CLI shows every team, with a TEAM column.
    table = cubemastercli(t.master, "sandbox", "list").stdout.splitlines()
    assert table[0].split()[:2] == ["SANDBOX", "TEAM"]
    assert {tuple(row.split()[:2]) for row in table[1:]} == {(sa, "team-a"), (sb, "team-b"), (so, "local")}
    assert Sandbox.kill(sb, **t.sdk(t.admin)) is True and sb not in t.c.sandbox_ids()


def test_records_from_before_teams_belong_to_the_local_team(t):
    """A sandbox record and an API key written before teams existed (no team, no role)."""
    sid = Sandbox.create(**t.sdk(t.admin)).sandbox_id
    key = f"{t.c.prefix}/sandboxes/{sid}"
    old = json.loads(t.c.etcd.get(key))
    old.pop("teamId")
    t.c.etcd.put(key, json.dumps(old))
    legacy_key = "e2b_" + "5" * 40
    from services.master.apikeys import digest, key_id_of
    kid = key_id_of(legacy_key)
    t.c.etcd.put(f"{t.c.prefix}/apikeys/{kid}", json.dumps(
        {"keyId": kid, "name": "old", "sha256": digest(legacy_key), "mask": "e2b_5555...5555"}))
    try:
        # The old key acts for the local team, as a user: it sees the old sandbox, not team A's.
        sa = Sandbox.create(**t.sdk(t.a)).sandbox_id
        assert [s.sandbox_id for s in Sandbox.list(**t.sdk(legacy_key)).next_items()] == [sid]
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sid, **t.sdk(t.a))
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sa, **t.sdk(legacy_key))
        assert t.api(legacy_key, "DELETE", "/templates/tiny").status_code == 403
        listed = {k["keyId"]: k for k in json.loads(cubemastercli(t.master, "--json", "apikey", "list").stdout)}
        assert listed[kid]["teamId"] == "local" and listed[kid]["role"] == "API_KEY_ROLE_USER"
    finally:
        t.c.etcd.delete(f"{t.c.prefix}/apikeys/{kid}")


# ---- templates ----------------------------------------------------------------------------------

def test_team_templates_are_private_and_aliases_per_team(t):
    ta = build(t, t.a, aliases=["my-app"])
    tb = build(t, t.b, aliases=["my-app"])
    assert ta != tb
    # Each team's `my-app` is its own; neither is public.
    for key, tid in ((t.a, ta), (t.b, tb)):
        assert t.api(key, "GET", "/templates/aliases/my-app").json() == {"templateID": tid, "public": False}
        body = t.api(key, "GET", "/templates/my-app").json()
        assert body["templateID"] == tid and body["aliases"] == ["my-app"] and body["public"] is False
        sbx = Sandbox.create("my-app", **t.sdk(key))
        assert sbx.get_info().template_id == tid
        sbx.kill()
    assert t.c.etcd.get_json(f"{t.c.prefix}/team-aliases/team-a/my-app")["templateId"] == ta
    assert t.c.etcd.get(f"{t.c.prefix}/template-aliases/my-app") is None
    # Another team's template, by id: as if it did not exist.
    job = t.c.etcd.get_json(f"{t.c.prefix}/templates/{ta}")["buildId"]
    for method, path in (("GET", f"/templates/{ta}"), ("DELETE", f"/templates/{ta}"),
                         ("GET", f"/templates/{ta}/builds/{job}/status")):
        r = t.api(t.b, method, path)
        assert r.status_code == 404 and r.json()["code"] == 404, (path, r.text)
    r = t.api(t.b, "POST", "/v2/sandboxes", json={"templateID": ta})
    assert r.status_code == 404 and r.json() == {"code": 404, "message": f"template '{ta}' not found"}
    listed = {x["templateID"]: x for x in t.api(t.b, "GET", "/templates").json()}
    assert tb in listed and ta not in listed and listed["code-interpreter"]["public"] is True
    assert {ta, tb} <= {x["templateID"] for x in t.api(t.admin, "GET", "/templates").json()}
    # A team cannot take a public alias.
    r = t.api(t.a, "POST", "/templates", json={"image": "a:1", "aliases": ["base"]})
    assert r.status_code == 409 and "alias 'base'" in r.json()["message"]
    # Deleting its own template leaves the other team's alone.
    assert t.api(t.a, "DELETE", f"/templates/{ta}").status_code == 204
    assert t.api(t.a, "GET", "/templates/aliases/my-app").status_code == 404
    assert t.api(t.b, "GET", "/templates/aliases/my-app").json()["templateID"] == tb
    assert t.api(t.b, "DELETE", "/templates/my-app").status_code == 204


def test_public_templates_are_read_only_to_teams(t):
    for key in (t.a, t.b):
        listed = {x["templateID"]: x for x in t.api(key, "GET", "/templates").json()}
        assert listed["tiny"]["public"] is True
        assert t.api(key, "GET", "/templates/aliases/base").json() == {"templateID": "code-interpreter",
                                                                     "public": True}
        for ref in ("tiny", "base", "code-interpreter"):
            r = t.api(key, "DELETE", f"/templates/{ref}")
            assert r.status_code == 403 and r.json()["code"] == 403 and "public" in r.json()["message"], r.text
        for tid in ("tiny", "base"):  # rebuilding it, under its id or its alias
            r = t.api(key, "POST", "/templates", json={"image": "evil:1", "templateID": tid})
            assert r.status_code == 403 and r.json()["code"] == 403, r.text
    assert {"tiny", "code-interpreter"} <= set(t.c.cubelets[0].templates)
    assert t.c.etcd.get_json(f"{t.c.prefix}/template-aliases/base")["templateId"] == "code-interpreter"
    # An admin key may: the public template `tiny` goes (and comes back for the other tests).
    try:
        assert t.api(t.admin, "DELETE", "/templates/tiny").status_code == 204
        assert t.api(t.a, "GET", "/templates/tiny").status_code == 404
    finally:
        t.c.cubelets[0].templates = ("code-interpreter", "tiny")
        t.c.cubelets[0].register(t.c.etcd, t.c.prefix)


# ---- the master's RPCs, by caller ---------------------------------------------------------------

def test_team_and_key_rpcs_are_admin_only(t):
    ch, stub = t.c.master_stub()
    user, admin = as_caller("team-a", "user"), as_caller("team-a", "admin")
    with ch:
        calls = [
            (stub.CreateTeam, P.CreateTeamRequest(team_id="team-x")), (stub.ListTeams, P.ListTeamsRequest()),
            (stub.CreateApiKey, P.CreateApiKeyRequest(team_id="team-a")), (stub.ListApiKeys, P.ListApiKeysRequest()),
            (stub.RevokeApiKey, P.RevokeApiKeyRequest(key_id=t.b_id)),
            (stub.ValidateApiKey, P.ValidateApiKeyRequest(key=t.b)), (stub.ListNodes, P.ListNodesRequest()),
            (stub.PutTemplate, P.PutTemplateRequest(template=P.Template(template_id="tiny"))),
            (stub.SetTeamQuota, P.SetTeamQuotaRequest(team_id="team-a", max_running=1000)),
        ]
        for rpc, req in calls:
            with pytest.raises(grpc.RpcError) as e:
                rpc(req, metadata=user, timeout=10)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, rpc
        # A public alias cannot be re-pointed by a user; its own namespace is its to use.
        with pytest.raises(grpc.RpcError) as e:
            stub.SetTemplateAlias(P.TemplateAlias(alias="base", template_id="tiny"), metadata=user, timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = stub.SetTemplateAlias(P.TemplateAlias(alias="my-tiny", template_id="tiny"), metadata=user, timeout=10)
        assert (mine.team_id, mine.template_id) == ("team-a", "tiny")
        with pytest.raises(grpc.RpcError) as e:
            stub.ResolveTemplateAlias(P.ResolveTemplateAliasRequest(alias="my-tiny"),
                                      metadata=as_caller("team-b", "user"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        t.c.etcd.delete(f"{t.c.prefix}/team-aliases/team-a/my-tiny")
        # A half-formed caller is refused, never taken for an operator.
        for md in ((("cube-role", "admin"),), (("cube-team", "team-a"),), as_caller("team-a", "root")):
            with pytest.raises(grpc.RpcError) as e:
                stub.ListTeams(P.ListTeamsRequest(), metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Admins and operators (no metadata) may.
        teams = [x.team_id for x in stub.ListTeams(P.ListTeamsRequest(), metadata=admin, timeout=10).teams]
        assert teams == ["local", "team-a", "team-b"]
        assert stub.ListTeams(P.ListTeamsRequest(), timeout=10).teams == stub.ListTeams(
            P.ListTeamsRequest(), metadata=admin, timeout=10).teams
        rec = stub.ValidateApiKey(P.ValidateApiKeyRequest(key=t.b), timeout=10)
        assert (rec.team_id, rec.role) == ("team-b", P.API_KEY_ROLE_USER)


def test_cli_teams_and_keys(t):
    assert [line.split()[0] for line in cubemastercli(t.master, "team", "list").stdout.splitlines()] == [
        "TEAM", "local", "team-a", "team-b"]
    r = cubemastercli(t.master, "team", "create", "team-a", check=False)
    assert r.returncode == 1 and "ALREADY_EXISTS" in r.stderr
    r = cubemastercli(t.master, "team", "create", "Bad/Team", check=False)
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr
    r = cubemastercli(t.master, "apikey", "create", "--team", "nobody", check=False)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "team 'nobody'" in r.stderr
    table = cubemastercli(t.master, "apikey", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["KEY", "ID", "TEAM"]
    rows = {row.split()[0]: row.split()[1:3] for row in table[1:]}
    assert rows[t.a_id] == ["team-a", "user"] and rows[t.b_id] == ["team-b", "user"]
    assert rows[t.admin_id] == ["local", "admin"]
    # The operator's template list names each template's team ("public" for none).
    cubemastercli(t.master, "tpl", "info", "tiny")  # registered from the node if it was not yet
    tpl = cubemastercli(t.master, "tpl", "list").stdout.splitlines()
    team = tpl[0].split().index("TEAM")
    assert {row.split()[0]: row.split()[team] for row in tpl[1:]}["tiny"] == "public"


# ---- keys ---------------------------------------------------------------------------------------

def test_revoked_and_malformed_keys_get_401(t):
    out = json.loads(cubemastercli(t.master, "--json", "apikey", "create", "--team", "team-b").stdout)
    key, kid = out["key"], out["apiKey"]["keyId"]
    sid = Sandbox.create(**t.sdk(key)).sandbox_id
    cubemastercli(t.master, "apikey", "revoke", kid)
    bad = [key, "e2b_zz", "whatever", "e2b_" + "0" * 40, "e2b_" + "f" * 41, "x" * 4000]
    for k in bad:
        for method, path in (("GET", "/v2/sandboxes"), ("GET", f"/sandboxes/{sid}"), ("DELETE", f"/sandboxes/{sid}"),
                             ("POST", "/v2/sandboxes"), ("GET", "/templates")):
            r = t.api(k, method, path, json={"templateID": "base"} if method == "POST" else None)
            assert r.status_code == 401 and r.json() == {"code": 401, "message": "invalid API key"}, (k, path)
    with pytest.raises(AuthenticationException):
        Sandbox.list(**t.sdk(key)).next_items()
    # Nothing changed: the sandbox is there, and team B's other key still owns it.
    assert Sandbox.get_info(sid, **t.sdk(t.b)).sandbox_id == sid


# ---- make up's key ------------------------------------------------------------------------------

def test_bootstrap_issues_then_reuses_the_local_admin_key(t, tmp_path):
    import asyncio

    from deploy import local_key
    from deploy.bootstrap import ensure_api_key
    from deploy.supervisor import NodeConfig

    cfg = NodeConfig(state_dir=tmp_path, master_addr=t.master)
    assert asyncio.run(ensure_api_key(cfg)) == "issued"
    key = local_key.read(tmp_path)
    assert key is not None
    assert asyncio.run(ensure_api_key(cfg)) == "reused" and local_key.read(tmp_path) == key
    # It is the local team's admin key: it works with auth on and may change public templates.
    assert t.api(key, "GET", "/v2/sandboxes").status_code == 200
    assert t.api(key, "POST", "/templates", json={"image": "a:1", "templateID": "tiny"}).status_code == 409
    listed = {k["keyId"]: k for k in json.loads(cubemastercli(t.master, "--json", "apikey", "list").stdout)}
    (kid,) = [k for k, v in listed.items() if v["name"] == "make-up"]
    assert (listed[kid]["teamId"], listed[kid]["role"]) == ("local", "API_KEY_ROLE_ADMIN")
    # Revoked (or lost with etcd): the next `make up` issues a new one in its place.
    cubemastercli(t.master, "apikey", "revoke", kid)
    assert asyncio.run(ensure_api_key(cfg)) == "issued"
    assert local_key.read(tmp_path) not in (None, key)
    assert t.api(key, "GET", "/v2/sandboxes").status_code == 401
