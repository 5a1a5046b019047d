"""What charts/cube's render must say, beyond being valid Kubernetes.

Invariants checked (on the defaults and the scenarios of render.SCENARIOS):
- Topology: api, master (2 replicas by default, a PodDisruptionBudget that selects them) and proxy
  Deployments; a DaemonSet with the cubelet, CubeVS and a node proxy; etcd as a 3-member
  StatefulSet whose initial cluster, advertised URLs and the services' endpoint lists agree, or an
  external etcd's endpoints everywhere instead.
- Privilege: the cubelet and CubeVS are privileged, with /dev/kvm, /dev/net/tun, the bpffs and the
  node's state directory from the host; every other container runs as non-root, without privilege
  escalation, on a read-only root filesystem.
- Secrets: every Secret volume has mode 0400 or 0440 (nothing for others); a service's TLS
  directory is either such a volume (root containers) or the private copy the TLS init container
  makes from exactly that role's Secret (non-root ones); the eight roles of deploy/pki.py each
  have their Secret; no ConfigMap and no env value holds key or certificate material or any
  Secret's value.
- Exposure: the Ingress sends *.<domain> to the proxy's HTTP port and api.<domain> to the API; the
  loadBalancer mode serves 443 from the proxy's HTTPS listener instead; a Service's target port is
  a named port whose listener is configured on 0.0.0.0; probes use the ports the services listen on.
- Operability: every container has CPU and memory requests (and a memory limit, but the
  cubelet's, which would cap all sandboxes together); standard labels everywhere; selectors match
  their pods; Prometheus annotations only when asked (a pod's own annotation wins), every Cube
  service's /metrics on a named container port of its own; images, nodeSelectors, tolerations and
  replicas from values.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress

import helm_python
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cube_common.mtls import Role
from tests.chart.render import (
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Container,
    Obj,
    container,
    container_env,
    containers,
    find,
    mount_for,
    one,
    pod_metadata,
    pod_spec,
    render,
    render_files,
    scenario,
)

ROLES = {r.value for r in Role}
NON_ROOT_PROGRAMS = {"cube-api", "cube-master", "cube-proxy", "cubemastercli"}
PRIVILEGED = {("DaemonSet", "cubelet"), ("DaemonSet", "vs")}
PEM_MARKERS = ("-----BEGIN", "PRIVATE KEY", "CERTIFICATE-----")


def _names(objs: list[Obj], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in find(objs, kind)}


# ---- topology --------------------------------------------------------------------------------------

def test_default_topology() -> None:
    objs = scenario("default")
    assert _names(objs, "Deployment") == {"cube-api", "cube-master", "cube-proxy"}
    assert _names(objs, "DaemonSet") == {"cube-node"}
    assert _names(objs, "StatefulSet") == {"cube-etcd"}
    assert one(objs, "Deployment", "cube-master")["spec"]["replicas"] == 2
    assert one(objs, "StatefulSet", "cube-etcd")["spec"]["replicas"] == 3
    node = one(objs, "DaemonSet", "cube-node")
    assert {c["name"] for c in node["spec"]["template"]["spec"]["containers"]} == {"cubelet", "vs", "proxy"}
    assert {c.program for c in containers(objs, init=False)} >= {
        "cube-api", "cube-master", "cube-proxy", "cube-cubelet", "cube-vs", "/usr/local/bin/etcd", "cubemastercli"}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_master_disruption_budget_keeps_a_master(name: str) -> None:
    objs = scenario(name)
    master = next(o for o in find(objs, "Deployment") if o["metadata"]["name"].endswith("-master"))
    pdbs = [p for p in find(objs, "PodDisruptionBudget")
            if _selects(p["spec"]["selector"]["matchLabels"], pod_metadata(master)["labels"])]
    assert len(pdbs) == 1
    assert pdbs[0]["spec"]["minAvailable"] == 1 < master["spec"]["replicas"]


def test_replicas_come_from_values() -> None:
    objs = scenario("custom")
    assert one(objs, "Deployment", "sbx-api")["spec"]["replicas"] == 3
    assert one(objs, "Deployment", "sbx-master")["spec"]["replicas"] == 3
    assert one(objs, "Deployment", "sbx-proxy")["spec"]["replicas"] == 4
    assert one(objs, "StatefulSet", "sbx-etcd")["spec"]["replicas"] == 5


def _etcd_users(objs: list[Obj]) -> list[tuple[Container, str]]:
    out = []
    for c in containers(objs, init=False):
        env = container_env(objs, c)
        for key, value in env.items():
            if key.endswith("_ETCD_ENDPOINTS"):
                out.append((c, value))
    return out


@pytest.mark.parametrize("name,fullname,domain,members", [
    ("default", "cube", "cluster.local", 3), ("custom", "sbx", "k8s.example.internal", 5)])
def test_etcd_members_and_clients_agree(name: str, fullname: str, domain: str, members: int) -> None:
    objs = scenario(name)
    sts = one(objs, "StatefulSet", f"{fullname}-etcd")
    headless = one(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    pod_domain = f"{headless['metadata']['name']}.{NAMESPACE}.svc.{domain}"
    pods = [f"{fullname}-etcd-{i}" for i in range(members)]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(a[2:].split("=", 1) for a in args if "=" in a)
    assert flags["initial-cluster"] == ",".join(f"{p}=https://{p}.{pod_domain}:2380" for p in pods)
    assert flags["advertise-client-urls"] == f"https://$(POD_NAME).{pod_domain}:2379"
    assert flags["initial-advertise-peer-urls"] == f"https://$(POD_NAME).{pod_domain}:2380"
    assert {"client-cert-auth", "peer-client-cert-auth"} <= {a[2:] for a in args if "=" not in a}
    want = ",".join(f"{p}.{pod_domain}:2379" for p in pods)
    users = _etcd_users(objs)
    assert {c.program for c, _ in users} == {"cube-master", "cube-cubelet", "cube-proxy"}
    assert all(eps == want for _, eps in users)


def test_external_etcd_replaces_the_statefulset() -> None:
    objs = scenario("external-etcd")
    assert not find(objs, "StatefulSet") and not find(objs, "Secret")
    assert not [s for s in _names(objs, "Service") if "etcd" in s]
    want = ",".join(SCENARIOS["external-etcd"]["externalEtcd"]["endpoints"])  # type: ignore[index]
    users = _etcd_users(objs)
    assert len(users) == 4  # master, cubelet, the edge and the node proxy
    assert all(eps == want for _, eps in users)


def test_external_etcd_needs_endpoints() -> None:
    with pytest.raises(helm_python.HelmError, match=r"externalEtcd\.endpoints"):
        render({"etcd": {"enabled": False}})


def test_generated_etcd_peer_certificate_names_every_member() -> None:
    objs = scenario("default")
    secret = one(objs, "Secret", "cube-etcd-peer-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=365)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)
    for i in range(3):
        host = f"cube-etcd-{i}.cube-etcd-peer.{NAMESPACE}.svc.cluster.local"
        assert any(n.startswith("*.") and host.split(".", 1)[1] == n[2:] for n in names), (host, names)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert b"PRIVATE KEY" in data["tls.key"]


def test_a_given_peer_secret_is_used_and_none_generated() -> None:
    objs = scenario("custom")
    assert not find(objs, "Secret")
    pod = pod_spec(one(objs, "StatefulSet", "sbx-etcd"))
    assert pod is not None
    names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert names == {"etcd-peer-from-ca", "sbx-etcd-tls"}


# ---- privilege -------------------------------------------------------------------------------------

def _host_paths(c: Container) -> dict[str, Obj]:
    """mountPath -> hostPath volume source, for the container's hostPath mounts."""
    out = {}
    for m in c.spec.get("volumeMounts") or []:
        vol = next(v for v in c.pod["volumes"] if v["name"] == m["name"])
        if "hostPath" in vol:
            out[m["mountPath"]] = vol["hostPath"]
    return out


@pytest.mark.parametrize("name,daemonset,state_dir", [("default", "cube-node", "/var/lib/cube"),
                                                      ("custom", "sbx-node", "/srv/cube")])
def test_node_agents_are_privileged_with_the_host_devices(name: str, daemonset: str, state_dir: str) -> None:
    objs = scenario(name)
    cubelet = container(objs, "DaemonSet", daemonset, "cubelet")
    vs = container(objs, "DaemonSet", daemonset, "vs")
    for c in (cubelet, vs):
        assert c.spec["securityContext"]["privileged"] is True
        assert c.pod.get("hostNetwork") is not True  # the sandboxes' network is the pod's
    kvm = _host_paths(cubelet)
    assert kvm["/dev/kvm"] == {"path": "/dev/kvm", "type": "CharDevice"}
    assert kvm["/dev/net/tun"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert kvm["/var/lib/cube"]["path"] == state_dir
    net = _host_paths(vs)
    assert net["/dev/net/tun"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert net["/sys/fs/bpf"]["path"] == "/sys/fs/bpf"
    assert net["/var/lib/cube"]["path"] == state_dir
    bpffs = next(m for m in vs.spec["volumeMounts"] if m["mountPath"] == "/sys/fs/bpf")
    assert bpffs["mountPropagation"] == "Bidirectional"
    # CubeVS's socket, which the cubelet dials, is on a volume both mount.
    env_vs, env_cubelet = container_env(objs, vs), container_env(objs, cubelet)
    assert env_vs["CUBE_VS_LISTEN"] == env_cubelet["CUBE_CUBELET_VS_ADDRESS"] == "unix:///run/cube/vs.sock"
    assert mount_for(vs, "/run/cube/vs.sock")[1] == mount_for(cubelet, "/run/cube/vs.sock")[1]
    assert vs.spec["readinessProbe"]["exec"]["command"] == ["test", "-S", "/run/cube/vs.sock"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_everything_else_runs_unprivileged(name: str) -> None:
    objs = scenario(name)
    checked = 0
    for c in containers(objs):
        sc = c.spec.get("securityContext") or {}
        if (c.owner["kind"], c.spec["name"]) in PRIVILEGED:
            continue
        assert sc.get("privileged") is not True, c.where
        assert sc.get("allowPrivilegeEscalation") is False, c.where
        assert sc.get("readOnlyRootFilesystem") is True, c.where
        if c.init:
            # The TLS init container: root to read root's 0400 files, only CHOWN and FOWNER.
            assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}, c.where
            continue
        assert sc["capabilities"]["drop"] == ["ALL"], c.where
        run_as = sc.get("runAsUser", (c.pod.get("securityContext") or {}).get("runAsUser"))
        assert sc.get("runAsNonRoot", (c.pod.get("securityContext") or {}).get("runAsNonRoot")) is True, c.where
        assert run_as not in (None, 0), c.where
        checked += 1
    assert checked >= 5
    for c in containers(objs):
        if c.program in NON_ROOT_PROGRAMS and not c.init:
            assert c.spec["securityContext"]["runAsUser"] == 10001, c.where
    for o in objs:
        if pod_spec(o) is not None:
            assert pod_spec(o)["automountServiceAccountToken"] is False  # type: ignore[index]


# ---- secrets ---------------------------------------------------------------------------------------

def _secret_volumes(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    out = []
    for o in objs:
        pod = pod_spec(o)
        for v in (pod or {}).get("volumes") or []:
            if "secret" in v:
                out.append((o, v))
    return out


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_secret_volumes_are_private(name: str) -> None:
    vols = _secret_volumes(scenario(name))
    assert len(vols) >= 9  # api 1, master 1, proxy 2, node 4, test 1 (+ etcd 2)
    for owner, v in vols:
        mode = v["secret"]["defaultMode"]
        assert mode in (0o400, 0o440), (owner["metadata"]["name"], v["name"], oct(mode))
        assert not v["secret"].get("items"), "per-file modes would escape defaultMode"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_tls_dir_holds_its_roles_secret(name: str) -> None:
    """A service's *_MTLS_DIR is its role's Secret: mounted directly (root) or copied privately."""
    objs = scenario(name)
    fullname = "sbx" if name == "custom" else RELEASE
    given = (SCENARIOS[name] or {}).get("tls", {}).get("secrets", {})
    seen_roles: set[str] = set()
    for c in containers(objs, init=False):
        env = container_env(objs, c)
        dirs = {k: v for k, v in env.items() if k.endswith("MTLS_DIR")}
        if c.program == "cubemastercli":
            dirs = {"operator": c.spec["args"][c.spec["args"].index("--tls-dir") + 1]}
        for key, path in dirs.items():
            role = path.rstrip("/").rsplit("/", 1)[1]
            assert role in ROLES, (c.where, key, path)
            if key != "operator":
                svc_role = {"CUBE_PROXY_ENVOY_MTLS_DIR": "envoy"}.get(key, key.split("_")[1].lower())
                assert role == svc_role, (c.where, key, path)
            secret = given.get(role) or f"{fullname}-{role}-tls"
            mount, vol = mount_for(c, path + "/tls.key")
            if "secret" in vol:
                assert c.spec["securityContext"].get("runAsUser") == 0, f"{c.where}: root reads a 0400 Secret"
                assert vol["secret"]["secretName"] == secret and vol["secret"]["defaultMode"] == 0o400
            else:
                assert vol.get("emptyDir", {}).get("medium") == "Memory", c.where
                assert mount.get("readOnly") is True
                init = next(i for i in c.pod["initContainers"] if i["name"] == "tls-init")
                args = init["args"]
                assert args[:2] == ["install-tls", "10001:10001"]
                pairs = dict(zip(args[2::2], args[3::2], strict=True))
                src = next(s for s, d in pairs.items() if d == path)
                initc = Container(c.owner, c.pod, init, True)
                assert mount_for(initc, path)[1] == vol
                src_vol = mount_for(initc, src + "/tls.key")[1]
                assert src_vol["secret"]["secretName"] == secret, (c.where, role)
            seen_roles.add(role)
    # etcd's own certificate is not a service's TLS directory: the StatefulSet mounts it.
    assert seen_roles == ROLES - {"etcd"}
    if name != "external-etcd":
        sts = next(iter(find(objs, "StatefulSet")))
        names = {v["secret"]["secretName"] for v in sts["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        assert given.get("etcd", f"{fullname}-etcd-tls") in names


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_secret_material_outside_secrets(name: str) -> None:
    objs = scenario(name)
    secret_values = {base64.b64decode(v).decode(errors="replace").strip()
                     for s in find(objs, "Secret") for v in (s.get("data") or {}).values()}
    secret_values |= {str(v).strip() for s in find(objs, "Secret") for v in (s.get("stringData") or {}).values()}
    texts = [(f"ConfigMap/{cm['metadata']['name']}/{k}", str(v))
             for cm in find(objs, "ConfigMap") for k, v in (cm.get("data") or {}).items()]
    texts += [(f"{c.where}/{e['name']}", str(e["value"])) for c in containers(objs)
              for e in c.spec.get("env") or [] if "value" in e]
    texts += [(f"{c.where}/args", " ".join(map(str, c.spec.get("args") or []))) for c in containers(objs)]
    assert len(texts) > 40
    for where, text in texts:
        assert not any(m in text for m in PEM_MARKERS), where
        assert not any(s and s in text for s in secret_values), where
    for o in objs:
        if o["kind"] not in ("Secret",):
            dump = repr(o)
            assert "PRIVATE KEY" not in dump, f"{o['kind']}/{o['metadata']['name']}"


# ---- exposure --------------------------------------------------------------------------------------

def _service_targets(objs: list[Obj], service: Obj) -> list[tuple[Container, Obj]]:
    """(container, containerPort) behind each port of ``service``."""
    out = []
    for c in containers(objs, init=False):
        if not _selects(service["spec"]["selector"], pod_metadata(c.owner)["labels"]):
            continue
        for sp in service["spec"]["ports"]:
            for cp in c.spec.get("ports") or []:
                if sp["targetPort"] in (cp["name"], cp["containerPort"]):
                    out.append((c, cp))
    return out


LISTEN_KEYS = {"cube-api": ("CUBE_API_HOST", "CUBE_API_PORT"), "cube-master": "CUBE_MASTER_LISTEN",
               "cube-cubelet": "CUBE_CUBELET_LISTEN"}


def _listen_addresses(env: dict[str, str], program: str) -> set[str]:
    if program == "cube-api":
        return {f"{env['CUBE_API_HOST']}:{env['CUBE_API_PORT']}"}
    if program == "cube-proxy":
        return {a for k in ("CUBE_PROXY_HTTP_LISTENERS", "CUBE_PROXY_HTTPS_LISTENERS")
                for a in env[k].split(",") if a}
    key = LISTEN_KEYS[program]
    assert isinstance(key, str)
    return {env[key]}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_services_front_listeners_bound_to_every_address(name: str) -> None:
    objs = scenario(name)
    checked = 0
    for svc in find(objs, "Service"):
        targets = _service_targets(objs, svc)
        assert len(targets) >= len(svc["spec"]["ports"]), svc["metadata"]["name"]
        for c, cp in targets:
            if c.program.endswith("etcd"):
                flags = dict(a[2:].split("=", 1) for a in c.spec["args"] if "=" in a)
                urls = flags["listen-client-urls"] + "," + flags["listen-peer-urls"]
                assert f"https://0.0.0.0:{cp['containerPort']}" in urls.split(",")
            else:
                listen = _listen_addresses(container_env(objs, c), c.program)
                assert f"0.0.0.0:{cp['containerPort']}" in listen, (c.where, listen)
            checked += 1
    assert checked >= 3  # api, master, proxy (+ etcd's client and peer ports)


def test_ingress_sends_the_wildcard_domain_to_the_proxy() -> None:
    for name, fullname, domain in (("default", "cube", "cube.example.com"),
                                   ("custom", "sbx", "sandboxes.example.org")):
        objs = scenario(name)
        ing = one(objs, "Ingress", f"{fullname}-proxy")
        rules = {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ing["spec"]["rules"]}
        assert rules == {f"*.{domain}": {"name": f"{fullname}-proxy", "port": {"name": "http"}},
                         f"api.{domain}": {"name": f"{fullname}-api", "port": {"name": "http"}}}
        proxy_svc = one(objs, "Service", f"{fullname}-proxy")
        assert proxy_svc["spec"]["type"] == "ClusterIP"
        (c, cp), = _service_targets(objs, proxy_svc)
        env = container_env(objs, c)
        assert env["CUBE_PROXY_HTTP_LISTENERS"] == f"0.0.0.0:{cp['containerPort']}"
        assert env["CUBE_PROXY_HTTPS_LISTENERS"] == ""  # the controller terminates TLS
        assert env["CUBE_PROXY_DOMAIN"] == domain
    custom = one(scenario("custom"), "Ingress", "sbx-proxy")
    assert custom["spec"]["ingressClassName"] == "nginx"
    assert custom["spec"]["tls"] == [{"secretName": "wildcard-tls",
                                      "hosts": ["*.sandboxes.example.org", "api.sandboxes.example.org"]}]
    assert "tls" not in one(scenario("default"), "Ingress", "cube-proxy")["spec"]


def test_loadbalancer_serves_https_from_the_proxy() -> None:
    objs = scenario("loadbalancer")
    assert not find(objs, "Ingress")
    svc = one(objs, "Service", "cube-proxy")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    ports = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert ports == {443: "https", 80: "http"}
    c = container(objs, "Deployment", "cube-proxy", "proxy")
    env = container_env(objs, c)
    named = {p["name"]: p["containerPort"] for p in c.spec["ports"]}
    assert env["CUBE_PROXY_HTTPS_LISTENERS"] == f"0.0.0.0:{named['https']}"
    # The public CA and certificate reach <state_dir>/tls, where services/proxy/tls.py reads them.
    init = next(i for i in c.pod["initContainers"] if i["name"] == "tls-init")
    assert init["args"][-2:] == ["/etc/cube/secrets/public", f"{env['CUBE_PROXY_STATE_DIR']}/tls"]
    public = next(v for v in c.pod["volumes"] if v["name"] == "secret-public")
    assert public["secret"] == {"secretName": "cube-public-tls", "defaultMode": 0o400}
    assert mount_for(c, env["CUBE_PROXY_STATE_DIR"] + "/tls")[1]["name"] == "state"


@pytest.mark.parametrize("name,fullname,namespace_domain", [("default", "cube", "cluster.local"),
                                                             ("loadbalancer", "cube", "cluster.local"),
                                                             ("custom", "sbx", "k8s.example.internal")])
def test_edge_proxies_and_cubelets_reach_the_api_service(name: str, fullname: str, namespace_domain: str) -> None:
    """api.<domain>/volumecontent/... reaching an edge proxy goes on to the API's Service (its
    cluster DNS name and port); node proxies, reached only by the edge's hops, have no such route.
    Cubelets reach the same Service for a build's COPY files."""
    objs = scenario(name)
    svc = one(objs, "Service", f"{fullname}-api")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    edge = container_env(objs, container(objs, "Deployment", f"{fullname}-proxy", "proxy"))
    assert edge["CUBE_PROXY_API_UPSTREAM"] == f"{fullname}-api.{NAMESPACE}.svc.{namespace_domain}:{port}"
    node = next(c for c in containers(objs, init=False)
                if c.program == "cube-proxy" and c.owner["kind"] == "DaemonSet")
    assert container_env(objs, node)["CUBE_PROXY_API_UPSTREAM"] == ""
    # Cubelets fetch a build's COPY archives from the API's Service (they share no disk with it).
    cubelet = next(c for c in containers(objs, init=False)
                   if c.program == "cube-cubelet" and c.owner["kind"] == "DaemonSet")
    assert container_env(objs, cubelet)["CUBE_CUBELET_API_URL"] == \
        f"http://{fullname}-api.{NAMESPACE}.svc.{namespace_domain}:{port}"


def test_loadbalancer_needs_one_public_ca() -> None:
    with pytest.raises(helm_python.HelmError, match=r"publicTls\.secretName"):
        render({"proxy": {"expose": {"type": "loadBalancer"}}})
    with pytest.raises(helm_python.HelmError, match="ingress or loadBalancer"):
        render({"proxy": {"expose": {"type": "nodePort"}}})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_probes_use_the_ports_services_listen_on(name: str) -> None:
    objs = scenario(name)
    for c in containers(objs, init=False):
        if c.owner["kind"] == "Pod":
            continue  # the helm test pod runs to completion
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in c.spec, f"{c.where} has no {probe}"
            p = c.spec[probe]
            handler = p.get("httpGet") or p.get("tcpSocket")
            if handler is None:
                assert c.program == "cube-vs" and p["exec"]["command"][:2] == ["test", "-S"]
                continue
            port = next(cp["containerPort"] for cp in c.spec["ports"] if handler["port"] in (cp["name"],
                                                                                            cp["containerPort"]))
            if c.program.endswith("etcd"):
                flags = dict(a[2:].split("=", 1) for a in c.spec["args"] if "=" in a)
                assert flags["listen-metrics-urls"] == f"http://0.0.0.0:{port}"
            else:
                assert f"0.0.0.0:{port}" in _listen_addresses(container_env(objs, c), c.program), c.where
        if c.program == "cube-api":
            assert c.spec["readinessProbe"]["httpGet"]["path"] == "/health"


# ---- operability -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_container_has_resources(name: str) -> None:
    for c in containers(scenario(name)):
        res = c.spec.get("resources") or {}
        assert {"cpu", "memory"} <= set(res.get("requests", {})), c.where
        if c.spec["name"] != "cubelet" or name == "custom":
            assert "memory" in res.get("limits", {}), c.where


def test_custom_values_reach_the_pods() -> None:
    objs = scenario("custom")
    api = container(objs, "Deployment", "sbx-api", "api")
    assert api.spec["resources"] == {"requests": {"cpu": "250m", "memory": "300Mi"},
                                     "limits": {"cpu": "2", "memory": "700Mi"}}
    assert api.spec["image"] == "registry.example.org/cube:1.2.3" and api.spec["imagePullPolicy"] == "Always"
    assert api.pod["imagePullSecrets"] == [{"name": "regcred"}]
    master = container(objs, "Deployment", "sbx-master", "master")
    assert master.spec["image"] == "registry.example.org/cube:1.2.4"
    assert master.pod["nodeSelector"] == {"node-role.example.org/control": "true"}
    assert master.pod["tolerations"] == [{"key": "control", "operator": "Exists", "effect": "NoSchedule"}]
    node = container(objs, "DaemonSet", "sbx-node", "cubelet")
    assert node.spec["image"] == "registry.example.org/cube-node:1.2.3"
    # Helm merges maps: the default kubernetes.io/os stays beside the user's label.
    assert node.pod["nodeSelector"] == {"kubernetes.io/os": "linux", "cube.example.org/sandboxes": "true"}
    assert node.pod["tolerations"][0]["key"] == "sandboxes"
    assert node.spec["resources"]["limits"]["memory"] == "60Gi"
    sts = one(objs, "StatefulSet", "sbx-etcd")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "quay.io/coreos/etcd:v3.5.17"
    defaults = scenario("default")
    assert container(defaults, "Deployment", "cube-api", "api").spec["image"] == "cube:0.1.0"
    assert "nodeSelector" not in container(defaults, "Deployment", "cube-master", "master").pod


def test_settings_maps_become_variables() -> None:
    objs = scenario("custom")
    master = one(objs, "ConfigMap", "sbx-master")["data"]
    assert master["CUBE_MASTER_DEFAULT_TIMEOUT_S"] == "600"
    assert master["CUBE_MASTER_DEFAULT_ALIASES"] == "base,python"
    assert one(objs, "ConfigMap", "sbx-api")["data"]["CUBE_API_MAX_BODY_BYTES"] == "2097152"
    cubelet = one(objs, "ConfigMap", "sbx-node-cubelet")["data"]
    assert cubelet["CUBE_VMM_ACCEL"] == "kvm" and cubelet["CUBE_VMM_TCG_TB_SIZE_MB"] == "256"
    assert one(objs, "ConfigMap", "sbx-proxy")["data"]["CUBE_PROXY_UPSTREAM_CONNECT_TIMEOUT"] == "2.5"


@pytest.mark.parametrize("values,variable", [
    ({"master": {"settings": {"listen": "127.0.0.1:1"}}}, "CUBE_MASTER_LISTEN"),
    ({"master": {"settings": {"advertise": "10.0.0.1:1"}}}, "CUBE_MASTER_ADVERTISE"),
    ({"api": {"settings": {"auth": False}}}, "CUBE_API_AUTH"),
    ({"node": {"cubelet": {"settings": {"node_id": "x"}}}}, "CUBE_CUBELET_NODE_ID"),
])
def test_a_setting_the_chart_manages_cannot_be_overridden(values: Obj, variable: str) -> None:
    with pytest.raises(helm_python.HelmError, match=variable):
        render(values)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_standard_labels_and_selectors(name: str) -> None:
    objs = scenario(name)
    for o in objs:
        labels = o["metadata"].get("labels") or {}
        assert labels.get("helm.sh/chart") == "cube-0.1.0", o["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        assert labels.get("app.kubernetes.io/instance") == RELEASE
        assert labels.get("app.kubernetes.io/name") == "cube"
        assert labels.get("app.kubernetes.io/version") == "0.1.0"
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            assert _selects(o["spec"]["selector"]["matchLabels"], pod_metadata(o)["labels"])
            assert "helm.sh/chart" not in o["spec"]["selector"]["matchLabels"]  # immutable field
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs if pod_spec(o)}
    assert len(components) == len({o["metadata"]["name"] for o in objs if pod_spec(o)})


def _scrape_annotations(objs: list[Obj]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: {k: v for k, v in (pod_metadata(o).get("annotations") or {}).items()
                                    if k.startswith("prometheus.io/")}
            for o in objs if pod_spec(o) is not None}


def _scrape(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def test_prometheus_annotations_only_when_asked() -> None:
    assert not any(_scrape_annotations(scenario("default")).values())
    got = {k: v for k, v in _scrape_annotations(scenario("custom")).items() if v}
    # The node pod's annotation names its cubelet; CubeVS and the node proxy serve on named ports.
    assert got == {"sbx-etcd": _scrape(2381), "sbx-api": _scrape(9470), "sbx-master": _scrape(9471),
                   "sbx-proxy": _scrape(9474), "sbx-node": _scrape(9472)}
    flags = one(scenario("custom"), "StatefulSet", "sbx-etcd")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--listen-metrics-urls=http://0.0.0.0:2381" in flags
    # An annotation a pod sets itself wins over the chart's.
    objs = render({"metrics": {"prometheusAnnotations": True},
                   "api": {"podAnnotations": {"prometheus.io/scrape": "false", "team": "sandboxes"}}})
    api = pod_metadata(one(objs, "Deployment", "cube-api"))["annotations"]
    assert api["prometheus.io/scrape"] == "false" and api["team"] == "sandboxes"
    assert api["prometheus.io/port"] == "9470" and "checksum/settings" in api


CUBE_METRICS_VARIABLES = {"cube-api": "CUBE_API_METRICS_LISTEN", "cube-master": "CUBE_MASTER_METRICS_LISTEN",
                          "cube-cubelet": "CUBE_CUBELET_METRICS_LISTEN", "cube-vs": "CUBE_VS_METRICS_LISTEN",
                          "cube-proxy": "CUBE_PROXY_METRICS_LISTEN"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_cube_service_serves_metrics_on_a_named_port(name: str) -> None:
    """Each Cube container listens for /metrics on every address of its pod, on a container port
    whose name ends in "metrics"; the ports of one pod differ; an annotated port is one of them."""
    objs = scenario(name)
    by_pod: dict[str, list[int]] = {}
    for c in containers(objs, init=False):
        if c.program not in CUBE_METRICS_VARIABLES:
            continue
        named = {p["name"]: p["containerPort"] for p in c.spec.get("ports") or [] if p["name"].endswith("metrics")}
        assert len(named) == 1, c.where
        (port,) = named.values()
        assert container_env(objs, c)[CUBE_METRICS_VARIABLES[c.program]] == f"0.0.0.0:{port}", c.where
        by_pod.setdefault(c.owner["metadata"]["name"], []).append(port)
    assert {len(v) for k, v in by_pod.items() if k.endswith("-node")} == {3}
    for pod, ports in by_pod.items():
        assert len(set(ports)) == len(ports), pod
    if name == "custom":
        for pod, ann in _scrape_annotations(objs).items():
            if pod in by_pod:
                assert int(ann["prometheus.io/port"]) in by_pod[pod], pod


def test_settings_changes_roll_the_pods() -> None:
    def checksums(objs: list[Obj]) -> dict[str, str]:
        return {o["metadata"]["name"]: pod_metadata(o)["annotations"]["checksum/settings"]
                for o in objs if o["kind"] in ("Deployment", "DaemonSet")}
    base = checksums(render())
    changed = checksums(render({"master": {"settings": {"default_timeout_s": 900}}}))
    assert {k for k in base if base[k] != changed[k]} == {"cube-master"}
    assert {k for k in base if base[k] != checksums(render({"domain": "other.example.net"}))[k]} == {
        "cube-api", "cube-proxy", "cube-node"}


def test_notes_tell_the_sdk_domain() -> None:
    notes = next(v for k, v in render_files().items() if k.endswith("NOTES.txt"))
    assert "E2B_DOMAIN=cube.example.com" in notes
    assert "https://<port>-<sandboxID>.cube.example.com" in notes


def test_pod_addresses_are_plain_ips() -> None:
    """The advertised addresses are the pod's IP (the route and node records want host:port)."""
    objs = scenario("default")
    env = container_env(objs, container(objs, "DaemonSet", "cube-node", "cubelet"))
    host, port = env["CUBE_CUBELET_PROXY_ADDRESS"].rsplit(":", 1)
    ipaddress.ip_address(host)
    assert int(port) == 3002
