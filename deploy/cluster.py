"""A Cube cluster on one machine, laid out the way it runs on several (`make cluster-up`).

    python -m deploy.cluster up        # network, certificates, every program, the default template
    python -m deploy.cluster down      # stop everything and remove what `up` made
    python -m deploy.cluster env       # the exports the SDKs and cubemastercli need (make cluster-env)
    python -m deploy.cluster status    # hosts, programs, etcd members, the master leader

Layout: a bridge (``bridge``, this machine at the subnet's first address) and ``hosts`` network
namespaces ``cube-h1``.. on it, each with one address (``h1`` = .11, ``h2`` = .12, ...) and no route
off the subnet. Each host runs, inside its namespace, an etcd member (a ``hosts``-member cluster,
client and peer traffic TLS), its CubeVS, cubelet and proxy (taps, eBPF and QEMU all live in the
host's namespace); the first ``masters`` hosts run a master (one leads, the others stand by); the
first host also runs the API and its proxy is the edge (HTTPS for ``domain``). Components reach each
other only through their hosts' addresses, with the certificates of their hosts. On this machine a
forwarder takes loopback's port 443 to the edge proxy, as a load balancer would, because SDK
clients resolve names under ``.localhost`` to loopback.

State lives under ``dir``: ``pki/`` (the cluster CA, etcd's peer CA, the operator's certificate),
``h<N>/`` (each host's state dir, with its certificates in ``pki/<role>``; guest artifacts are
shared with the one-node service's cache, which is keyed by their inputs), ``logs/`` (one file per
host and program) and ``run/`` (the supervisor's pid and readiness).

Each program serves its Prometheus /metrics on its host's address, on the one-node ports
(``defaults.*_METRICS_PORT``: one per service, so a host's programs never collide), where a
Prometheus on this machine scrapes them through the bridge, as it would scrape several machines.

Invariants:
- ``up`` is idempotent and refuses while the one-node service (`make up`) holds loopback's 443;
  ``down`` removes every namespace, link, VM and process ``up`` made, and keeps the state dir
  (templates, paused sandboxes) for the next ``up``, as `make down` does.
- Nothing here routes beyond the bridge's subnet: the hosts have no default route.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

from cryptography import x509

from cube_common import certs, defaults
from cube_common.files import write_atomic
from cube_common.mtls import Identity, Role, TlsFiles, sync_channel
from cube_common.procs import Stopped, stop_pid
from cube_common.settings import Settings, SettingsError, setting
from deploy import local_key
from deploy.pki import CA_DAYS, LEAF_DAYS, Pki, node_dirs
from deploy.supervisor import PY, REPO, NodeConfig, Program, Supervisor, etcd_healthy, tcp_open, unix_open
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc

MASTER_PORT = defaults.MASTER_PORT
CUBELET_PORT = defaults.CUBELET_PORT
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
PROXY_HTTP_PORT = defaults.PROXY_HTTP_PORT
EDGE_PORT = defaults.PROXY_HTTPS_PORT
API_PORT = defaults.API_PORT


@dataclass(frozen=True)
class ClusterSettings(Settings):
    ENV_PREFIX: ClassVar[str] = "CUBE_CLUSTER_"
    PROG: ClassVar[str] = "python -m deploy.cluster"
    DESCRIPTION: ClassVar[str] = "A Cube cluster on this machine: hosts in network namespaces"

    dir: Path = setting(Path("/var/lib/cube-cluster"), "the cluster's state (certificates, hosts, logs)")
    hosts: int = setting(3, "how many hosts (network namespaces), each with an etcd member, a cubelet, "
                         "CubeVS and a proxy")
    masters: int = setting(2, "how many of the hosts run a master (the first ones)")
    subnet: str = setting("10.78.0.0/24", "the bridge's subnet (this machine takes .1, host N takes .10+N)")
    name: str = setting("cube", "names the bridge (<name>br0), the hosts' namespaces and links (<name>-h<N>)")
    domain: str = setting("cluster.localhost", "wildcard domain of the cluster's sandboxes")
    edge_forward: bool = setting(True, "forward loopback's port 443 on this machine to the edge proxy (SDK "
                                 "clients in the first host's namespace reach it on that host's loopback)")
    artifacts: Path = setting(Path(defaults.STATE_DIR) / "artifacts", "guest artifacts cache shared by the hosts "
                              "(the one-node service's, keyed by inputs)")
    # Passed to every host's cubelet (services/cubelet/settings.py has their meaning).
    registry_allowlist: tuple[str, ...] = setting((), "registries teams' template builds may pull from although "
                                                  "their addresses are private or loopback (host or host:port)")
    plain_http_registries: tuple[str, ...] = setting((), "registries every template build reaches over plain "
                                                     "HTTP (host or host:port; trusted networks only)")

    def to_env(self) -> dict[str, str]:
        """These settings as the environment `deploy.cluster run` reads them from."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[self.env_names(f)[0]] = (("true" if value else "false") if isinstance(value, bool)
                                         else ",".join(value) if isinstance(value, tuple) else str(value))
        return out

    def validate(self) -> ClusterSettings:
        if not 1 <= self.hosts <= 9:
            raise SettingsError("need 1 <= hosts <= 9")
        if not 1 <= self.masters <= self.hosts:
            raise SettingsError("need 1 <= masters <= hosts")
        net = ipaddress.IPv4Network(self.subnet)
        if net.num_addresses < 32 or not net.is_private:
            raise SettingsError(f"subnet {self.subnet} must be private and hold at least 32 addresses")
        if not (self.name.isalnum() and self.name.islower() and len(self.name) <= 8):
            raise SettingsError("name: at most 8 lowercase letters and digits")
        return self

    # ---- names and addresses ----------------------------------------------------------------

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)

    def host_names(self) -> list[str]:
        return [f"h{i}" for i in range(1, self.hosts + 1)]

    def address(self, host: str) -> str:
        return str(self.net.network_address + 10 + int(host[1:]))

    @property
    def bridge(self) -> str:
        return f"{self.name}br0"

    def netns(self, host: str) -> str:
        return f"{self.name}-{host}"

    def veth(self, host: str) -> str:
        return f"{self.name}-{host}"

    def master_hosts(self) -> list[str]:
        return self.host_names()[: self.masters]

    @property
    def etcd_endpoints(self) -> str:
        return ",".join(f"{self.address(h)}:{ETCD_CLIENT_PORT}" for h in self.host_names())

    @property
    def master_target(self) -> str:
        """Every master, for gRPC clients: the first that answers is used, the next on failure."""
        return "ipv4:" + ",".join(f"{self.address(h)}:{MASTER_PORT}" for h in self.master_hosts())

    @property
    def api_url(self) -> str:
        return f"http://{self.address('h1')}:{API_PORT}"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisor.pid"

    def host_dir(self, host: str) -> Path:
        return self.dir / host

    def host_tls(self, host: str, role: Role) -> Path:
        return node_dirs(self.host_dir(host) / "pki")[role]

    @property
    def operator_dir(self) -> Path:
        return self.dir / "pki" / "operator"

    def peer_dir(self, host: str) -> Path:
        return self.host_dir(host) / "pki" / "etcd-peer"

    def node_config(self, host: str = "h1") -> NodeConfig:
        """The one-node view of ``host`` (for the bootstrap and `make env`'s shapes)."""
        return NodeConfig(state_dir=self.host_dir(host), api_host=self.address(host), api_port=API_PORT,
                          master_addr=self.master_target,
                          cubelet_addr=f"{self.address(host)}:{CUBELET_PORT}",
                          vs_socket=str(self.host_dir(host) / "run" / "vs.sock"), domain=self.domain)


# ---- network ----------------------------------------------------------------------------------

def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def _link_exists(name: str, ns: str | None = None) -> bool:
    return _ip("link", "show", name, ns=ns, check=False).returncode == 0


def network_up(s: ClusterSettings) -> None:
    """The bridge and one namespace per host, each with its address and no route off the subnet."""
    prefix = s.net.prefixlen
    if not _link_exists(s.bridge):
        _ip("link", "add", s.bridge, "type", "bridge")
        _ip("addr", "add", f"{s.gateway}/{prefix}", "dev", s.bridge)
    _ip("link", "set", s.bridge, "up")
    existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    for h in s.host_names():
        ns = s.netns(h)
        if ns not in existing:
            _ip("netns", "add", ns)
        if not _link_exists(s.veth(h)):
            _ip("link", "add", s.veth(h), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("addr", "add", f"{s.address(h)}/{prefix}", "dev", "eth0", ns=ns)
        _ip("link", "set", s.veth(h), "master", s.bridge, "up")
        _ip("link", "set", "eth0", "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)


def network_down(s: ClusterSettings) -> None:
    for h in s.host_names():
        _ip("link", "del", s.veth(h), check=False)
        _ip("netns", "del", s.netns(h), check=False)
    _ip("link", "del", s.bridge, check=False)


def pid_of(s: ClusterSettings, host: str, program: str) -> int:
    """The pid of ``host``'s ``program`` (a word of its command line: ``etcd``, ``services.master``),
    found by the state dir every program of that host has in its environment. LookupError if none."""
    mine = f"CUBE_STATE_DIR={s.host_dir(host)}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if program.encode() in (d / "cmdline").read_bytes().split(b"\0") and \
                    mine in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            continue  # it ended while we looked
    raise LookupError(f"no {program} of {host} runs")


def cut(s: ClusterSettings, host: str, off: bool = True) -> None:
    """Cut ``host`` off the bridge (a network partition of that host), or put it back."""
    _ip("link", "set", s.veth(host), "down" if off else "up")


# ---- certificates -----------------------------------------------------------------------------

def pki_up(s: ClusterSettings) -> None:
    """One cluster CA for every host's components and the operator; etcd's peers get a CA of their
    own, constrained to the bridge's subnet, because members dial each other by address (the
    cluster CA names no address at all)."""
    root = Pki(s.dir / "pki")
    root.root.mkdir(parents=True, exist_ok=True)
    os.chmod(root.root, 0o700)
    ca = root.ensure_ca()
    root.issue(ca, Identity(Role.OPERATOR, "cluster"), s.operator_dir)
    peer_ca = _peer_authority(s)
    for h in s.host_names():
        for role, path in node_dirs(s.host_dir(h) / "pki").items():
            root.issue(ca, Identity(role, h), path)
        out = s.peer_dir(h)
        if not (out / "tls.crt").exists():
            key, cert = peer_ca.issue(f"etcd peer {h}", days=LEAF_DAYS, ips=[ipaddress.IPv4Address(s.address(h))],
                                      server=True, client=True)
            out.mkdir(parents=True, exist_ok=True, mode=0o700)
            certs.write_key(out / "tls.key", key)
            write_atomic(out / "tls.crt", certs.cert_pem(cert), 0o644)
            write_atomic(out / "ca.crt", certs.cert_pem(peer_ca.cert), 0o644)


def _peer_authority(s: ClusterSettings) -> certs.Authority:
    d = s.dir / "pki" / "etcd-peer-ca"
    if (d / "ca.crt").exists() and (d / "ca.key").exists():
        return certs.Authority.load(d / "ca.crt", d / "ca.key")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = certs.make_authority("Cube cluster etcd peers", days=CA_DAYS, permitted=[x509.IPAddress(s.net)])
    ca.save(d / "ca.crt", d / "ca.key")
    return ca


# ---- programs ---------------------------------------------------------------------------------

def _in(s: ClusterSettings, host: str, argv: list[str]) -> list[str]:
    # nsenter switches only the network namespace: `ip netns exec` would also remount /sys, and
    # with it lose the cgroup and bpf filesystems the cubelet and CubeVS need.
    return ["nsenter", f"--net=/run/netns/{s.netns(host)}", "--", *argv]


def _env(s: ClusterSettings, host: str) -> dict[str, str]:
    hd = s.host_dir(host)
    addr = s.address(host)
    vs_sock = hd / "run" / "vs.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUBE_", "E2B_"))}
    if "CUBE_ALLOW_TCG" in os.environ:  # the operator's word on TCG (make sets it on hosts without VT-x/AMD-V)
        env["CUBE_ALLOW_TCG"] = os.environ["CUBE_ALLOW_TCG"]
    env.update({
        "PYTHONPATH": str(REPO),
        "CUBE_STATE_DIR": str(hd),
        "CUBE_NODE_ID": host,
        "CUBE_ETCD_ENDPOINTS": s.etcd_endpoints,
        "CUBE_ETCD_PREFIX": defaults.ETCD_PREFIX,
        "CUBE_DOMAIN": s.domain,
        "CUBE_MASTER_ADDR": s.master_target,
        "CUBE_VS_LISTEN": f"unix://{vs_sock}",
        # bpffs is machine-wide: a cluster's name keeps its pins apart from another cluster's.
        "CUBE_VS_PIN_SUBDIR": f"cube/cluster-{s.name}-{host}",
        "CUBE_CUBELET_LISTEN": f"{addr}:{CUBELET_PORT}",
        "CUBE_CUBELET_VS_ADDRESS": f"unix://{vs_sock}",
        "CUBE_CUBELET_PROXY_ADDRESS": f"{addr}:{PROXY_HTTP_PORT}",
        "CUBE_PROXY_HTTP": f"{addr}:{PROXY_HTTP_PORT}",
        # The edge also on the host's loopback: SDK clients inside the host resolve *.localhost there.
        "CUBE_PROXY_HTTPS": f"{addr}:{EDGE_PORT},127.0.0.1:{EDGE_PORT}" if host == "h1" else "",
        "CUBE_PROXY_MASTER": s.master_target,
        # api.<domain>/volumecontent/... at the edge goes on to the API (on the first host).
        "CUBE_PROXY_API_UPSTREAM": f"{s.address('h1')}:{API_PORT}",
        # A build's COPY archives are on the API's disk (h1's): the other hosts fetch them from it.
        "CUBE_CUBELET_API_URL": f"http://{s.address('h1')}:{API_PORT}",
        "CUBE_PROXY_ENVOY_MTLS_DIR": str(s.host_tls(host, Role.ENVOY)),
        "CUBE_API_HOST": addr,
        "CUBE_API_PORT": str(API_PORT),
        "CUBE_API_AUTH": "true",
        "CUBE_CUBELET_REGISTRY_ALLOWLIST": ",".join(s.registry_allowlist),
        "CUBE_CUBELET_PLAIN_HTTP_REGISTRIES": ",".join(s.plain_http_registries),
        **{f"CUBE_{svc}_METRICS_LISTEN": f"{addr}:{port}" for svc, port in defaults.METRICS_PORTS.items()},
    })
    for svc, role in (("API", Role.API), ("MASTER", Role.MASTER), ("CUBELET", Role.CUBELET), ("VS", Role.VS),
                      ("PROXY", Role.PROXY)):
        env[f"CUBE_{svc}_MTLS_DIR"] = str(s.host_tls(host, role))
    return env


def _etcd(s: ClusterSettings, host: str) -> list[str]:
    tls, peer, addr = s.host_tls(host, Role.ETCD), s.peer_dir(host), s.address(host)
    members = ",".join(f"{h}=https://{s.address(h)}:{ETCD_PEER_PORT}" for h in s.host_names())
    data = s.host_dir(host) / "etcd"
    return ["etcd", "--name", host, "--data-dir", str(data),
            "--listen-client-urls", f"https://{addr}:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"https://{addr}:{ETCD_CLIENT_PORT}",
            "--client-cert-auth", "--trusted-ca-file", str(tls / "ca.crt"),
            "--cert-file", str(tls / "tls.crt"), "--key-file", str(tls / "tls.key"),
            "--listen-peer-urls", f"https://{addr}:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"https://{addr}:{ETCD_PEER_PORT}",
            "--initial-cluster", members, "--initial-cluster-token", "cube-cluster",
            "--initial-cluster-state", "existing" if (data / "member").is_dir() else "new",
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(peer / "ca.crt"),
            "--peer-cert-file", str(peer / "tls.crt"), "--peer-key-file", str(peer / "tls.key")]


def programs(s: ClusterSettings) -> list[Program]:
    hosts = s.host_names()
    operator = NodeConfig(state_dir=s.dir).tls(Role.OPERATOR)  # <dir>/pki/operator
    first = s.address(hosts[0])
    out: list[Program] = []
    # Every member starts before any waits: a member is healthy only once a quorum is up.
    for i, h in enumerate(hosts):
        last = i == len(hosts) - 1
        out.append(Program(f"{h}-etcd", _in(s, h, _etcd(s, h)),
                           (lambda: etcd_healthy(f"{first}:{ETCD_CLIENT_PORT}", operator)) if last else (lambda: True),
                           env=_env(s, h)))
    for h in hosts:
        addr, env = s.address(h), _env(s, h)
        out.append(Program(f"{h}-vs", _in(s, h, [PY, "-m", "services.vs"]),
                           partial(unix_open, str(s.host_dir(h) / "run" / "vs.sock")), env=env))
        out.append(Program(f"{h}-cubelet", _in(s, h, [PY, "-m", "services.cubelet"]),
                           partial(tcp_open, addr, CUBELET_PORT), env=env))
    for h in s.master_hosts():
        addr = s.address(h)
        env = {**_env(s, h), "CUBE_MASTER_ADDR": f"{addr}:{MASTER_PORT}", "CUBE_MASTER_MASTER_ID": f"master-{h}"}
        out.append(Program(f"{h}-master", _in(s, h, [PY, "-m", "services.master"]),
                           partial(tcp_open, addr, MASTER_PORT), env=env))
    for h in hosts:
        addr = s.address(h)
        out.append(Program(f"{h}-proxy", _in(s, h, [PY, "-m", "services.proxy"]),
                           partial(tcp_open, addr, PROXY_HTTP_PORT), env=_env(s, h)))
    # The API keeps build files on a disk of its own, as where it runs apart from the nodes
    # (Kubernetes): every host's cubelet, h1's too, fetches a build's COPY archives from it.
    api_env = {**_env(s, "h1"), "CUBE_BUILD_FILES_DIR": str(s.dir / "api" / "build-files")}
    out.append(Program("h1-api", _in(s, "h1", [PY, "-m", "services.api"]),
                       lambda: tcp_open(first, API_PORT), env=api_env))
    if not s.edge_forward:
        return out
    out.append(Program("edge-forward", [PY, "-m", "deploy.forward", "--listen", f"127.0.0.1:{EDGE_PORT}",
                                        "--listen", f"[::1]:{EDGE_PORT}", "--to", f"{first}:{EDGE_PORT}"],
                       lambda: tcp_open("127.0.0.1", EDGE_PORT), env={**os.environ, "PYTHONPATH": str(REPO)}))
    return out


# ---- up / down --------------------------------------------------------------------------------

def run(s: ClusterSettings) -> None:
    """The supervisor of the whole cluster (foreground; `up` starts it in its own session)."""
    s.logs.mkdir(parents=True, exist_ok=True)
    s.pidfile.write_text(str(os.getpid()))
    sup = Supervisor(s.node_config(), programs(s), logs=s.logs)

    def cleanup() -> None:
        for h in s.host_names():
            subprocess.run(_in(s, h, [PY, "-m", "deploy.cleanup"]), cwd=REPO, env=_env(s, h),
                           stdout=subprocess.DEVNULL, check=False)
        sup.say("cluster cleaned up")

    try:
        sup.serve(s.run_dir / "ready", cleanup)
    finally:
        s.pidfile.unlink(missing_ok=True)


def _running(s: ClusterSettings) -> int | None:
    try:
        pid = int(s.pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def up(s: ClusterSettings, timeout: float = 900.0) -> None:
    if s.edge_forward and _running(s) is None and tcp_open("127.0.0.1", EDGE_PORT):
        raise SystemExit("loopback's port 443 is taken (the one-node service? `make down` first): the cluster's "
                         "edge needs it")
    for d in (s.dir, s.run_dir, s.logs):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(s.dir, 0o700)
    subprocess.run([PY, "-m", "services.cubelet.artifacts"], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO), "CUBE_STATE_DIR": str(s.artifacts.parent)})
    network_up(s)
    pki_up(s)
    for h in s.host_names():
        hd = s.host_dir(h)
        (hd / "run").mkdir(parents=True, exist_ok=True)
        link = hd / "artifacts"
        if not link.is_symlink():
            shutil.rmtree(link, ignore_errors=True)
            link.symlink_to(s.artifacts)
    proc = None
    if _running(s) is None:
        (s.run_dir / "ready").unlink(missing_ok=True)
        out = open(s.logs / "supervisor.out", "ab")
        proc = subprocess.Popen([PY, "-m", "deploy.cluster", "run"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), **s.to_env()})
        out.close()
        print(f"cluster supervisor started (pid {proc.pid}), logs in {s.logs}/")
    deadline = time.monotonic() + timeout
    while not (s.run_dir / "ready").exists():
        if (proc.poll() is not None) if proc is not None else _running(s) is None:
            tail = (s.logs / "supervisor.out").read_text(errors="replace").splitlines()[-20:]
            raise SystemExit("the cluster supervisor stopped while starting:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster not ready after {timeout:.0f}s; see {s.logs}/")
        time.sleep(0.5)
    print("cluster services ready")
    bootstrap(s)


def bootstrap(s: ClusterSettings) -> None:
    """deploy.bootstrap against the first host: the default template (built there; the other
    hosts pull it when a sandbox lands on them), its aliases, the local team's API key (kept in
    h1's state dir), and a sandbox created with the SDK through the edge."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUBE_STATE_DIR": str(s.host_dir("h1")),
           "CUBE_MASTER_ADDR": s.master_target, "CUBE_CUBELET_LISTEN": f"{s.address('h1')}:{CUBELET_PORT}",
           "CUBE_API_HOST": s.address("h1"), "CUBE_API_PORT": str(API_PORT), "CUBE_DOMAIN": s.domain}
    # Inside h1, as a client on that host: its loopback has the edge, whether or not it is forwarded here.
    subprocess.run(_in(s, "h1", [PY, "-m", "deploy.bootstrap"]), cwd=REPO, env=env, check=True)
    wait_for_template(s, "code-interpreter")


def wait_for_template(s: ClusterSettings, template_id: str, timeout: float = 600.0) -> None:
    """Until every host holds ``template_id`` (the others prefetch it from the one that built it),
    so that placement spreads the first creates over all of them."""
    deadline = time.monotonic() + timeout
    with sync_channel(s.master_target, TlsFiles(s.operator_dir), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        while True:
            nodes = stub.ListNodes(master_pb2.ListNodesRequest(), timeout=30).nodes
            held = {n.status.node_id for n in nodes if template_id in n.status.templates}
            missing = sorted(set(s.host_names()) - held)
            if not missing:
                print(f"template {template_id} is on every host")
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"template {template_id} did not reach {', '.join(missing)} in {timeout:.0f}s; "
                                 f"see {s.logs}/<host>-cubelet.log")
            time.sleep(2)


def down(s: ClusterSettings, timeout: float = 180.0) -> None:
    pid = _running(s)
    if pid is not None:
        outcome = stop_pid(pid, timeout)
        print("cluster stopped" if outcome is not Stopped.KILLED else "cluster supervisor killed after timeout")
    else:
        print("no cluster supervisor running")
    network_down(s)


def sdk_env(s: ClusterSettings) -> dict[str, str]:
    """The three variables the unmodified E2B SDKs need to use the cluster."""
    return {"E2B_API_URL": s.api_url, "E2B_API_KEY": local_key.read(s.host_dir("h1")) or "",
            "SSL_CERT_FILE": str(s.host_dir("h1") / "tls" / "ca.pem")}


def shell_env(s: ClusterSettings) -> dict[str, str]:
    env = sdk_env(s)
    return {**env, "NODE_EXTRA_CA_CERTS": env["SSL_CERT_FILE"], "CUBE_TEMPLATE_ID": "code-interpreter",
            "CUBE_MASTER_ADDR": s.master_target, "CUBE_TLS_DIR": str(s.operator_dir)}


def run_client(s: ClusterSettings, script: str, host: str = "h1", timeout: float = 600) -> dict:
    """Run the Python ``script`` as an SDK client on ``host`` (in its namespace, where names under
    .localhost reach h1's edge, forwarded or not), with only ``sdk_env`` set. It prints one JSON
    object last, which is returned; a failure raises RuntimeError with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "CUBE_"))}
    env.update({**sdk_env(s), "PYTHONPATH": str(REPO)})
    r = subprocess.run(_in(s, host, [PY, "-c", textwrap.dedent(script)]), env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"client on {host} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def status(s: ClusterSettings) -> None:
    pid = _running(s)
    print(f"supervisor: {'pid ' + str(pid) if pid else 'not running'}"
          f"{' (ready)' if (s.run_dir / 'ready').exists() else ''}")
    for h in s.host_names():
        addr = s.address(h)
        parts = [f"etcd {'up' if tcp_open(addr, ETCD_CLIENT_PORT) else 'down'}",
                 f"cubelet {'up' if tcp_open(addr, CUBELET_PORT) else 'down'}",
                 f"proxy {'up' if tcp_open(addr, PROXY_HTTP_PORT) else 'down'}"]
        if h in s.master_hosts():
            parts.append(f"master {'up' if tcp_open(addr, MASTER_PORT) else 'down'}")
        print(f"{h} {addr:15} " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = ClusterSettings.parser()
    ap.add_argument("command", choices=["up", "down", "run", "env", "status"])
    a = ap.parse_args(argv)
    try:
        s = ClusterSettings.from_namespace(a)
    except SettingsError as e:
        print(f"deploy.cluster: {e}", file=sys.stderr)
        return 2
    if a.command == "env":
        from deploy.env import exports

        print("\n".join(exports(shell_env(s))))
    elif a.command == "status":
        status(s)
    elif a.command == "run":
        run(s)
    elif a.command == "up":
        up(s)
    else:
        down(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

