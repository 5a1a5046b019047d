"""Per-team quotas with auth on: limits set with cubemastercli, refusals as E2B-shaped 429s that
the unmodified E2B SDK raises as RateLimitException, counts of the team's own sandboxes only,
pause and resume against the running and paused limits, and concurrent creates (through one
master and through two) that never exceed a limit."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from e2b import Sandbox, SandboxState
from e2b.exceptions import RateLimitException

from sdk.client import CubeClient
from sdk.gen.cube.v1 import master_pb2 as P
from services.master.store import Conflict, Store, TeamGuard
from tests.control.cli import cubemastercli
from tests.control.cluster import Cluster, wait_until
from tests.control.teams_support import Teams, as_caller, point_sdk_at

pytestmark = pytest.mark.timeout(120)

TEAMS = ("team-a", "team-b", "local")


@pytest.fixture(scope="module")
def teams(etcd_server):
    c = Cluster(etcd_server.endpoint)
    try:
        c.add_cubelet("node-a")
        c.start_master()
        c.start_master(wait_leader=False)  # a standby: it serves creates as well
        c.start_api(CUBE_AUTH="on")
        yield Teams(c)
    finally:
        c.stop()


def set_quota(t: Teams, team: str, **limits: int) -> P.Team:
    ch, stub = t.c.master_stub()
    with ch:
        return stub.SetTeamQuota(P.SetTeamQuotaRequest(team_id=team, **limits), timeout=10)


@pytest.fixture
def t(teams, monkeypatch):
    point_sdk_at(teams, monkeypatch)
    teams.c.wipe_sandboxes()
    yield teams
    for team in TEAMS:
        set_quota(teams, team, max_running=0, max_vcpus=0, max_memory_mb=0, max_paused=0)
    teams.c.wipe_sandboxes()


def refused(t: Teams, key: str, method: str, path: str, body: dict | None = None) -> str:
    """The request answers an E2B-shaped 429 that tells the SDK not to retry; its message."""
    r = t.api(key, method, path, json=body if body is not None else {})
    assert r.status_code == 429, (r.status_code, r.text)
    assert set(r.json()) == {"code", "message"} and r.json()["code"] == 429
    assert r.headers["Should-Retry"] == "false"
    return r.json()["message"]


def team_sandboxes(t: Teams, team: str, phase: str | None = None) -> set[str]:
    return {sid for sid in t.c.sandbox_ids()
            if (rec := t.c.record(sid)) and rec.get("teamId") == team
            and (phase is None or rec["phase"] == f"SANDBOX_PHASE_{phase}")}


# ---- refusals -----------------------------------------------------------------------------------

def test_running_quota_gives_429_and_the_sdk_raises_rate_limit(t):
    set_quota(t, "team-a", max_running=2)
    first = Sandbox.create(**t.sdk(t.a))
    Sandbox.create(**t.sdk(t.a))
    with pytest.raises(RateLimitException) as e:
        Sandbox.create(**t.sdk(t.a))
    assert "team 'team-a' would exceed its quota of 2 running sandboxes" in str(e.value)
    msg = refused(t, t.a, "POST", "/v2/sandboxes", {"templateID": "base"})
    assert "2 in use" in msg
    refused(t, t.a, "POST", "/sandboxes", {"templateID": "base"})  # the v1 path too
    assert len(team_sandboxes(t, "team-a")) == 2  # nothing was written for the refusals
    # Only team A's own sandboxes count: team B and the local admin are not limited by it.
    for key in (t.b, t.b, t.b, t.admin):
        Sandbox.create(**t.sdk(key))
    # A kill frees the slot at once.
    assert first.kill() is True
    Sandbox.create(**t.sdk(t.a))
    with pytest.raises(RateLimitException):
        Sandbox.create(**t.sdk(t.a))


def test_vcpu_and_memory_quotas(t):
    # Every sandbox of the fake node has 1 vCPU and 512 MiB.
    set_quota(t, "team-a", max_vcpus=2)
    Sandbox.create(**t.sdk(t.a))
    Sandbox.create(**t.sdk(t.a))
    msg = refused(t, t.a, "POST", "/v2/sandboxes", {"templateID": "base"})
    assert "quota of 2 vCPUs of running sandboxes (2 in use, this needs 1 more)" in msg
    set_quota(t, "team-a", max_vcpus=0, max_memory_mb=1536)
    Sandbox.create(**t.sdk(t.a))
    with pytest.raises(RateLimitException) as e:
        Sandbox.create(**t.sdk(t.a))
    assert "quota of 1536 MiB of memory of running sandboxes (1536 in use, this needs 512 more)" in str(e.value)


def test_pause_and_resume_move_a_sandbox_between_the_limits(t):
    set_quota(t, "team-a", max_running=1, max_paused=1)
    a = Sandbox.create(**t.sdk(t.a))
    with pytest.raises(RateLimitException):
        Sandbox.create(**t.sdk(t.a))
    # Paused, it holds a paused slot and no running one.
    assert a.pause() is not False
    b = Sandbox.create(**t.sdk(t.a))
    # Resuming A would make two running: refused, and A stays paused.
    with pytest.raises(RateLimitException) as e:
        Sandbox.connect(a.sandbox_id, **t.sdk(t.a))
    assert "running sandboxes" in str(e.value)
    for path in ("/v2/sandboxes/{}/connect", "/sandboxes/{}/connect", "/sandboxes/{}/resume"):
        refused(t, t.a, "POST", path.format(a.sandbox_id), {"timeout": 30})
    assert t.c.record(a.sandbox_id)["phase"] == "SANDBOX_PHASE_PAUSED"
    assert not t.c.cubelets[0].calls_of("ResumeSandbox")
    # Pausing B would make two paused: refused, and B keeps running.
    with pytest.raises(RateLimitException) as e:
        b.pause()
    assert "team 'team-a' would exceed its quota of 1 paused sandboxes" in str(e.value)
    refused(t, t.a, "POST", f"/sandboxes/{b.sandbox_id}/pause")
    assert t.c.record(b.sandbox_id)["phase"] == "SANDBOX_PHASE_RUNNING"
    assert b.get_info().state == SandboxState.RUNNING
    # Once B is gone, A may run again, and then the paused slot it held is free.
    b.kill()
    resumed = Sandbox.connect(a.sandbox_id, **t.sdk(t.a))
    assert resumed.get_info().state == SandboxState.RUNNING
    # Another team's paused sandboxes do not count against team A's.
    for _ in range(2):
        assert Sandbox.create(**t.sdk(t.b)).pause() is not False
    assert resumed.pause() is not False
    assert team_sandboxes(t, "team-a", "PAUSED") == {a.sandbox_id}


def test_a_timeout_pause_over_the_paused_quota_kills(t):
    set_quota(t, "team-a", max_paused=1)
    kept = Sandbox.create(**t.sdk(t.a))
    assert kept.pause() is not False
    late = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause"}, **t.sdk(t.a))
    assert t.c.record(late.sandbox_id)["autoPause"] is True
    # The leader's timeout finds no paused slot: the sandbox ends rather than run on.
    wait_until(lambda: t.c.record(late.sandbox_id) is None, timeout=15, what="the late sandbox killed")
    assert late.sandbox_id not in t.c.cubelets[0].ids()
    assert t.c.record(kept.sandbox_id)["phase"] == "SANDBOX_PHASE_PAUSED"


def test_operators_creates_belong_to_local_and_are_not_counted(t):
    set_quota(t, "local", max_running=1, max_paused=1)
    with CubeClient(t.master) as cube:
        ops = [cube.create_sandbox("base").sandbox_id for _ in range(3)]
        assert cube.pause_sandbox(ops[0]).phase == P.SANDBOX_PHASE_PAUSED
        assert cube.pause_sandbox(ops[1]).phase == P.SANDBOX_PHASE_PAUSED
        for sid in ops:
            rec = t.c.record(sid)
            assert rec["teamId"] == "local" and rec["quotaExempt"] is True
        # The local team's own keys have their one running slot and one paused slot.
        mine = Sandbox.create(**t.sdk(t.admin))
        assert "quotaExempt" not in t.c.record(mine.sandbox_id)
        with pytest.raises(RateLimitException):
            Sandbox.create(**t.sdk(t.admin))
        assert mine.pause() is not False
        assert cube.connect_sandbox(ops[0]).resumed is True
        local = next(x for x in cube.list_teams() if x.team_id == "local")
        assert (local.usage.running, local.usage.paused) == (0, 1)


# ---- races --------------------------------------------------------------------------------------

def outcomes(results: list[BaseException | None]) -> tuple[int, int]:
    ok = sum(r is None for r in results)
    limited = sum(r is not None for r in results)
    return ok, limited


def test_concurrent_creates_at_the_limit_never_exceed_it(t):
    set_quota(t, "team-a", max_running=3)
    t.c.cubelets[0].run_delay_s = 0.3  # every create is in flight while the others are admitted

    def create(_: int) -> BaseException | None:
        try:
            Sandbox.create(**t.sdk(t.a))
            return None
        except RateLimitException as e:
            return e

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create, range(10)))
    assert outcomes(results) == (3, 7), results
    assert len(team_sandboxes(t, "team-a")) == 3


def test_concurrent_creates_through_two_masters_never_exceed_it(t):
    """Each master serializes its own admissions; only the guard in etcd orders the two."""
    set_quota(t, "team-a", max_running=3)
    channels = [t.c.master_stub(m) for m in t.c.masters]
    n = 16
    start = threading.Barrier(n)

    def create(i: int) -> BaseException | None:
        _, stub = channels[i % 2]
        start.wait()
        try:
            stub.CreateSandbox(P.CreateSandboxRequest(template="base"), metadata=as_caller("team-a", "user"),
                               timeout=30)
            return None
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            return e

    try:
        for _ in range(6):  # rounds: without the guard, some of them let a fourth in (seen about half)
            t.c.wipe_sandboxes()
            t.c.cubelets[0].run_delay_s = 0.3
            with ThreadPoolExecutor(n) as pool:
                results = list(pool.map(create, range(n)))
            assert outcomes(results) == (3, n - 3), results
            assert len(team_sandboxes(t, "team-a")) == 3
    finally:
        for ch, _ in channels:
            ch.close()


def test_an_admission_counted_before_another_commits_is_refused_by_etcd(t):
    """The guard itself: a write whose count predates the team's last admission fails."""
    set_quota(t, "team-a", max_running=5)

    async def run() -> None:
        store = Store([t.c.etcd_endpoint], t.c.prefix)
        try:
            team = await store.team_record("team-a")
            assert team is not None
            counted = TeamGuard(team.value, team.mod_revision)
            first = P.Sandbox(sandbox_id="guardone0000000000aa", team_id="team-a",
                              phase=P.SANDBOX_PHASE_CREATING)
            await store.create_sandbox(first, counted)
            second = P.Sandbox(sandbox_id="guardtwo0000000000aa", team_id="team-a",
                               phase=P.SANDBOX_PHASE_CREATING)
            with pytest.raises(Conflict):
                await store.create_sandbox(second, counted)  # counted without the first
            assert await store.get_sandbox(second.sandbox_id) is None
            again = await store.team_record("team-a")
            assert again is not None and again.mod_revision > team.mod_revision and again.value == team.value
            await store.create_sandbox(second, TeamGuard(again.value, again.mod_revision))
        finally:
            await store.close()

    asyncio.run(run())


# ---- operators ----------------------------------------------------------------------------------

def test_cli_set_quota_and_list(t):
    def listed() -> dict[str, list[str]]:
        rows = cubemastercli(t.master, "team", "list").stdout.splitlines()
        assert rows[0].split() == ["TEAM", "RUNNING", "VCPUS", "MEMORY", "PAUSED", "CREATED"]
        return {row.split()[0]: row.split()[1:5] for row in rows[1:]}

    assert listed()["team-b"] == ["0/-", "0/-", "0M/-", "0/-"]
    out = cubemastercli(t.master, "team", "set-quota", "team-b", "--max-running", "5", "--max-memory", "4G").stdout
    assert out.strip() == "team team-b: running 0/5, vCPUs 0/-, memory 0M/4096M, paused 0/-"
    Sandbox.create(**t.sdk(t.b))
    # Only the limits given change; 0 makes one unlimited again.
    cubemastercli(t.master, "team", "set-quota", "team-b", "--max-paused", "2", "--max-vcpus", "8")
    assert listed()["team-b"] == ["1/5", "1/8", "512M/4096M", "0/2"]
    cubemastercli(t.master, "team", "set-quota", "team-b", "--max-memory", "0")
    team = {x["teamId"]: x for x in json.loads(cubemastercli(t.master, "--json", "team", "list").stdout)}["team-b"]
    assert team["quota"] == {"maxRunning": 5, "maxVcpus": 8, "maxPaused": 2}
    assert team["usage"] == {"running": 1, "vcpus": 1, "memoryMb": 512}
    stored = t.c.etcd.get_json(f"{t.c.prefix}/teams/team-b")
    assert stored["quota"] == team["quota"] and "usage" not in stored  # usage is counted, never stored
    # The local team has a quota too, though nothing wrote its record before.
    cubemastercli(t.master, "team", "set-quota", "local", "--max-running", "7")
    assert listed()["local"][0] == "0/7"
    # Mistakes.
    r = cubemastercli(t.master, "team", "set-quota", "nobody", "--max-running", "1", check=False)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "team 'nobody'" in r.stderr
    r = cubemastercli(t.master, "team", "set-quota", "team-b", check=False)
    assert r.returncode != 0 and "at least one of" in r.stderr
    for flag, value in (("--max-running", "-1"), ("--max-running", "many"), ("--max-memory", "lots")):
        r = cubemastercli(t.master, "team", "set-quota", "team-b", flag, value, check=False)
        assert r.returncode == 2 and flag in r.stderr, (flag, value, r.stderr)


def test_set_quota_is_admin_only(t):
    ch, stub = t.c.master_stub()
    with ch:
        with pytest.raises(grpc.RpcError) as e:
            stub.SetTeamQuota(P.SetTeamQuotaRequest(team_id="team-a", max_running=100),
                              metadata=as_caller("team-a", "user"), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        team = stub.SetTeamQuota(P.SetTeamQuotaRequest(team_id="team-a", max_running=4),
                                 metadata=as_caller("team-a", "admin"), timeout=10)
        assert team.quota.max_running == 4


def test_a_quota_change_waits_for_no_one(t):
    """Setting a quota lower than the usage stops nothing; it refuses what comes next."""
    for _ in range(3):
        Sandbox.create(**t.sdk(t.a))
    set_quota(t, "team-a", max_running=1)
    assert len(team_sandboxes(t, "team-a", "RUNNING")) == 3
    with pytest.raises(RateLimitException):
        Sandbox.create(**t.sdk(t.a))
    for sid in team_sandboxes(t, "team-a"):
        assert Sandbox.kill(sid, **t.sdk(t.a)) is True
    Sandbox.create(**t.sdk(t.a))
