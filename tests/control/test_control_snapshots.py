"""Snapshots of sandboxes through the E2B API (POST /sandboxes/{id}/snapshots, GET /snapshots,
creates from a snapshot id, DELETE /templates/{snapshotID}): real masters and API with auth on,
the fake cubelet (TEST DOUBLE) as the node. What a team sees, names, paging, placement on the node
that holds a snapshot, and the refusals, each leaving nothing behind. The VM side is tested end to
end in tests/e2e/test_e2e_snapshots.py."""

from __future__ import annotations

import grpc
import pytest

from tests.control.teams_support import Teams

pytestmark = pytest.mark.timeout(120)


def create(t: Teams, key: str, template: str = "base") -> str:
    r = t.api(key, "POST", "/v2/sandboxes", json={"templateID": template})
    assert r.status_code == 201, r.text
    return r.json()["sandboxID"]


def snapshot(t: Teams, key: str, sid: str, **body):
    return t.api(key, "POST", f"/sandboxes/{sid}/snapshots", json=body)


def template_ids(t: Teams, key: str) -> set[str]:
    return {x["templateID"] for x in t.api(key, "GET", "/templates").json()}


def test_a_snapshot_is_a_template_of_the_team_created_from_on_its_node(teams):
    t = teams
    sid = create(t, t.a)
    r = snapshot(t, t.a, sid)
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["snapshotID"].endswith(":default") and snap["names"] == []
    tid = snap["snapshotID"].removesuffix(":default")
    assert tid in template_ids(t, t.a) and tid not in template_ids(t, t.b)
    # Listed for the team that took it only, and by its source sandbox.
    assert [s["snapshotID"] for s in t.api(t.a, "GET", "/snapshots").json()] == [snap["snapshotID"]]
    assert t.api(t.b, "GET", "/snapshots").json() == []
    assert [s["snapshotID"] for s in t.api(t.a, "GET", "/snapshots", params={"sandboxID": sid}).json()] \
        == [snap["snapshotID"]]
    assert t.api(t.a, "GET", "/snapshots", params={"sandboxID": "other"}).json() == []
    # A sandbox from it, by the id with its tag (as the SDK passes it), on the node that holds it.
    node_b = t.c.add_cubelet("node-b")
    try:
        for _ in range(4):
            new = create(t, t.a, snap["snapshotID"])
            assert t.c.record(new)["nodeId"] == "node-a"
            assert t.api(t.a, "GET", f"/sandboxes/{new}").json()["templateID"] == tid
        assert node_b.calls_of("RunSandbox") == []
        # Another team cannot use it, by id or listing.
        r = t.api(t.b, "POST", "/v2/sandboxes", json={"templateID": snap["snapshotID"]})
        assert r.status_code == 404, r.text
        # Deleted like a template (by the id the SDK has); then gone.
        r = t.api(t.a, "DELETE", f"/templates/{snap['snapshotID']}", params={"force": "true"})
        assert r.status_code == 204, r.text
        assert tid not in template_ids(t, t.a) and t.api(t.a, "GET", "/snapshots").json() == []
        assert t.api(t.a, "DELETE", f"/templates/{snap['snapshotID']}").status_code == 404
    finally:
        node_b.stop()
        t.c.cubelets.remove(node_b)


def test_names_paging_and_filters(teams):
    t = teams
    sid = create(t, t.a)
    first = snapshot(t, t.a, sid, name="nightly").json()
    assert first["names"] == ["nightly:default"]
    second = snapshot(t, t.a, sid, name="nightly").json()  # the name moves to the newer one
    assert second["names"] == ["nightly:default"] and second["snapshotID"] != first["snapshotID"]
    third = snapshot(t, t.a, sid).json()
    named = t.api(t.a, "GET", "/snapshots", params={"name": "nightly"}).json()
    assert [s["snapshotID"] for s in named] == [second["snapshotID"]]
    # The name creates from the snapshot it now names.
    new = create(t, t.a, "nightly")
    assert t.api(t.a, "GET", f"/sandboxes/{new}").json()["templateID"] == second["snapshotID"].split(":")[0]
    # Newest first, one per page.
    seen, token = [], None
    for _ in range(10):
        r = t.api(t.a, "GET", "/snapshots", params={"limit": 1, **({"nextToken": token} if token else {})})
        assert r.status_code == 200 and len(r.json()) == 1
        seen.append(r.json()[0]["snapshotID"])
        token = r.headers.get("X-Next-Token")
        if not token:
            break
    assert seen[:3] == [third["snapshotID"], second["snapshotID"], first["snapshotID"]]
    assert t.api(t.a, "GET", "/snapshots", params={"nextToken": "nope"}).status_code == 400
    # A name that is another team's or a built template's is not taken over.
    r = snapshot(t, t.a, sid, name="code-interpreter")
    assert r.status_code == 409, r.text


def test_refusals_leave_nothing(teams):
    t = teams
    node = t.c.cubelets[0]
    sid = create(t, t.a)
    before = template_ids(t, t.admin)
    for body, status in (({"memory": "no"}, 400), ({"name": "bad name!"}, 400), ({"name": 7}, 400)):
        r = snapshot(t, t.a, sid, **body)
        assert r.status_code == status and r.json()["code"] == status, r.text
    assert snapshot(t, t.b, sid).status_code == 404  # another team's sandbox
    assert snapshot(t, t.a, "nosuchsandbox0000000").status_code == 404
    assert t.api(t.a, "POST", f"/sandboxes/{sid}/pause").status_code == 204
    r = snapshot(t, t.a, sid)
    assert r.status_code == 409 and "not running" in r.json()["message"], r.text
    sid2 = create(t, t.a)
    node.fail_calls["SnapshotSandbox"] = grpc.StatusCode.INTERNAL
    try:
        r = snapshot(t, t.a, sid2)
        assert r.status_code == 503 and "SnapshotSandbox" in r.json()["message"], r.text
    finally:
        node.fail_calls.pop("SnapshotSandbox")
    assert template_ids(t, t.admin) == before  # no record of a failed snapshot


def test_fork_makes_count_sandboxes_each_alone_and_its_snapshot_goes_when_unused(teams):
    from tests.control.cluster import wait_until
    from tests.control.test_control_quotas import set_quota
    t = teams
    t.c.wipe_sandboxes()
    r = t.api(t.a, "POST", "/v2/sandboxes", json={"templateID": "base", "metadata": {"job": "7"},
                                                  "envVars": {"SEED": "1"}})
    sid = r.json()["sandboxID"]
    before = template_ids(t, t.admin)
    r = t.api(t.a, "POST", f"/sandboxes/{sid}/fork", json={"count": 3, "timeout": 120})
    assert r.status_code == 201, r.text
    forks = [x["sandbox"]["sandboxID"] for x in r.json()]
    assert len(set(forks)) == 3 and sid not in forks
    base = {t.c.record(f)["templateId"] for f in forks}
    assert len(base) == 1 and base != {"code-interpreter"}
    for f in forks:
        rec = t.c.record(f)
        assert rec["metadata"] == {"job": "7"} and rec["envVars"] == {"SEED": "1"}
    assert not base & {s["snapshotID"].split(":")[0] for s in t.api(t.a, "GET", "/snapshots").json()}
    # Each fork stands alone: over the team's quota, the ones past it fail, the others run.
    set_quota(t, "team-a", max_running=5)
    try:
        r = t.api(t.a, "POST", f"/sandboxes/{sid}/fork", json={"count": 3})
        assert r.status_code == 201, r.text
        ok = [x for x in r.json() if "sandbox" in x]
        failed = [x["error"] for x in r.json() if "error" in x]
        assert len(ok) == 1 and [e["code"] for e in failed] == [429, 429], r.json()
    finally:
        set_quota(t, "team-a", max_running=0)
    # Bad counts and a paused source: E2B-shaped refusals, no snapshot taken.
    for count in (0, 21, "2"):
        r = t.api(t.a, "POST", f"/sandboxes/{sid}/fork", json={"count": count})
        assert r.status_code == 400 and r.json()["code"] == 400, r.text
    assert t.api(t.b, "POST", f"/sandboxes/{sid}/fork", json={}).status_code == 404
    # Once no sandbox uses a fork's snapshot, the leader deletes it (orphan grace: 2 s here).
    t.c.wipe_sandboxes()
    wait_until(lambda: template_ids(t, t.admin) == before, timeout=30, what="the forks' snapshots deleted")
