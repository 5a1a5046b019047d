"""Processes for control-plane tests: real cube-master(s) and cube-api as subprocesses against a
real etcd, and fake cubelets (the TEST DOUBLE in fake_cubelet.py) in this process.

With ``pki`` (a root ``deploy.pki.Pki(root).node(...)`` made), masters and the API run with
mutual TLS from it, and the harness reaches the masters as an operator and etcd with the operator's
certificate: etcd must then be one that requires them (``EtcdServer(pki=root)``).

Every process gets its own etcd prefix, log file and ports (its /metrics port too: ``Proc.metrics_url``,
never a node's default); ``stop()`` ends exactly the processes this harness started (by their pid) and
removes the prefix.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from cube_common.mtls import Role, TlsFiles, sync_channel
from cube_common.procs import stop_process
from deploy.pki import node_dirs
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc
from testkit.ports import free_port
from tests.control.etcd_http import EtcdHttp
from tests.control.fake_cubelet import FakeCubelet

REPO = Path(__file__).resolve().parents[2]

# Fast leader duties so tests see timeouts and reconciliation within a second or two.
FAST_MASTER = {
    "CUBE_MASTER_LEADER_TTL_S": "2",
    "CUBE_MASTER_TIMEOUT_TICK_S": "0.2",
    "CUBE_MASTER_RECONCILE_INTERVAL_S": "0.5",
    "CUBE_MASTER_RECONCILE_GRACE_S": "0.5",
    "CUBE_MASTER_ORPHAN_GRACE_S": "2",
    "CUBE_MASTER_ETCD_TIMEOUT_S": "1.5",
    "CUBE_MASTER_NODE_OP_TIMEOUT_S": "20",
}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        stop_process(self.popen, 10, reap_timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    etcd_endpoint: str
    prefix: str = field(default_factory=lambda: f"/test-{uuid.uuid4().hex[:8]}")
    master_env: dict = field(default_factory=dict)
    api_env: dict = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    cubelets: list[FakeCubelet] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cube-ctl-")))
    pki: Path | None = None

    def __post_init__(self):
        self.etcd = EtcdHttp(self.etcd_endpoint, tls=self.tls(Role.OPERATOR))
        self.masters: list[Proc] = []
        self.api: Proc | None = None

    def tls(self, role: Role) -> TlsFiles | None:
        return TlsFiles(node_dirs(self.pki)[role]) if self.pki else None

    def _mtls_env(self, service: str, role: Role) -> dict[str, str]:
        tls = self.tls(role)
        return {f"CUBE_{service}_MTLS_DIR": str(tls.dir)} if tls else {}

    # ---- processes ----

    def _spawn(self, name: str, module: str, env: dict, port: int) -> Proc:
        log = self.workdir / f"{name}.log"
        service = module.rsplit(".", 1)[1].upper()  # services.master -> CUBE_MASTER_METRICS_LISTEN
        metrics_port = free_port()
        full = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                f"CUBE_{service}_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", **env}
        with open(log, "ab") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=full,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        p = Proc(name, popen, log, port, metrics_port)
        self.procs.append(p)
        return p

    def start_master(self, name: str | None = None, wait_leader: bool = True, port: int | None = None, **env) -> Proc:
        name = name or f"master{len(self.masters)}"
        port = port or free_port()
        e = {**FAST_MASTER, "CUBE_MASTER_LISTEN": f"127.0.0.1:{port}", "CUBE_ETCD_ENDPOINTS": self.etcd_endpoint,
             "CUBE_ETCD_PREFIX": self.prefix, "CUBE_MASTER_MASTER_ID": name, **self._mtls_env("MASTER", Role.MASTER),
             **self.master_env, **env}
        p = self._spawn(name, "services.master", e, port)
        self.masters.append(p)
        self._wait(lambda: self._grpc_ready(p), f"{name} serving", p)
        if wait_leader:
            self._wait(lambda: self.leader() is not None, "a leader", p)
        return p

    def start_api(self, **env) -> Proc:
        port = free_port()
        master = self.masters[0].address if self.masters else "127.0.0.1:1"
        e = {"CUBE_API_HOST": "127.0.0.1", "CUBE_API_PORT": str(port), "CUBE_MASTER_ADDR": master,
             "CUBE_DOMAIN": "cube.localhost", "CUBE_BUILD_FILES_DIR": str(self.workdir / "build-files"),
             **self._mtls_env("API", Role.API), **self.api_env, **env}
        p = self._spawn("api", "services.api", e, port)
        self.api = p
        self._wait(lambda: self._http_ready(p), "api serving", p)
        return p

    def add_cubelet(self, node_id: str = "node-a", **kw) -> FakeCubelet:
        c = FakeCubelet(node_id=node_id, **kw).start()
        c.register(self.etcd, self.prefix)
        self.cubelets.append(c)
        return c

    @property
    def api_url(self) -> str:
        assert self.api is not None, "the api is not started"
        return f"http://{self.api.address}"

    def _wait(self, cond, what: str, proc: Proc, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.output()[-3000:]}")
            try:
                if cond():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}:\n{proc.output()[-3000:]}")

    def _grpc_ready(self, p: Proc) -> bool:
        with sync_channel(p.address, self.tls(Role.OPERATOR), Role.MASTER) as ch:
            grpc.channel_ready_future(ch).result(timeout=1)
        return True

    @staticmethod
    def _http_ready(p: Proc) -> bool:
        return httpx.get(f"http://{p.address}/health", timeout=1).status_code == 200

    # ---- state ----

    def leader(self) -> dict | None:
        return self.etcd.get_json(f"{self.prefix}/leader")

    def keys(self, sub: str = "") -> list[str]:
        return self.etcd.keys(f"{self.prefix}/{sub}")

    def sandbox_ids(self) -> set[str]:
        return {k.rsplit("/", 1)[1] for k in self.keys("sandboxes/")}

    def route_ids(self) -> set[str]:
        return {k.rsplit("/", 1)[1] for k in self.keys("routes/")}

    def record(self, sid: str) -> dict | None:
        return self.etcd.get_json(f"{self.prefix}/sandboxes/{sid}")

    def master_stub(self, proc: Proc | None = None) -> tuple[grpc.Channel, master_pb2_grpc.MasterStub]:
        ch = sync_channel((proc or self.masters[0]).address, self.tls(Role.OPERATOR), Role.MASTER)
        return ch, master_pb2_grpc.MasterStub(ch)

    def wipe_sandboxes(self) -> None:
        """Forget every sandbox (between tests sharing a cluster)."""
        self.etcd.delete_prefix(f"{self.prefix}/sandboxes/")
        self.etcd.delete_prefix(f"{self.prefix}/routes/")
        for c in self.cubelets:
            with c._lock:
                c.sandboxes.clear()
            c.calls.clear()
            c.run_delay_s = 0
            c.fail_run = c.fail_all = None

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for c in self.cubelets:
            c.stop()
        try:
            self.etcd.delete_prefix(self.prefix + "/")
        except Exception:
            pass
        self.etcd.close()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the processes' logs; failures quote them first


def rpc(c: Cluster, method: str, request, metadata=()):
    """One call to the cluster's first master (operator certificate when the cluster has TLS)."""
    ch, stub = c.master_stub()
    with ch:
        return getattr(stub, method)(request, metadata=metadata, timeout=30)


def code_of(call) -> grpc.StatusCode:
    """The status code ``call()`` ends with (OK when it returns)."""
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@contextmanager
def one_node_cluster(etcd_endpoint: str, **api_env: str) -> Iterator[Cluster]:
    """One master, one API (started with ``api_env``), one fake node ``node-a``; stopped on exit."""
    c = Cluster(etcd_endpoint)
    try:
        c.add_cubelet("node-a")
        c.start_master()
        c.start_api(**api_env)
        yield c
    finally:
        c.stop()


def wait_until(cond, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


__all__ = ["Cluster", "Proc", "master_pb2", "one_node_cluster", "wait_until"]
