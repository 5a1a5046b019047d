"""GET /v2/sandboxes: X-Next-Token paging, order, state filter and the metadata filter exactly
as the SDK encodes it (percent-encoded pairs, form-encoded, encoded again)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState

pytestmark = pytest.mark.timeout(60)
H = {"X-API-KEY": "anything-goes-with-auth-off"}


@pytest.fixture
def seven(sdk_env, fresh):
    """Seven sandboxes created in order, with metadata that needs encoding."""
    ids = []
    for i in range(7):
        meta = {"i": str(i), "user": "a b" if i % 2 == 0 else "c"}
        if i == 3:
            meta["odd key&="] = "x&y=z%+/ü"
        ids.append(Sandbox.create(metadata=meta).sandbox_id)
        time.sleep(0.01)
    return ids


def test_sdk_pages_through_everything_newest_first(seven):
    pager = Sandbox.list(limit=3)
    pages = []
    while pager.has_next:
        pages.append([s.sandbox_id for s in pager.next_items()])
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [sid for p in pages for sid in p] == list(reversed(seven))


def test_sdk_order_asc(seven):
    pager = Sandbox.list(limit=4, order="asc")
    got = pager.next_items() + pager.next_items()
    assert not pager.has_next
    assert [s.sandbox_id for s in got] == seven


def test_next_token_header_on_the_wire(seven, cluster):
    r = httpx.get(cluster.api_url + "/v2/sandboxes", params={"limit": 5}, headers=H)
    assert r.status_code == 200 and len(r.json()) == 5
    token = r.headers["X-Next-Token"]
    r2 = httpx.get(cluster.api_url + "/v2/sandboxes", params={"limit": 5, "nextToken": token}, headers=H)
    assert r2.status_code == 200 and len(r2.json()) == 2
    assert "X-Next-Token" not in r2.headers  # last page: no header
    assert {s["sandboxID"] for s in r.json() + r2.json()} == set(seven)
    required = {"templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB",
                "state", "envdVersion"}
    assert all(required <= set(s) and s["state"] == "running" for s in r.json())


def test_sdk_metadata_filter(seven):
    got = Sandbox.list(query=SandboxQuery(metadata={"user": "a b"})).next_items()
    assert {s.sandbox_id for s in got} == {seven[i] for i in (0, 2, 4, 6)}
    got = Sandbox.list(query=SandboxQuery(metadata={"odd key&=": "x&y=z%+/ü"})).next_items()
    assert [s.sandbox_id for s in got] == [seven[3]]
    assert got[0].metadata["odd key&="] == "x&y=z%+/ü"
    got = Sandbox.list(query=SandboxQuery(metadata={"user": "a b", "i": "4"})).next_items()
    assert [s.sandbox_id for s in got] == [seven[4]]
    assert Sandbox.list(query=SandboxQuery(metadata={"user": "nobody"})).next_items() == []


def test_metadata_filter_raw_encoding(seven, cluster):
    # What the SDK sends for {"user": "a b"} (spec §2.3.7), byte for byte.
    r = httpx.get(cluster.api_url + "/v2/sandboxes?metadata=user%3Da%252520b", headers=H)
    assert r.status_code == 200 and {s["sandboxID"] for s in r.json()} == {seven[i] for i in (0, 2, 4, 6)}


def test_state_filter_and_paused_listing(seven, cluster):
    for sid in seven[:2]:
        assert Sandbox.pause(sid) is True
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert {s.sandbox_id for s in paused} == set(seven[:2]) and all(s.state == SandboxState.PAUSED for s in paused)
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert {s.sandbox_id for s in running} == set(seven[2:])
    r = httpx.get(cluster.api_url + "/v2/sandboxes", params={"state": "running,paused"}, headers=H)
    assert len(r.json()) == 7


def test_started_after_and_template_filters(seven, cluster):
    cut = datetime.fromtimestamp(time.time() + 1, UTC)
    assert Sandbox.list(query=SandboxQuery(started_after=cut)).next_items() == []
    r = httpx.get(cluster.api_url + "/v2/sandboxes", params={"template": "base"}, headers=H)
    assert len(r.json()) == 7
    r = httpx.get(cluster.api_url + "/v2/sandboxes", params={"template": "tiny"}, headers=H)
    assert r.json() == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"state": "sleeping"},
                                    {"order": "sideways"}, {"nextToken": "!!garbage!!"},
                                    {"startedAfter": "yesterday"}, {"metadata": "novalue"}])
def test_bad_list_parameters_are_400(cluster, params):
    r = httpx.get(cluster.api_url + "/v2/sandboxes", params=params, headers=H)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400 and isinstance(r.json()["message"], str)
