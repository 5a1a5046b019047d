"""scripts/local_dns.sh on copies of nsswitch.conf (the real /etc file is never touched here)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from testkit import REPO

SCRIPT = str(REPO / "scripts" / "local_dns.sh")

pytestmark = pytest.mark.timeout(180)


def run(path) -> str:
    r = subprocess.run(["bash", SCRIPT], env=dict(os.environ, NSSWITCH=str(path)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("before,after", [
    ("hosts:          files dns\n", "hosts:          files myhostname dns\n"),
    ("hosts: files mdns4_minimal [NOTFOUND=return] dns mymachines\n",
     "hosts: files mdns4_minimal [NOTFOUND=return] myhostname dns mymachines\n"),
    ("hosts: files\n", "hosts: files myhostname\n"),
    ("passwd: files\n", "passwd: files\nhosts:          files myhostname dns\n"),
    ("hosts: files myhostname dns\n", "hosts: files myhostname dns\n"),
])
def test_adds_myhostname_once(tmp_path, before, after):
    f = tmp_path / "nsswitch.conf"
    f.write_text("# comment\n" + before + "networks: files\n" if "passwd" not in before else before)
    expected = ("# comment\n" + after + "networks: files\n") if "passwd" not in before else after
    run(f)
    assert f.read_text() == expected
    out = run(f)  # idempotent
    assert "already" in out and f.read_text() == expected


def test_this_machine_resolves_the_wildcard_when_configured():
    with open("/etc/nsswitch.conf") as f:
        if not any(line.split(":")[0].strip() == "hosts" and "myhostname" in line for line in f):
            pytest.skip("myhostname is not configured here (make up runs scripts/local_dns.sh)")
    addrs = {ai[4][0] for ai in socket.getaddrinfo("49983-abc123.cube.localhost", 443, proto=socket.IPPROTO_TCP)}
    assert addrs & {"127.0.0.1", "::1"}
