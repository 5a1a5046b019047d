"""Keyless only on loopback (issue 11): which listen addresses are local, and every service's
refusal to listen elsewhere unguarded unless told --insecure-public."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cube_common import listen
from cube_common.listen import host_of, is_local, is_loopback_host
from cube_common.settings import SettingsError
from services.api.settings import Settings as ApiSettings
from services.cubelet.settings import CubeletSettings
from services.master.settings import Settings as MasterSettings
from services.proxy.settings import Endpoint, ProxySettings
from services.vs.settings import Settings as VsSettings

REPO = Path(__file__).resolve().parents[2]

LOCAL = ["127.0.0.1:50051", "127.1.2.3:1", "[::1]:50051", "::1", "127.0.0.1", "localhost:3000", "localhost",
         "[::ffff:127.0.0.1]:1", "unix:///run/cube/vs.sock", "unix:/tmp/x.sock", "unix-abstract:cube"]
PUBLIC = ["0.0.0.0:50051", "0.0.0.0", "[::]:50051", "::", ":50051", "", "192.168.1.10:3000", "10.0.0.5",
          "[fe80::1]:1", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:1", "no-such-host.invalid:1"]


@pytest.mark.parametrize("address", LOCAL)
def test_local_addresses(address):
    assert is_local(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address):
    assert not is_local(address)


def test_host_forms():
    assert host_of("[::1]:5") == "::1" and host_of("h:5") == "h" and host_of("fe80::1") == "fe80::1"
    assert host_of("unix:///a") is None and host_of("h") == "h"


def test_a_name_is_loopback_only_if_every_address_it_resolves_to_is(monkeypatch):
    answers = {"both.test": ["127.0.0.1", "::1"], "mixed.test": ["127.0.0.1", "10.1.1.1"], "empty.test": []}

    def fake(host, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror("unknown")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in answers[host]]

    monkeypatch.setattr(listen.socket, "getaddrinfo", fake)
    assert is_loopback_host("both.test")
    assert not is_loopback_host("mixed.test")
    assert not is_loopback_host("empty.test")
    assert not is_loopback_host("unknown.test")


# -- every service's settings --------------------------------------------------------------------

def _ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


# (settings class, setting, how an address is given, the canonical insecure variable)
GUARDED = [
    (ApiSettings, "host", str, "CUBE_API_INSECURE_PUBLIC"),
    (MasterSettings, "listen", lambda h: f"{h}:50051", "CUBE_MASTER_INSECURE_PUBLIC"),
    (CubeletSettings, "listen", lambda h: f"{h}:50052", "CUBE_CUBELET_INSECURE_PUBLIC"),
    (VsSettings, "listen", lambda h: f"{h}:50053", "CUBE_VS_INSECURE_PUBLIC"),
    (ProxySettings, "admin", lambda h: _ep(f"{h}:9901"), "CUBE_PROXY_INSECURE_PUBLIC"),
    (ProxySettings, "resumer", lambda h: _ep(f"{h}:3003"), "CUBE_PROXY_INSECURE_PUBLIC"),
]
IDS = [f"{c.__module__}.{name}" for c, name, _, _ in GUARDED]


@pytest.mark.parametrize("cls,name,value,env", GUARDED, ids=IDS)
def test_defaults_are_loopback_and_start(cls, name, value, env):
    s = cls.from_env({})
    assert is_local(str(getattr(s, name))) and s.insecure_public is False


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.168.1.10"])
@pytest.mark.parametrize("cls,name,value,env", GUARDED, ids=IDS)
def test_a_public_address_is_refused_naming_the_setting_and_the_way_out(cls, name, value, env, host):
    with pytest.raises(SettingsError) as e:
        cls.from_env({}, **{name: value(host.strip("[]") if cls is ApiSettings else host)})
    text = str(e.value)
    assert text.startswith(f"{name}=") and "not a loopback address" in text
    assert "--insecure-public" in text and env in text


@pytest.mark.parametrize("cls,name,value,env", GUARDED, ids=IDS)
def test_insecure_public_lets_it_stand(cls, name, value, env):
    s = cls.from_env({env: "true"}, **{name: value("0.0.0.0")})
    assert s.insecure_public is True and "0.0.0.0" in str(getattr(s, name))
    flag = cls.load(["--insecure-public"], env={})
    assert flag.insecure_public is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "[::1]", "localhost"])
@pytest.mark.parametrize("cls,name,value,env", GUARDED, ids=IDS)
def test_loopback_is_accepted(cls, name, value, env, host):
    cls.from_env({}, **{name: value(host.strip("[]") if cls is ApiSettings else host)})


def test_unix_sockets_are_local():
    assert VsSettings.from_env({}, listen="unix:///tmp/vs-test.sock").listen == "unix:///tmp/vs-test.sock"
    CubeletSettings.from_env({}, listen="unix:///tmp/cubelet-test.sock")
    MasterSettings.from_env({}, listen="unix:/tmp/master-test.sock")


def test_the_api_may_listen_publicly_with_auth_on():
    assert ApiSettings.from_env({"CUBE_AUTH": "on"}, host="0.0.0.0").host == "0.0.0.0"


def test_the_proxy_sandbox_listeners_may_be_public():
    """They serve sandbox traffic, guarded per sandbox: `--https 0.0.0.0:443` must keep working."""
    s = ProxySettings.load(["--https", "0.0.0.0:443,[::]:443", "--http", "0.0.0.0:3002"], env={})
    assert s.https_listeners == (_ep("0.0.0.0:443"), _ep("[::]:443")) and s.insecure_public is False


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CUBE_")}


@pytest.mark.parametrize("argv,setting", [
    (["services.api", "--host", "0.0.0.0"], "host='0.0.0.0'"),
    (["services.master", "--listen", "0.0.0.0:50051"], "listen='0.0.0.0:50051'"),
], ids=["api", "master"])
def test_a_service_asked_to_listen_publicly_exits_and_says_why(argv, setting):
    r = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=_clean_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert setting in r.stderr and "not a loopback address" in r.stderr and "--insecure-public" in r.stderr
