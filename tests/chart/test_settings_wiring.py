"""The chart's environment against the services' own settings loaders.

Every Cube service reads ``CUBE_<SVC>_<FIELD>`` (or a field's declared alias) through
cube_common/settings.py. The names are computed here from the settings dataclasses themselves, so
renaming or removing a field that the chart sets fails this test instead of silently leaving the
service on its default.

Invariants checked, for every container of every scenario that runs a Cube service:
- every variable it gets (ConfigMap or inline) is a setting of the program it runs, or comes from
  the downward API for ``$(NAME)`` expansion;
- the services' own ``from_env`` accepts the environment as the kubelet would give it (types and
  ``validate()``, e.g. a listener off loopback only with mutual TLS or, for the API, auth);
- the values wire the cluster: listeners on every address, mutual TLS everywhere, the API's auth on,
  the node proxy in the cubelet's pod has the cubelet's node id (so it serves that node's sandboxes
  locally) while the edge proxies have ids no node has, and the addresses the cubelet publishes are
  the ones its pod's containers listen on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cube_common.settings import Settings
from services.api.settings import Settings as ApiSettings
from services.cubelet.settings import CubeletSettings
from services.master.settings import Settings as MasterSettings
from services.proxy.settings import ProxySettings
from services.vs.settings import Settings as VsSettings
from tests.chart.render import POD_FACTS, SCENARIOS, Container, Obj, container, container_env, containers, scenario
from vmm_core.settings import VmmSettings

PROGRAMS: dict[str, tuple[type[Settings], ...]] = {
    "cube-api": (ApiSettings,),
    "cube-master": (MasterSettings,),
    "cube-proxy": (ProxySettings,),
    "cube-cubelet": (CubeletSettings, VmmSettings),
    "cube-vs": (VsSettings,),
}


def env_names(cls: type[Settings]) -> set[str]:
    return {name for f in dataclasses.fields(cls) if not f.name.startswith("_") for name in cls.env_names(f)}


def unknown_variables(objs: list[Obj], c: Container) -> set[str]:
    """Variables of ``c`` that no settings class of its program reads and no expansion needs."""
    known = set().union(*(env_names(cls) for cls in PROGRAMS[c.program]))
    downward = {e["name"] for e in c.spec.get("env") or [] if "fieldRef" in e.get("valueFrom", {})}
    return set(container_env(objs, c)) - known - downward


def cube_containers(objs: list[Obj]) -> list[Container]:
    found = [c for c in containers(objs, init=False) if c.program in PROGRAMS]
    assert {c.program for c in found} == set(PROGRAMS)
    return found


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_variable_is_a_setting_of_its_service(name: str) -> None:
    objs = scenario(name)
    for c in cube_containers(objs):
        assert unknown_variables(objs, c) == set(), c.where


def test_the_check_sees_a_misspelled_setting() -> None:
    from tests.chart.render import render

    objs = render({"master": {"settings": {"default_timout_s": 600}}})
    master = next(c for c in cube_containers(objs) if c.program == "cube-master")
    assert unknown_variables(objs, master) == {"CUBE_MASTER_DEFAULT_TIMOUT_S"}


def load(objs: list[Obj], c: Container, **facts: str) -> list[Any]:
    """The settings objects the service in ``c`` would start with."""
    env = container_env(objs, c, facts)
    return [cls.from_env(env) for cls in PROGRAMS[c.program]]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_services_accept_their_environment(name: str) -> None:
    objs = scenario(name)
    for c in cube_containers(objs):
        for s in load(objs, c):
            assert isinstance(s, Settings), c.where
            if hasattr(s, "mtls_dir"):
                assert s.mtls_dir is not None and s.mtls_dir.is_absolute(), f"{c.where}: no mutual TLS"


def _by_program(objs: list[Obj], program: str, kind: str) -> list[Container]:
    return [c for c in cube_containers(objs) if c.program == program and c.owner["kind"] == kind]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_settings_wire_the_cluster(name: str) -> None:
    objs = scenario(name)
    values = SCENARIOS[name] or {}
    domain = values.get("domain", "cube.example.com")
    fullname = values.get("fullnameOverride", "cube")
    namespace_master = f"{fullname}-master."

    (api_c,) = _by_program(objs, "cube-api", "Deployment")
    (api,) = load(objs, api_c)
    assert api.host == "0.0.0.0" and api.auth is True and api.domain == domain
    assert api.master_addr.startswith(namespace_master) and api.master_addr.endswith(":50051")

    (master_c,) = _by_program(objs, "cube-master", "Deployment")
    (master,) = load(objs, master_c)
    assert master.listen == "0.0.0.0:50051"
    assert master.advertise == f"{POD_FACTS['status.podIP']}:50051"
    assert master.master_id == POD_FACTS["metadata.name"]

    (cubelet_c,) = _by_program(objs, "cube-cubelet", "DaemonSet")
    cubelet, vmm = load(objs, cubelet_c)
    assert cubelet.listen == "0.0.0.0:50052"
    assert cubelet.node_id == POD_FACTS["spec.nodeName"]
    assert cubelet.advertise_address == f"{POD_FACTS['status.podIP']}:50052"
    assert vmm.state_dir == cubelet.state_dir == Path("/var/lib/cube")

    (vs_c,) = _by_program(objs, "cube-vs", "DaemonSet")
    (vs,) = load(objs, vs_c)
    assert vs.listen == cubelet.vs_address
    assert vs.bpffs == Path("/sys/fs/bpf") and vs.state_dir == cubelet.state_dir

    (node_proxy_c,) = _by_program(objs, "cube-proxy", "DaemonSet")
    (node_proxy,) = load(objs, node_proxy_c)
    assert node_proxy.node_id == cubelet.node_id, "the node proxy must see this node's sandboxes as local"
    assert node_proxy.https_listeners == ()
    assert [str(e) for e in node_proxy.http_listeners] == ["0.0.0.0:3002"]
    # What the cubelet publishes for the edge proxies is this pod's node proxy.
    assert cubelet.proxy_address == f"{POD_FACTS['status.podIP']}:{node_proxy.http_listeners[0].port}"

    edges = _by_program(objs, "cube-proxy", "Deployment")
    assert len(edges) == 1
    (edge,) = load(objs, edges[0], **{"metadata.name": f"{fullname}-proxy-7d9f8c-x2x5q"})
    assert edge.node_id != cubelet.node_id and edge.proxy_id != node_proxy.proxy_id
    assert edge.domain == node_proxy.domain == domain
    assert edge.master_addr == api.master_addr
    assert (edge.mtls_dir, edge.envoy_mtls_dir) == (Path("/etc/cube/tls/proxy"), Path("/etc/cube/tls/envoy"))


def test_settings_from_values_reach_the_services() -> None:
    objs = scenario("custom")
    (master,) = load(objs, _by_program(objs, "cube-master", "Deployment")[0])
    assert master.default_timeout_s == 600 and master.default_aliases == ("base", "python")
    assert master.log_level == "DEBUG"
    cubelet, vmm = load(objs, _by_program(objs, "cube-cubelet", "DaemonSet")[0])
    assert cubelet.warm_pool_size == 4 and cubelet.registry_allowlist == ("registry.lan:5000",)
    assert vmm.accel.value == "kvm" and vmm.tcg_tb_size_mb == 256
    (vs,) = load(objs, _by_program(objs, "cube-vs", "DaemonSet")[0])
    assert vs.pool_cidr == "198.19.0.0/20" and vs.max_sandboxes == 512
    (edge,) = load(objs, _by_program(objs, "cube-proxy", "Deployment")[0])
    assert edge.access_log == "all" and edge.upstream_connect_timeout == 2.5 and edge.envoy_concurrency == 4
    (api,) = load(objs, container(objs, "Deployment", "sbx-api", "api"))
    assert api.create_timeout_s == 200.0 and api.max_body_bytes == 2 * 1024 * 1024
