"""Unit tests that need no root: policy compilation, infra rules, addresses, settings, build cache."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from services.vs import build
from services.vs.addresses import AddressPool, PoolExhausted
from services.vs.guest import GuestNetwork, GuestNetworkError
from services.vs.policy import InfraAction, Limits, NetworkPolicy, PolicyError, compile_policy, infra_rules
from services.vs.settings import Settings
from services.vs.state import Allocation, StateFile

N = ipaddress.ip_network
N4 = ipaddress.IPv4Network  # where only an IPv4 network fits (infra rules, the address pool)


def test_internet_off_is_deny_all_and_allow_still_listed():
    p = compile_policy(NetworkPolicy(allow_internet_access=False, allow_out=("1.1.1.1",)))
    assert N("0.0.0.0/0") in p.deny_v4 and N("::/0") in p.deny_v6
    assert p.allow_v4 == (N("1.1.1.1/32"),)


def test_cidrs_are_normalised_and_deduplicated():
    p = compile_policy(NetworkPolicy(deny_out=("10.1.2.3/8", "10.0.0.0/8", " 8.8.8.8 ", "2001:db8::/32")))
    assert p.deny_v4 == (N("10.0.0.0/8"), N("8.8.8.8/32")) and p.deny_v6 == (N("2001:db8::/32"),)


@pytest.mark.parametrize("entry,msg", [
    ("10.0.0.0/33", "not a valid"), ("1.2.3", "not a valid"), ("", "empty"), ("example.com", "domain name"),
    ("*.example.com", "domain name"), ("10.0.0.0/8/8", "not a valid"),
])
def test_bad_entries(entry, msg):
    with pytest.raises(PolicyError, match=msg):
        compile_policy(NetworkPolicy(allow_out=(entry,)))


def test_limits():
    compile_policy(NetworkPolicy(deny_out=tuple(f"8.8.8.{i}" for i in range(4))), Limits(max_rules=4))
    with pytest.raises(PolicyError, match="at most 4"):
        compile_policy(NetworkPolicy(deny_out=tuple(f"8.8.8.{i}" for i in range(5))), Limits(max_rules=4))
    with pytest.raises(PolicyError, match="at most 2"):
        compile_policy(NetworkPolicy(exposed_ports=(1, 2, 3)), Limits(max_ports=2))
    for bad in (0, 65536, -1, True):
        with pytest.raises(PolicyError):
            compile_policy(NetworkPolicy(exposed_ports=(bad,)))


def test_infra_rules_default_and_operator_exceptions():
    rules = {r.network: r.action for r in infra_rules()}
    for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"):
        assert rules[N4(c)] == InfraAction.DENY
    rules = {r.network: r.action for r in infra_rules(allow_cidrs=("10.77.0.0/24", "192.168.0.0/16"))}
    assert rules[N4("10.0.0.0/8")] == InfraAction.DENY and rules[N4("10.77.0.0/24")] == InfraAction.ALLOW
    assert rules[N4("192.168.0.0/16")] == InfraAction.ALLOW
    with pytest.raises(PolicyError, match="always denied"):
        infra_rules(allow_cidrs=("169.254.169.254/32",))
    with pytest.raises(PolicyError, match="always denied"):
        infra_rules(allow_cidrs=("0.0.0.0/0",))
    rules = {r.network: r.action for r in infra_rules(deny_cidrs=("203.0.113.0/24",))}
    assert rules[N4("203.0.113.0/24")] == InfraAction.DENY


def test_address_pool_round_robin_reserved_and_exhaustion():
    pool = AddressPool(N4("198.19.0.0/29"), reserved={ipaddress.IPv4Address("198.19.0.1")})
    assert pool.capacity == 5
    got = [pool.allocate() for _ in range(5)]
    assert [str(a) for a in got] == [f"198.19.0.{i}" for i in range(2, 7)]
    with pytest.raises(PoolExhausted):
        pool.allocate()
    pool.release(got[0])
    pool.release(got[2])
    assert str(pool.allocate()) == "198.19.0.2"
    with pytest.raises(ValueError):
        pool.claim(ipaddress.IPv4Address("198.19.0.1"))


def test_guest_network_validation():
    GuestNetwork().validate()
    with pytest.raises(GuestNetworkError, match="gateway"):
        GuestNetwork(gateway_ip="169.254.0.21").validate()
    with pytest.raises(GuestNetworkError, match="multicast"):
        GuestNetwork(mac="01:00:5e:00:00:01").validate()
    with pytest.raises(GuestNetworkError, match="differ"):
        GuestNetwork(gateway_mac="02:fc:00:00:00:15").validate()


def test_settings_from_env():
    s = Settings.from_env({"CUBE_STATE_DIR": "/tmp/x", "CUBE_VS_POOL_CIDR": "198.18.128.0/20",
                           "CUBE_VS_UPLINKS": "eth0, eth1", "CUBE_VS_POOL_SIZE": "7", "CUBE_VS_NETNS": ""})
    assert s.state_dir == Path("/tmp/x") and s.uplinks == ("eth0", "eth1") and s.pool_size == 7
    assert str(s.proxy_ip) == "198.18.128.1" and s.netns is None
    with pytest.raises(ValueError, match="not in pool"):
        Settings.from_env({"CUBE_VS_PROXY_ADDR": "10.0.0.1"})
    with pytest.raises(ValueError, match="NAT port"):
        Settings.from_env({"CUBE_VS_NAT_PORT_LO": "70000"})


def test_state_file_roundtrip(tmp_path):
    st = StateFile(tmp_path / "vs" / "state.json")
    assert st.load() == ([], 1)
    a = Allocation(sandbox_id="s", tap="cvsabcdef", ifindex=7, address=ipaddress.IPv4Address("198.19.0.9"), slot=3,
                   policy_id=11, guest=GuestNetwork(),
                   policy=NetworkPolicy(allow_out=("1.1.1.1",), exposed_ports=(80,)))
    st.save([a], 12)
    assert st.load() == ([a], 12)


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_build_is_cached_and_rebuilds_on_change(tmp_path, monkeypatch):
    obj = build.ensure_object(tmp_path)
    mtime = obj.stat().st_mtime_ns
    assert build.ensure_object(tmp_path) == obj and obj.stat().st_mtime_ns == mtime  # cache hit
    src = tmp_path / "src"
    shutil.copytree(build.BPF_DIR, src)
    (src / "datapath.bpf.c").write_text((src / "datapath.bpf.c").read_text() + "\n/* changed */\n")
    monkeypatch.setattr(build, "BPF_DIR", src)
    monkeypatch.setattr(build, "SOURCE", src / "datapath.bpf.c")
    obj2 = build.ensure_object(tmp_path)
    assert obj2 != obj and obj2.exists()
    (src / "datapath.bpf.c").write_text("this is not C")
    with pytest.raises(build.BuildError, match="clang failed"):
        build.ensure_object(tmp_path)
