"""Unit tests of the control plane's pure parts: placement, paging tokens, the metadata filter
decoding, API-key hashing, settings, quota counting."""

from __future__ import annotations

import urllib.parse

import pytest

from cube_common.teams import TEAM_ID_RE
from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.api.errors import ApiError
from services.api.routes.sandboxes import parse_metadata_query, parse_states
from services.api.settings import Settings as ApiSettings
from services.master import apikeys, builds, errors, sandboxes as master_sandboxes, templates as master_templates
from services.master.quotas import PAUSED_ONE, Usage, limited, refusal, running_one, usage_by_team
from services.master.sandboxes import decode_page_token, encode_page_token, new_sandbox_id
from services.master.scheduler import NodeLoad, load_by_node, rank
from services.master.settings import Settings as MasterSettings


def node(nid, templates=(), running=0, max_sb=0, avail_gib=6, addr="127.0.0.1:1"):
    return C.NodeStatus(node_id=nid, address=addr, templates=list(templates), sandboxes_running=running,
                        max_sandboxes=max_sb, memory_total_bytes=8 << 30, memory_available_bytes=avail_gib << 30)


def test_rank_prefers_locality_over_load():
    nodes = [node("busy-local", ["t"], running=5, max_sb=10), node("idle-remote", [], running=0, max_sb=10)]
    assert [c.node.node_id for c in rank(nodes, "t", 512, {})] == ["busy-local", "idle-remote"]


def test_rank_prefers_less_loaded_among_equals():
    nodes = [node("a", ["t"], running=8, max_sb=10), node("b", ["t"], running=1, max_sb=10)]
    assert rank(nodes, "t", 512, {})[0].node.node_id == "b"


def test_rank_counts_creates_in_flight_and_capacity():
    nodes = [node("a", ["t"], max_sb=2), node("b", ["t"], max_sb=2)]
    load = {"a": NodeLoad(active=2)}
    assert [c.node.node_id for c in rank(nodes, "t", 512, load)] == ["b"]
    with pytest.raises(errors.Exhausted):
        rank(nodes, "t", 512, {"a": NodeLoad(active=2), "b": NodeLoad(active=2)})
    with pytest.raises(errors.Exhausted):
        rank([node("small", ["t"], avail_gib=0)], "t", 4096, {})
    with pytest.raises(errors.Unavailable):
        rank([], "t", 512, {})


def test_rank_follows_what_nodes_say_they_can_take():
    """A node's own measure (NodeStatus.sandboxes_can_take) less the creates placed there since it
    reported: 0 is refused, more room ranks higher; a node that does not say falls back to its cap."""
    full, roomy = node("full", ["t"], running=3), node("roomy", ["t"], running=3)
    silent = node("silent", ["t"], max_sb=10)
    full.sandboxes_can_take, roomy.sandboxes_can_take = 0, 40
    assert [c.node.node_id for c in rank([full, roomy], "t", 512, {})] == ["roomy"]
    assert rank([roomy, silent], "t", 512, {"silent": NodeLoad(active=9)})[0].node.node_id == "roomy"
    two = node("two", ["t"], running=1)
    two.sandboxes_can_take = 2
    assert rank([two], "t", 512, {"two": NodeLoad(active=2)})  # one placed since: one more fits
    with pytest.raises(errors.Exhausted):
        rank([two], "t", 512, {"two": NodeLoad(active=3)})  # two placed since it said 2
    with pytest.raises(errors.Exhausted):
        rank([full], "t", 512, {})


def test_rank_skips_nodes_under_their_disk_watermark():
    low = node("low", ["t"])
    low.disk_free_bytes, low.disk_watermark_bytes = 1 << 30, 2 << 30
    ok = node("ok", [])
    ok.disk_free_bytes, ok.disk_watermark_bytes = 3 << 30, 2 << 30
    assert [c.node.node_id for c in rank([low, ok], "t", 512, {})] == ["ok"]
    with pytest.raises(errors.Exhausted) as e:
        rank([low], "t", 512, {})
    # What the tenant sees names no node and no capacity (the master's log does).
    assert "low" not in str(e.value) and "MiB" not in str(e.value)


def test_rank_caps_committed_memory_at_the_overcommit_ratio():
    nodes = [node("a", ["t"]), node("b", [])]  # 8 GiB each, 6 GiB available
    # 15 GiB committed on a: one more GiB fits under 2x 8 GiB, two do not.
    load = {"a": NodeLoad(active=15, committed_memory_mb=15 * 1024)}
    assert rank(nodes, "t", 1024, load, overcommit_ratio=2.0)[0].node.node_id == "a"
    assert [c.node.node_id for c in rank(nodes, "t", 2048, load, overcommit_ratio=2.0)] == ["b"]
    # 0: no cap (available memory still counts).
    assert rank(nodes, "t", 2048, load, overcommit_ratio=0)[0].node.node_id == "a"
    with pytest.raises(errors.Exhausted):
        rank(nodes[:1], "t", 2048, load, overcommit_ratio=2.0)


def test_rank_leaves_out_nodes_already_tried():
    nodes = [node("a", ["t"]), node("b", ["t"])]
    assert [c.node.node_id for c in rank(nodes, "t", 512, {}, exclude={"a"})] == ["b"]
    with pytest.raises(errors.Exhausted):
        rank(nodes, "t", 512, {}, exclude={"a", "b"})


def test_load_by_node():
    recs = [P.Sandbox(node_id="a", phase=P.SANDBOX_PHASE_RUNNING, memory_mb=512),
            P.Sandbox(node_id="a", phase=P.SANDBOX_PHASE_CREATING, memory_mb=256),
            P.Sandbox(node_id="a", phase=P.SANDBOX_PHASE_PAUSED, memory_mb=512)]
    ld = load_by_node(recs)["a"]
    assert ld.active == 2 and ld.pending_memory_mb == 256 and ld.committed_memory_mb == 768


def test_sandbox_ids_are_20_lowercase_alnum():
    ids = {new_sandbox_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 20 and i.isalnum() and i == i.lower() for i in ids)


def test_page_token_roundtrip_and_garbage():
    rec = P.Sandbox(sandbox_id="abc123")
    rec.started_at.FromNanoseconds(1_700_000_000_123_456_789)
    assert decode_page_token(encode_page_token(rec)) == (1_700_000_000_123_456_789, "abc123")
    import base64
    for bad in ("", "!!", "bm9wZQ", base64.urlsafe_b64encode(b"12:Bad-Id").decode(),
                base64.urlsafe_b64encode(b"soon:abc").decode()):
        with pytest.raises(errors.InvalidArgument):
            decode_page_token(bad)


def _sdk_encoding(meta: dict[str, str]) -> str:
    # Exactly what e2b's SandboxPaginator does, then what the server's query parser undoes once.
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in meta.items()}
    return urllib.parse.urlencode(quoted)


@pytest.mark.parametrize("meta", [{"user": "a b"}, {"k&=": "v&=%+ü/"}, {"a": "", "b": "1"}, {"x": "+"}])
def test_metadata_query_decoding_matches_the_sdk(meta):
    assert parse_metadata_query(_sdk_encoding(meta)) == meta


def test_quota_usage_counts_what_each_phase_may_end_in():
    def sb(sid, phase, team="team-a", exempt=False):
        return P.Sandbox(sandbox_id=sid, phase=phase, team_id=team, vcpus=2, memory_mb=512, quota_exempt=exempt)

    recs = [sb("c", P.SANDBOX_PHASE_CREATING), sb("r", P.SANDBOX_PHASE_RUNNING),
            sb("pg", P.SANDBOX_PHASE_PAUSING), sb("p", P.SANDBOX_PHASE_PAUSED), sb("rs", P.SANDBOX_PHASE_RESUMING),
            sb("k", P.SANDBOX_PHASE_KILLING), sb("ops", P.SANDBOX_PHASE_RUNNING, team="", exempt=True),
            sb("old", P.SANDBOX_PHASE_RUNNING, team=""), sb("b", P.SANDBOX_PHASE_PAUSED, team="team-b")]
    used = usage_by_team(recs)
    # PAUSING and RESUMING hold a running and a paused slot; KILLING and exempt ones hold nothing.
    assert used["team-a"] == Usage(running=4, vcpus=8, memory_mb=2048, paused=3)
    assert used["local"] == Usage(running=1, vcpus=2, memory_mb=512)  # a record from before teams
    assert used["team-b"] == Usage(paused=1)
    assert usage_by_team(recs, exclude="rs")["team-a"] == Usage(running=3, vcpus=6, memory_mb=1536, paused=2)


def test_quota_refusals_name_the_limit():
    q = P.TeamQuota(max_running=2, max_memory_mb=1024, max_paused=1)
    one = running_one(P.Sandbox(vcpus=4, memory_mb=512))
    assert limited(q, one) and limited(q, PAUSED_ONE) and not limited(P.TeamQuota(max_paused=1), one)
    assert refusal("t", q, Usage(running=1, vcpus=40, memory_mb=512), one) is None  # vCPUs unlimited
    assert str(refusal("t", q, Usage(running=2), one)).startswith(
        "team 't' would exceed its quota of 2 running sandboxes (2 in use, this needs 1 more)")
    assert "quota of 1024 MiB of memory" in str(refusal("t", q, Usage(running=1, memory_mb=600), one))
    assert "quota of 1 paused sandboxes (1 in use" in str(refusal("t", q, Usage(paused=1), PAUSED_ONE))
    assert refusal("t", q, Usage(running=9, paused=0), PAUSED_ONE) is None  # a pause adds no running


def test_states():
    # A lost sandbox is running as far as E2B can say (services/api/models.py): `running` asks for it too.
    assert parse_states("running,paused") == [P.SANDBOX_PHASE_RUNNING, P.SANDBOX_PHASE_LOST, P.SANDBOX_PHASE_PAUSED]
    assert parse_states(None) == []
    with pytest.raises(ApiError):
        parse_states("dead")


def test_api_keys_hash_and_shape():
    key = "e2b_" + "ab" * 20
    assert apikeys.KEY_RE.match(key)
    assert apikeys.key_id_of(key) == apikeys.digest(key)[:16]
    assert not apikeys.KEY_RE.match("e2b_ABC") and not apikeys.KEY_RE.match("sk-123")


def test_settings_from_env():
    s = MasterSettings.from_env({"CUBE_ETCD_ENDPOINTS": "10.0.0.1:2379,10.0.0.2:2379", "CUBE_ETCD_PREFIX": "/x/",
                                 "CUBE_MASTER_LEADER_TTL_S": "5", "CUBE_MASTER_TIMEOUT_TICK_S": "0.5"})
    assert s.etcd_endpoints == ("10.0.0.1:2379", "10.0.0.2:2379") and s.prefix == "/x"
    assert s.leader_ttl_s == 5 and s.timeout_tick_s == 0.5 and s.default_timeout_s == 300
    with pytest.raises(ValueError):
        MasterSettings.from_env({"CUBE_ETCD_ENDPOINTS": "nohostport"})
    a = ApiSettings.from_env({"CUBE_AUTH": "on", "CUBE_DOMAIN": "sbx.example.com", "CUBE_MASTER_ADDR": "m:1"})
    assert a.auth is True and a.domain == "sbx.example.com" and a.master_addr == "m:1" and a.port == 3000
    assert ApiSettings.from_env({}).auth is False and ApiSettings.from_env({}).domain == "cube.localhost"
    with pytest.raises(ValueError):
        ApiSettings.from_env({"CUBE_DOMAIN": "e2b.app"})  # the SDK would send sandbox traffic to E2B


@pytest.mark.parametrize("pattern,good", [
    (apikeys.KEY_RE, "e2b_" + "ab" * 20), (apikeys.KEY_ID_RE, "0123456789abcdef"),
    (builds.JOB_ID_RE, "01234567-89ab-cdef-0123-456789abcdef"), (builds.TEMPLATE_ID_RE, "my-app"),
    (builds.ENV_NAME_RE, "PATH"), (master_sandboxes.ID_RE, "abc123"), (master_sandboxes.ENV_NAME_RE, "HOME"),
    (master_templates.NAME_RE, "my-app:v1"), (TEAM_ID_RE, "acme")])
def test_id_patterns_refuse_a_trailing_newline(pattern, good):
    """`$` also matches before a final newline; every id and name pattern ends at the string's end."""
    assert pattern.match(good) and not pattern.match(good + "\n")
