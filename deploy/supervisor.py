"""One-node supervisor: etcd and every Cube service on this machine, for `make up` / `make down`.

    python -m deploy.supervisor run        # foreground: start everything, restart what crashes
    python -m deploy.supervisor stop       # stop a running supervisor and everything it started

Before anything starts, ``deploy.pki`` makes sure this node has its cluster CA and a certificate
per component (``<state>/pki/``): etcd serves clients only over TLS with client certificates, and
every gRPC hop (api→master, master→cubelet, cubelet→vs, proxy→master, Envoy→proxy xDS) is mutual
TLS. Programs start in dependency order, each after the previous one is ready; a program that exits
is restarted with backoff. Logs go to `<state>/logs/<program>.log`; the supervisor's pid is in
`<state>/run/supervisor.pid`. Sandboxes (QEMU processes) outlive a cubelet restart on purpose, so
`stop` also tells the cubelet's managers to remove every sandbox and CubeVS to tear its datapath
down: after `make down` nothing of Cube is left running.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.addresses import split_host_port
from cube_common.mtls import Role, TlsError, TlsFiles, client_ssl_context, server_name
from cube_common.procs import Stopped, stop_pid, stop_process
from cube_common.settings import Settings, setting, shared
from deploy.pki import Pki, node_dirs

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True)
class NodeConfig(Settings):
    """Where this node's services listen; each service gets its part through ``env()``."""

    ENV_PREFIX: ClassVar[str] = "CUBE_"

    state_dir: Path = shared.state_dir()
    etcd_client_port: int = setting(defaults.ETCD_PORT, "etcd's client port", env="CUBE_ETCD_PORT")
    etcd_peer_port: int = setting(2380, "etcd's peer port")
    api_host: str = setting(defaults.LOOPBACK, "cube-api's address", env="CUBE_API_HOST")
    api_port: int = setting(defaults.API_PORT, "cube-api's port")
    master_addr: str = shared.master_addr()
    cubelet_addr: str = setting(defaults.CUBELET_ADDR, "the cubelet's gRPC address", env="CUBE_CUBELET_LISTEN")
    vs_socket: str = setting("", "CubeVS's unix socket (default: <state_dir>/run/vs.sock)")
    proxy_http_port: int = setting(defaults.PROXY_HTTP_PORT, "the proxy's plain HTTP port")
    domain: str = shared.domain()
    # One port per service (loopback): a node's services never share one, and Prometheus on this
    # machine scrapes each (README, "Metrics").
    api_metrics_port: int = setting(defaults.API_METRICS_PORT, "cube-api's /metrics port")
    master_metrics_port: int = setting(defaults.MASTER_METRICS_PORT, "cube-master's /metrics port")
    cubelet_metrics_port: int = setting(defaults.CUBELET_METRICS_PORT, "the cubelet's /metrics port")
    vs_metrics_port: int = setting(defaults.VS_METRICS_PORT, "CubeVS's /metrics port")
    proxy_metrics_port: int = setting(defaults.PROXY_METRICS_PORT, "the proxy's /metrics port (with Envoy's stats)")

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def pidfile(self) -> Path:
        return self.run / "supervisor.pid"

    @property
    def vs_socket_path(self) -> str:
        """CubeVS's socket: in this node's state dir, so two nodes on one machine (the operator's
        and `make test`'s, say) never bind the same path."""
        return self.vs_socket or str(self.run / "vs.sock")

    @property
    def machine_wide(self) -> dict[str, str]:
        """The names this node takes in what the machine shares whatever the network namespace
        (bpffs, where CubeVS pins its maps; the cgroup tree, where each VM gets a cgroup): the
        services' defaults for the default state dir, names of its own for any other, so the
        operator's node and `make test`'s never meet there. An operator's own setting wins."""
        if self.state_dir.resolve() == Path(defaults.STATE_DIR).resolve():
            names = {"CUBE_VS_PIN_SUBDIR": "cube/vs", "CUBE_VMM_CGROUP_PARENT": "cube-vms"}
        else:
            scope = f"node-{hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]}"
            names = {"CUBE_VS_PIN_SUBDIR": f"cube/{scope}/vs", "CUBE_VMM_CGROUP_PARENT": f"cube-vms-{scope}"}
        return {k: os.environ.get(k) or v for k, v in names.items()}

    @property
    def etcd_endpoint(self) -> str:
        return f"{defaults.LOOPBACK}:{self.etcd_client_port}"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    def tls(self, role: Role) -> TlsFiles:
        """The TLS directory of this node's component ``role`` (deploy/pki.py makes them)."""
        return TlsFiles(node_dirs(self.pki)[role])

    def metrics_listen(self) -> dict[str, str]:
        """Each service's ``metrics_listen`` variable on this node (all on loopback)."""
        ports = {"API": self.api_metrics_port, "MASTER": self.master_metrics_port,
                 "CUBELET": self.cubelet_metrics_port, "VS": self.vs_metrics_port, "PROXY": self.proxy_metrics_port}
        return {f"CUBE_{svc}_METRICS_LISTEN": f"{defaults.LOOPBACK}:{port}" for svc, port in ports.items()}

    @property
    def api_upstream(self) -> str:
        """Where this node's proxy reaches cube-api: its address, loopback for a wildcard one."""
        host = {"": defaults.LOOPBACK, "0.0.0.0": defaults.LOOPBACK, "::": "::1"}.get(self.api_host, self.api_host)
        return f"[{host}]:{self.api_port}" if ":" in host else f"{host}:{self.api_port}"

    def operator_tls(self) -> TlsFiles | None:
        """What a tool acting as this node's operator presents: the operator certificate the
        supervisor issued, or None (plaintext) for a node with no PKI (services run by hand, as
        control tests do)."""
        tls = self.tls(Role.OPERATOR)
        return tls if tls.key.exists() else None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CUBE_STATE_DIR": str(self.state_dir),
            "CUBE_ETCD_ENDPOINTS": self.etcd_endpoint,
            "CUBE_MASTER_ADDR": self.master_addr,
            "CUBE_DOMAIN": self.domain,
            "CUBE_NODE_ID": socket.gethostname(),
            "CUBE_VS_LISTEN": f"unix://{self.vs_socket_path}",
            **self.machine_wide,
            "CUBE_CUBELET_LISTEN": self.cubelet_addr,
            "CUBE_CUBELET_VS_ADDRESS": f"unix://{self.vs_socket_path}",
            "CUBE_CUBELET_PROXY_ADDRESS": f"127.0.0.1:{self.proxy_http_port}",
            "CUBE_API_PORT": str(self.api_port),
            # The proxy sends api.<domain>/volumecontent/... (E2B's volume content calls) to the API.
            "CUBE_PROXY_API_UPSTREAM": self.api_upstream,
            # Where the cubelet fetches a build's COPY archives when it does not share the API's disk.
            "CUBE_CUBELET_API_URL": f"http://{self.api_upstream}",
            **self.metrics_listen(),
            # Each service reads only its own; each presents its own certificate.
            **{f"CUBE_{svc}_MTLS_DIR": str(self.tls(role).dir) for svc, role in _SERVICE_ROLES.items()},
            "CUBE_PROXY_ENVOY_MTLS_DIR": str(self.tls(Role.ENVOY).dir),
        }


_SERVICE_ROLES = {"API": Role.API, "MASTER": Role.MASTER, "CUBELET": Role.CUBELET, "VS": Role.VS,
                  "PROXY": Role.PROXY}


@dataclass
class Program:
    name: str
    argv: list[str]
    ready: Callable[[], bool]  # True once the program serves
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.5
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] | None = None  # the whole environment (a cluster's programs); None: the node's


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_open(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def etcd_healthy(endpoint: str, tls: TlsFiles) -> bool:
    """etcd's /health over TLS, presenting ``tls`` and checking etcd's certificate by its role's
    name (it names no address)."""
    host, port = split_host_port(endpoint)
    try:
        ctx = client_ssl_context(tls)
        with socket.create_connection((host, port), timeout=1) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name(Role.ETCD)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        return b'"health":"true"' in reply
    except (OSError, TlsError):
        return False


def programs(cfg: NodeConfig) -> list[Program]:
    host, port = split_host_port(cfg.master_addr)
    chost, cport = split_host_port(cfg.cubelet_addr)
    etcd_tls = cfg.tls(Role.ETCD)
    return [
        Program("etcd", ["etcd", "--name", "cube", "--data-dir", str(cfg.state_dir / "etcd"),
                         "--listen-client-urls", f"https://{cfg.etcd_endpoint}",
                         "--advertise-client-urls", f"https://{cfg.etcd_endpoint}",
                         "--client-cert-auth", "--trusted-ca-file", str(etcd_tls.ca),
                         "--cert-file", str(etcd_tls.cert), "--key-file", str(etcd_tls.key),
                         "--listen-peer-urls", f"http://127.0.0.1:{cfg.etcd_peer_port}",
                         "--initial-advertise-peer-urls", f"http://127.0.0.1:{cfg.etcd_peer_port}",
                         "--initial-cluster", f"cube=http://127.0.0.1:{cfg.etcd_peer_port}"],
                lambda: etcd_healthy(cfg.etcd_endpoint, cfg.tls(Role.OPERATOR))),
        Program("vs", [PY, "-m", "services.vs"], lambda: unix_open(cfg.vs_socket_path)),
        Program("cubelet", [PY, "-m", "services.cubelet"], lambda: tcp_open(chost, cport)),
        Program("master", [PY, "-m", "services.master"], lambda: tcp_open(host, port)),
        Program("proxy", [PY, "-m", "services.proxy"], lambda: tcp_open("127.0.0.1", cfg.proxy_http_port)),
        Program("api", [PY, "-m", "services.api"], lambda: tcp_open("127.0.0.1", cfg.api_port)),
    ]


class Supervisor:
    """Starts ``progs`` (default: this node's) in order, restarts what exits, stops them in reverse."""

    def __init__(self, cfg: NodeConfig, progs: list[Program] | None = None, logs: Path | None = None) -> None:
        self.cfg = cfg
        self.programs = programs(cfg) if progs is None else progs
        self.logs = logs or cfg.logs
        self.stopping = False

    def _start(self, p: Program) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{p.name}.log", "ab")
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting {p.name} ---\n".encode())
        log.flush()
        env = p.env if p.env is not None else {**self.cfg.env(), **p.extra_env}
        p.proc = subprocess.Popen(p.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        log.close()
        p.started_at = time.monotonic()
        return p.proc

    def say(self, msg: str) -> None:
        line = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "service": "supervisor",
                           "msg": msg})
        with open(self.logs / "supervisor.log", "a") as f:
            f.write(line + "\n")
        print(msg, flush=True)

    def start_all(self, timeout: float = 300.0) -> None:
        for p in self.programs:
            proc = self._start(p)
            deadline = time.monotonic() + timeout
            while not p.ready():
                if proc.poll() is not None:
                    raise SystemExit(f"{p.name} exited with {proc.returncode} while starting; "
                                     f"see {self.logs / (p.name + '.log')}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"{p.name} not ready after {timeout}s; see {self.logs / (p.name + '.log')}")
                time.sleep(0.1)
            self.say(f"{p.name} ready (pid {proc.pid})")

    def watch(self) -> None:
        while not self.stopping:
            for p in self.programs:
                if p.proc is not None and p.proc.poll() is not None and not self.stopping:
                    code = p.proc.returncode
                    # A program that ran for a while restarts at once; a crash loop backs off.
                    p.backoff = 0.5 if time.monotonic() - p.started_at > 30 else min(p.backoff * 2, 30)
                    self.say(f"{p.name} exited with {code}; restarting in {p.backoff:.1f}s")
                    time.sleep(p.backoff)
                    p.restarts += 1
                    self._start(p)
            time.sleep(0.2)

    def serve(self, ready: Path, cleanup: Callable[[], None]) -> None:
        """Start every program, then mark ``ready`` and keep them running until SIGTERM or SIGINT;
        then stop them all and run ``cleanup``, whatever happened."""
        def on_signal(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start_all()
            ready.write_text(str(time.time()))
            self.watch()
        finally:
            ready.unlink(missing_ok=True)
            self.stop_all()
            cleanup()

    def stop_all(self) -> None:
        self.stopping = True
        for p in reversed(self.programs):
            if p.proc is not None and stop_process(p.proc, 20) is not Stopped.ALREADY:
                self.say(f"{p.name} stopped")


def run(cfg: NodeConfig) -> None:
    cfg.logs.mkdir(parents=True, exist_ok=True)
    cfg.run.mkdir(parents=True, exist_ok=True)
    Path(cfg.vs_socket_path).parent.mkdir(parents=True, exist_ok=True)
    if cfg.pidfile.exists():
        try:
            os.kill(int(cfg.pidfile.read_text()), 0)
            raise SystemExit(f"a supervisor is already running (pid {cfg.pidfile.read_text().strip()})")
        except (ProcessLookupError, ValueError):
            cfg.pidfile.unlink()
    cfg.pidfile.write_text(str(os.getpid()))
    Pki(cfg.pki).node(socket.gethostname())  # idempotent: keeps what is still good
    sup = Supervisor(cfg)
    try:
        sup.serve(cfg.run / "ready", lambda: cleanup_node(cfg, sup))
    finally:
        cfg.pidfile.unlink(missing_ok=True)


def cleanup_node(cfg: NodeConfig, sup: Supervisor) -> None:
    """Nothing of Cube stays running: remove sandboxes' VMs and CubeVS's datapath."""
    env = cfg.env()
    subprocess.run([PY, "-m", "deploy.cleanup"], cwd=REPO, env=env)
    sup.say("node cleaned up")


def stop(cfg: NodeConfig, timeout: float = 120.0) -> None:
    try:
        pid = int(cfg.pidfile.read_text())
    except (OSError, ValueError):
        print("no supervisor running")
        return
    outcome = stop_pid(pid, timeout)
    if outcome is Stopped.ALREADY:
        cfg.pidfile.unlink(missing_ok=True)
        print("no supervisor running")
    elif outcome is Stopped.EXITED:
        print("stopped")
    else:
        print("supervisor killed after timeout")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m deploy.supervisor")
    ap.add_argument("command", choices=["run", "stop"])
    args = ap.parse_args()
    cfg = NodeConfig.from_env()
    if args.command == "run":
        run(cfg)
    else:
        stop(cfg)


if __name__ == "__main__":
    main()
