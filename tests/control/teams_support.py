"""Helpers for the tests of teams (test_control_teams.py, test_control_quotas.py,
test_control_tombstones.py): an auth-on cluster's teams and keys issued with cubemastercli as an
operator would, calls as one key, template builds as one team, and gRPC metadata naming a caller."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from cube_common.teams import ROLE_METADATA, TEAM_METADATA
from tests.control.cli import cubemastercli
from tests.control.cluster import Cluster


class Teams:
    """The auth-on cluster and its keys: team-a and team-b (users), and the local team's admin."""

    def __init__(self, cluster: Cluster):
        self.c = cluster
        self.master = cluster.masters[0].address
        for team in ("team-a", "team-b"):
            cubemastercli(self.master, "team", "create", team)
        self.a, self.a_id = self._key("a", "--team", "team-a")
        self.b, self.b_id = self._key("b", "--team", "team-b")
        self.admin, self.admin_id = self._key("ops", "--admin")

    def _key(self, name: str, *args: str) -> tuple[str, str]:
        out = json.loads(cubemastercli(self.master, "--json", "apikey", "create", "--name", name, *args).stdout)
        return out["key"], out["apiKey"]["keyId"]

    def api(self, key: str, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.c.api_url + path, headers={"X-API-KEY": key}, timeout=30, **kw)

    def sdk(self, key: str) -> dict:
        """The SDK's connection options for one key (the URL comes from the environment)."""
        return {"api_key": key}


def point_sdk_at(teams: Teams, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unmodified E2B SDK talks to this cluster's API, with no key of its own."""
    monkeypatch.setenv("E2B_API_URL", teams.c.api_url)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    for var in ("E2B_DEBUG", "E2B_SANDBOX_URL", "E2B_DOMAIN"):
        monkeypatch.delenv(var, raising=False)


def build(t: Teams, key: str, **body) -> str:
    """POST /templates as ``key``'s team; returns the template id once it is ready."""
    r = t.api(key, "POST", "/templates", json={"image": "registry.test:5000/app:1", "writableLayerSize": "512M",
                                              "exposePorts": [49999], "probePort": 49999, **body})
    assert r.status_code == 202, r.text
    tid, bid = r.json()["templateID"], r.json()["buildID"]
    deadline = time.monotonic() + 20
    while (st := t.api(key, "GET", f"/templates/{tid}/builds/{bid}/status").json())["status"] != "ready":
        assert st["status"] in ("waiting", "building") and time.monotonic() < deadline, st
        time.sleep(0.05)
    return tid


def as_caller(team: str, role: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata naming a caller, as cube-api sends it."""
    return ((TEAM_METADATA, team), (ROLE_METADATA, role))
