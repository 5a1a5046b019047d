"""Unit tests of who a call acts for: the metadata cube-api writes (services/api/master_client.py),
the master's reading of it (services/master/caller.py), and the node's own key file
(deploy/local_key.py) that `make up` writes and `make env` reads."""

from __future__ import annotations

import stat
import threading

import pytest

from cube_common.teams import LOCAL_ADMIN, LOCAL_TEAM, OPERATOR, Caller
from deploy import local_key
from services.api.master_client import caller_metadata
from services.master import caller, errors

KEY = "e2b_" + "ab" * 20


@pytest.mark.parametrize("who", [Caller("team-a", False), Caller("team-a", True), LOCAL_ADMIN,
                                 Caller(LOCAL_TEAM, False)])
def test_what_the_api_writes_the_master_reads(who):
    assert caller.parse(caller_metadata(who)) == who


def test_no_caller_is_an_operator():
    assert caller_metadata(None) == ()
    assert caller.parse([]) == OPERATOR and caller.parse(None) == OPERATOR
    # Metadata of other kinds (user agents, tracing) does not make a caller.
    assert caller.parse([("user-agent", "grpc-python"), ("x-trace", "1")]) == OPERATOR
    assert OPERATOR.admin and OPERATOR.team_id == ""


def test_values_may_come_as_bytes_and_keys_in_any_case():
    assert caller.parse([("Cube-Team", b"team-b"), ("cube-role", b"user")]) == Caller("team-b", False)


@pytest.mark.parametrize("metadata,why", [
    ([("cube-team", "team-a")], "want one"),                                        # no role
    ([("cube-role", "admin")], "want one"),                                         # no team: not an operator
    ([("cube-team", "a"), ("cube-team", "b"), ("cube-role", "user")], "want one"),  # repeated
    ([("cube-team", "a"), ("cube-role", "user"), ("cube-role", "admin")], "want one"),
    ([("cube-team", ""), ("cube-role", "admin")], "invalid team id"),
    ([("cube-team", "Team/A"), ("cube-role", "user")], "invalid team id"),
    ([("cube-team", "a" * 64), ("cube-role", "user")], "invalid team id"),
    ([("cube-team", "team-a"), ("cube-role", "root")], "invalid role"),
    ([("cube-team", "team-a"), ("cube-role", "")], "invalid role"),
])
def test_a_half_formed_caller_is_refused(metadata, why):
    with pytest.raises(errors.Unauthenticated, match=why):
        caller.parse(metadata)


def test_what_a_caller_sees():
    a, b = Caller("team-a", False), Caller("team-b", False)
    assert a.sees("team-a") and not a.sees("team-b") and not a.sees("")
    assert not b.sees("team-a")
    assert Caller("team-b", True).sees("team-a") and OPERATOR.sees("team-a")
    caller.require_admin(OPERATOR, "x")
    with pytest.raises(errors.PermissionDenied, match="creating a team needs an admin key"):
        caller.require_admin(a, "creating a team")


# ---- the node's key file ------------------------------------------------------------------------

def test_key_file_is_private_and_replaced_atomically(tmp_path):
    assert local_key.read(tmp_path) is None
    p = local_key.write(tmp_path, KEY)
    assert p == tmp_path / "secrets" / "api-key" and local_key.read(tmp_path) == KEY
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # A directory made earlier with looser rights is tightened.
    p.parent.chmod(0o755)
    other = "e2b_" + "cd" * 20
    local_key.write(tmp_path, other)
    assert local_key.read(tmp_path) == other and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert [f.name for f in p.parent.iterdir()] == ["api-key"]  # no temporary file left behind
    with pytest.raises(ValueError):
        local_key.write(tmp_path, "not-a-key")
    assert local_key.read(tmp_path) == other


def test_readers_never_see_a_partial_key(tmp_path):
    keys = ["e2b_" + f"{i:02x}" * 20 for i in range(40)]
    local_key.write(tmp_path, keys[0])
    seen: list[str | None] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(local_key.read(tmp_path))
    t = threading.Thread(target=reader)
    t.start()
    for k in keys[1:]:
        local_key.write(tmp_path, k)
    stop.set()
    t.join()
    assert seen and set(seen) <= set(keys)


def test_make_env_exports_the_stored_key(tmp_path):
    from deploy.env import LOCAL_KEY, sdk_env
    from deploy.supervisor import NodeConfig

    cfg = NodeConfig(state_dir=tmp_path)
    assert sdk_env(cfg)["E2B_API_KEY"] == LOCAL_KEY  # before `make up` issued one
    local_key.write(tmp_path, KEY)
    assert sdk_env(cfg)["E2B_API_KEY"] == KEY
