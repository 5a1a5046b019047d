"""The shared settings loader and every service's settings built on it."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from cube_common import defaults
from cube_common.settings import Settings, SettingsError, check_host_ports, setting, shared
from deploy.supervisor import NodeConfig
from services.api.settings import Settings as ApiSettings
from services.cubelet.settings import CubeletSettings
from services.envd.settings import Settings as EnvdSettings
from services.master.settings import Settings as MasterSettings
from services.proxy.settings import Endpoint, ProxySettings
from services.vs.settings import Settings as VsSettings
from vmm_core import Accel, VmmSettings

REPO = Path(__file__).resolve().parents[2]
ALL = [ApiSettings, MasterSettings, CubeletSettings, ProxySettings, VsSettings, EnvdSettings, VmmSettings, NodeConfig]


@dataclass(frozen=True)
class Demo(Settings):
    ENV_PREFIX: ClassVar[str] = "DEMO_"
    name: str = setting("x", "a name")
    count: int = setting(1, "a count", env="DEMO_N")
    ratio: float = setting(0.5, "a ratio")
    on: bool = setting(False, "a switch")
    where: Path = setting(Path("/a"), "a path")
    items: tuple[str, ...] = setting(("a", "b"), "a list")
    maybe: int | None = setting(None, "an optional number")
    accel: Accel = setting(Accel.AUTO, "an enum")
    ends: tuple[Endpoint, ...] = setting((), "endpoints")
    etcd_endpoints: tuple[str, ...] = shared.etcd_endpoints()

    def validate(self) -> Demo:
        if self.count < 0:
            raise SettingsError("count must be >= 0")
        check_host_ports("etcd_endpoints", self.etcd_endpoints)
        return self


def test_precedence_default_env_flag():
    assert Demo.load([], env={}) == Demo()
    env = {"DEMO_NAME": "e", "DEMO_N": "5", "DEMO_ON": "yes", "CUBE_ETCD_ENDPOINTS": "a:1,b:2"}
    s = Demo.load([], env=env)
    assert (s.name, s.count, s.on, s.etcd_endpoints) == ("e", 5, True, ("a:1", "b:2"))
    # The canonical variable wins over its alias, and a flag over both.
    assert Demo.load([], env={**env, "DEMO_COUNT": "7"}).count == 7
    s = Demo.load(["--count", "9", "--no-on", "--name", "f"], env=env)
    assert (s.name, s.count, s.on) == ("f", 9, False)
    assert Demo.load(["--on"], env={}).on is True and Demo.load(["--on", "off"], env={}).on is False


def test_conversions_by_type_hint():
    s = Demo.from_env({"DEMO_RATIO": "1.5", "DEMO_WHERE": "/b", "DEMO_ITEMS": " x, ,y ", "DEMO_MAYBE": "3",
                       "DEMO_ACCEL": "TCG", "DEMO_ENDS": "127.0.0.1:1,[::1]:2"})
    assert s.ratio == 1.5 and s.where == Path("/b") and s.items == ("x", "y") and s.maybe == 3
    assert s.accel is Accel.TCG and s.ends == (Endpoint("127.0.0.1", 1), Endpoint("::1", 2))
    assert Demo.from_env({"DEMO_MAYBE": "", "DEMO_ITEMS": ""}).maybe is None
    assert Demo.from_env({"DEMO_ITEMS": ""}).items == ()


@pytest.mark.parametrize("env", [{"DEMO_COUNT": "many"}, {"DEMO_ON": "perhaps"}, {"DEMO_ACCEL": "xen"},
                                 {"DEMO_COUNT": "-1"}, {"CUBE_ETCD_ENDPOINTS": "nohostport"}])
def test_bad_values_fail_naming_the_setting(env):
    with pytest.raises(SettingsError):
        Demo.from_env(env)


def test_bad_flag_exits_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        Demo.load(["--count", "many"], env={})
    assert e.value.code == 2 and "--count" in capsys.readouterr().err


def test_the_environment_is_read_only_by_the_loader(monkeypatch):
    monkeypatch.setenv("CUBE_API_PORT", "1234")
    monkeypatch.setenv("CUBE_STATE_DIR", "/nowhere")
    assert ApiSettings().port == defaults.API_PORT and ApiSettings.from_env().port == 1234
    assert CubeletSettings().state_dir == Path(defaults.STATE_DIR)
    assert NodeConfig().state_dir == Path(defaults.STATE_DIR) and NodeConfig.from_env().state_dir == Path("/nowhere")


def test_one_default_per_shared_fact():
    """The drift issue 10 names: every client of the master defaults to where the master listens."""
    master = MasterSettings()
    assert master.listen.rsplit(":", 1)[1] == str(defaults.MASTER_PORT)
    assert ApiSettings().master_addr == ProxySettings().master_addr == NodeConfig().master_addr == defaults.MASTER_ADDR
    for cls in (MasterSettings, CubeletSettings, ProxySettings):
        assert cls().etcd_endpoints == (defaults.ETCD_ENDPOINT,)
        assert cls.from_env({"CUBE_ETCD_ENDPOINTS": "h1:1,h2:2"}).etcd_endpoints == ("h1:1", "h2:2")
    assert CubeletSettings().vs_address == VsSettings().listen == defaults.VS_ADDR
    # The proxy's volume content route goes where the API listens (make up passes the same).
    api = ApiSettings()
    assert ProxySettings().api_upstream == NodeConfig().api_upstream == f"{api.host}:{api.port}" == defaults.API_ADDR


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__module__)
def test_help_lists_every_setting_with_its_variable(cls):
    text = cls.parser().format_help()
    for f in dataclasses.fields(cls):
        assert f"{cls.ENV_PREFIX}{f.name.upper()}" in text, f.name


@pytest.mark.parametrize("module", ["services.api", "services.master", "services.cubelet", "services.proxy",
                                    "services.vs", "services.envd"])
def test_every_service_prints_its_settings(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "settings (flag > environment > default)" in r.stdout and "--log-level" in r.stdout
