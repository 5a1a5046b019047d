"""Cubelet settings: one typed object from the environment (CUBE_CUBELET_*, CUBE_*) or the CLI."""
from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class CubeletSettings:
    node_id: str = socket.gethostname()
    # gRPC listen address; `advertise` is what the master dials (defaults to `listen`).
    listen: str = "127.0.0.1:50052"
    advertise: str = ""
    etcd_endpoints: str = "127.0.0.1:2379"
    etcd_prefix: str = "/cube"
    vs_address: str = "unix:///run/cube/vs.sock"
    # This node's proxy (plain HTTP), published in NodeStatus for proxies on other nodes.
    proxy_address: str = "127.0.0.1:3002"
    state_dir: Path = Path("/var/lib/cube")
    # Pre-restored clones kept ready per template: each costs an idle VM, and saves its restore
    # and the emulator's warm-up from the create path.
    warm_pool_size: int = 2
    max_sandboxes: int = 64
    metrics_interval_s: float = 5.0
    metrics_history: int = 120
    node_lease_ttl_s: int = 10
    # How long a sandbox may take to come up before the create fails.
    create_timeout_s: float = 60.0
    max_concurrent_builds: int = 2
    # How long a template's own service may take to answer its probe before the build fails.
    probe_timeout_s: float = 180.0

    @property
    def cubelet_dir(self) -> Path:
        return self.state_dir / "cubelet"

    @property
    def templates_dir(self) -> Path:
        return self.cubelet_dir / "templates"

    @property
    def sandboxes_dir(self) -> Path:
        return self.cubelet_dir / "sandboxes"

    @property
    def paused_dir(self) -> Path:
        return self.cubelet_dir / "paused"

    @property
    def advertise_address(self) -> str:
        return self.advertise or self.listen

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, argv: list[str] | None = None) -> "CubeletSettings":
        env = dict(os.environ if env is None else env)
        s = cls()
        for f in fields(cls):
            key = f"CUBE_CUBELET_{f.name.upper()}"
            if key in env:
                s = replace(s, **{f.name: _coerce(f.type, env[key])})
        if "CUBE_STATE_DIR" in env:
            s = replace(s, state_dir=Path(env["CUBE_STATE_DIR"]))
        if "CUBE_NODE_ID" in env and "CUBE_CUBELET_NODE_ID" not in env:
            s = replace(s, node_id=env["CUBE_NODE_ID"])
        if "CUBE_ETCD_PREFIX" in env:
            s = replace(s, etcd_prefix=env["CUBE_ETCD_PREFIX"])
        if "CUBE_ETCD_ENDPOINTS" in env:
            s = replace(s, etcd_endpoints=env["CUBE_ETCD_ENDPOINTS"])
        if argv:
            p = argparse.ArgumentParser(prog="cube-cubelet")
            for f in fields(cls):
                p.add_argument(f"--{f.name.replace('_', '-')}", default=None)
            ns = p.parse_args(argv)
            for f in fields(cls):
                v = getattr(ns, f.name)
                if v is not None:
                    s = replace(s, **{f.name: _coerce(f.type, v)})
        return s


def _coerce(kind: object, value: str) -> object:
    kind = str(kind)
    if "Path" in kind:
        return Path(value)
    if "int" in kind:
        return int(value)
    if "float" in kind:
        return float(value)
    return value
