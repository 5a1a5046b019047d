"""cube-ctl, the guest's native control-channel agent, driven on the host over --stdio.

The VM tests cover it in place (every clone's clock sync, template builds' `status`); these pin
the protocol details a VM test would not notice: malformed lines, seq echoing, forwarding to
cube-init and its failures. `sync` is sent without a clock or entropy: the host's must not change.
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading

import pytest

from vmm_core.guest.base_image import _build_ctl_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    path = tmp_path_factory.mktemp("cube-ctl") / "cube-ctl"
    _build_ctl_agent(path)
    return path


def converse(agent, lines: list[str], init=None, timeout: float = 10) -> list[dict]:
    """Feed request lines on stdin; the replies, one JSON object per line, in order."""
    argv = [str(agent), "--stdio"]
    pass_fds: tuple[int, ...] = ()
    if init is not None:
        argv += ["--init-fd", str(init.fileno())]
        pass_fds = (init.fileno(),)
    r = subprocess.run(argv, input="".join(line + "\n" for line in lines), capture_output=True, text=True,
                       timeout=timeout, pass_fds=pass_fds)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_answers_its_own_ops_and_echoes_seq(agent):
    ping, fs, sync = converse(agent, [
        json.dumps({"op": "ping", "seq": 7}),
        '{"seq":8,"op":"sync_fs"}',
        json.dumps({"op": "sync", "seq": 9, "ignored": {"nested": ["}", 1]}}),
    ])
    assert ping["seq"] == 7 and ping["ok"] is True and ping["uptime"] > 0
    assert fs == {"seq": 8, "ok": True}
    assert sync["seq"] == 9 and sync["ok"] is True and sync["reseeded"] is False
    assert isinstance(sync["realtime_ns"], int)


@pytest.mark.parametrize("line, error", [
    ("not json", "not a JSON object"),
    ('{"op": "ping", "seq": 1', "not a JSON object"),
    ('["op", "ping"]', "not a JSON object"),
])
def test_malformed_lines_get_an_error_and_the_agent_goes_on(agent, line, error):
    bad, good = converse(agent, [line, json.dumps({"op": "ping", "seq": 2})])
    assert bad["ok"] is False and error in bad["error"]
    assert good["seq"] == 2 and good["ok"] is True


@pytest.mark.parametrize("args, what", [
    ({"realtime_ns": "soon"}, "realtime_ns"),
    ({"realtime_ns": -5}, "realtime_ns"),
    ({"entropy": "not base64!"}, "entropy"),
])
def test_bad_sync_arguments_are_refused_without_touching_anything(agent, args, what):
    (reply,) = converse(agent, [json.dumps({"op": "sync", "seq": 3, **args})])
    assert reply["seq"] == 3 and reply["ok"] is False and what in reply["error"]


def test_other_ops_are_forwarded_to_init_and_its_reply_relayed(agent):
    ours, theirs = socket.socketpair()
    seen: list[dict] = []

    def init() -> None:
        f = ours.makefile("rwb")
        for raw in f:
            msg = json.loads(raw)
            seen.append(msg)
            f.write(json.dumps({"seq": msg["seq"], "ok": True, "services": [{"name": "envd"}]}).encode() + b"\n")
            f.flush()

    t = threading.Thread(target=init, daemon=True)
    t.start()
    try:
        status, ping = converse(agent, [json.dumps({"op": "status", "seq": 11}), json.dumps({"op": "ping", "seq": 12})],
                                init=theirs)
    finally:
        theirs.close()
    assert status == {"seq": 11, "ok": True, "services": [{"name": "envd"}]}
    assert seen == [{"op": "status", "seq": 11}]
    assert ping["seq"] == 12 and ping["ok"] is True  # answered by the agent itself, not forwarded
    ours.close()


def test_forwarding_without_init_is_an_error_not_a_hang(agent):
    (reply,) = converse(agent, [json.dumps({"op": "status", "seq": 4})])
    assert reply["seq"] == 4 and reply["ok"] is False and "cube-init" in reply["error"]
    ours, theirs = socket.socketpair()
    ours.close()  # init died
    (reply,) = converse(agent, [json.dumps({"op": "status", "seq": 5})], init=theirs)
    theirs.close()
    assert reply["seq"] == 5 and reply["ok"] is False and "cube-init" in reply["error"]
