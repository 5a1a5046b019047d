"""Auth: off by default (any non-empty key, everything in the local team); on with keys from
`cubemastercli apikey create`, refused once revoked. etcd keeps only a SHA-256 of each key.
Teams and ownership with auth on: test_control_teams.py."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import AuthenticationException

from tests.control.cli import cubemastercli

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def auth_cluster(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master()
    own_cluster.start_api(CUBE_AUTH="on")
    return own_cluster


def test_auth_off_accepts_any_nonempty_key(sdk_env, fresh, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", "whatever")
    sbx = Sandbox.create()
    rec = fresh.record(sbx.sandbox_id)
    assert rec["clientId"] == "local" and rec["teamId"] == "local"
    # Everything is the local team's, which acts as its own admin: it sees what an operator made.
    from sdk.client import CubeClient
    with CubeClient(fresh.masters[0].address) as op:
        other = op.create_sandbox("base").sandbox_id
    assert fresh.record(other)["teamId"] == "local"
    assert {s.sandbox_id for s in Sandbox.list().next_items()} == {sbx.sandbox_id, other}
    Sandbox.kill(other)
    sbx.kill()
    r = httpx.get(fresh.api_url + "/v2/sandboxes", headers={"X-API-KEY": ""})
    assert r.status_code == 401 and r.json()["code"] == 401


def test_auth_on_with_issued_and_revoked_keys(auth_cluster, monkeypatch):
    c = auth_cluster
    master = c.masters[0].address
    url = c.api_url + "/v2/sandboxes"
    # Without a valid key: 401 with an E2B body, whatever the key looks like.
    for key in ("whatever", "e2b_" + "0" * 40, "e2b_zz"):
        r = httpx.get(url, headers={"X-API-KEY": key})
        assert r.status_code == 401 and r.json() == {"code": 401, "message": "invalid API key"}
    assert httpx.get(url).status_code == 401

    out = cubemastercli(master, "apikey", "create", "--name", "ci")
    key = out.stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key)
    listing = json.loads(cubemastercli(master, "--json", "apikey", "list").stdout)
    assert len(listing) == 1 and listing[0]["name"] == "ci"
    key_id = listing[0]["keyId"]
    table = cubemastercli(master, "apikey", "list").stdout
    assert key_id in table and key not in table and listing[0]["mask"] in table
    # Only the hash is stored.
    dump = b"".join(c.etcd.prefix(c.prefix + "/").values())
    assert key.encode() not in dump and listing[0]["sha256"].encode() in dump

    monkeypatch.setenv("E2B_API_URL", c.api_url)
    monkeypatch.setenv("E2B_API_KEY", key)
    sbx = Sandbox.create()
    assert c.record(sbx.sandbox_id)["clientId"] == key_id
    assert [s.sandbox_id for s in Sandbox.list().next_items()] == [sbx.sandbox_id]

    cubemastercli(master, "apikey", "revoke", key_id)
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
    r = httpx.delete(c.api_url + f"/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": key})
    assert r.status_code == 401
    assert json.loads(cubemastercli(master, "--json", "apikey", "list").stdout) == []
    bad = cubemastercli(master, "apikey", "revoke", key_id, check=False)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr

    # A second key works; the health and OpenAPI documents need none.
    key2 = cubemastercli(master, "apikey", "create").stdout.strip()
    assert httpx.delete(c.api_url + f"/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": key2}).status_code == 204
    assert httpx.get(c.api_url + "/openapi.json").status_code == 200
    assert httpx.get(c.api_url + "/health").status_code == 200
