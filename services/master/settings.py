"""cube-master settings: one typed object, read from the environment or the CLI.

Every field has an environment variable ``CUBE_MASTER_<FIELD>``; the ones every Cube service
shares also have a short alias (``CUBE_ETCD_ENDPOINTS``, ``CUBE_ETCD_PREFIX``, ...).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields, replace

from services.envd.version import ENVD_VERSION


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    # gRPC listen address of this master.
    listen: str = "0.0.0.0:7070"
    # The address other components reach this master at (reported in /cube/leader).
    advertise: str = ""
    # etcd client endpoints, host:port, comma-separated; tried in order.
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    # Root of all cluster state in etcd (tests use their own prefix).
    etcd_prefix: str = "/cube"
    # Per-call etcd deadline: with etcd down, calls fail within this and the API answers 503.
    etcd_timeout_s: float = 3.0
    # Unique name of this master (election candidate id).
    master_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Leader lease TTL: a dead leader is replaced after at most this long.
    leader_ttl_s: int = 10
    # Template the SDK defaults (`base`, `code-interpreter-v1`) resolve to.
    default_template: str = "code-interpreter"
    default_aliases: tuple[str, ...] = ("base", "code-interpreter-v1")
    # Sandbox lifetime: default when the client gives none, and the largest accepted.
    default_timeout_s: int = 300
    max_timeout_s: int = 86400
    # Limits on client input.
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 8192
    max_env_bytes: int = 65536
    # How long a create, pause or resume may take on the node before it is given up; the
    # reconciler leaves transitional records alone until this (plus grace) has passed.
    node_op_timeout_s: float = 120.0
    node_rpc_timeout_s: float = 10.0
    reconcile_grace_s: float = 5.0
    # Leader loops.
    timeout_tick_s: float = 1.0
    reconcile_interval_s: float = 15.0
    # A VM a node runs but etcd does not know is killed once it is older than this.
    orphan_grace_s: float = 60.0
    # How long a create waits for the proxies to apply its route before giving up (undo, 503).
    route_ack_timeout_s: float = 10.0
    # Template builds. The whole build's deadline on the node; how often the master running a
    # build refreshes its job's heartbeat, and at most how often it writes progress; when the
    # leader fails a job whose heartbeat stopped (its master died); how many events a job keeps;
    # how long finished jobs are kept.
    build_timeout_s: float = 3600.0
    build_heartbeat_s: float = 5.0
    build_progress_write_s: float = 0.25
    build_stale_s: float = 20.0
    build_events_kept: int = 200
    build_retention_s: float = 7 * 86400.0
    # envd version reported for templates that do not say theirs.
    envd_version: str = ENVD_VERSION
    log_level: str = "INFO"

    _ENV_ALIASES = {
        "etcd_endpoints": ("CUBE_ETCD_ENDPOINTS",),
        "etcd_prefix": ("CUBE_ETCD_PREFIX",),
        "listen": ("CUBE_MASTER_ADDR",),
        "default_template": ("CUBE_DEFAULT_TEMPLATE",),
    }

    @property
    def prefix(self) -> str:
        return "/" + self.etcd_prefix.strip("/")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    def validate(self) -> "Settings":
        if not self.etcd_endpoints:
            raise ValueError("etcd_endpoints is empty")
        for ep in self.etcd_endpoints:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bad etcd endpoint {ep!r} (want host:port)")
        if not (0 < self.default_timeout_s <= self.max_timeout_s):
            raise ValueError("need 0 < default_timeout_s <= max_timeout_s")
        if self.leader_ttl_s < 2:
            raise ValueError("leader_ttl_s must be >= 2")
        if self.build_stale_s <= self.build_heartbeat_s:
            raise ValueError("need build_stale_s > build_heartbeat_s")
        if self.build_events_kept < 10:
            raise ValueError("build_events_kept must be >= 10")
        return self

    @classmethod
    def from_env(cls, env=None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        kw: dict = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            names = (f"CUBE_MASTER_{f.name.upper()}", *cls._ENV_ALIASES.get(f.name, ()))
            raw = next((env[n] for n in names if n in env), None)
            if raw is not None:
                kw[f.name] = _convert(f.type, raw)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def with_overrides(self, **kw) -> "Settings":
        return replace(self, **kw).validate()


def _convert(type_name, raw: str):
    t = str(type_name)
    if "tuple" in t:
        return _csv(raw)
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    if t == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags mirror the env variables: --leader-ttl-s == CUBE_MASTER_LEADER_TTL_S."""
    for f in fields(Settings):
        if not f.name.startswith("_"):
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                                help=f"(env CUBE_MASTER_{f.name.upper()})")


def from_args(ns: argparse.Namespace) -> Settings:
    overrides = {f.name: _convert(f.type, getattr(ns, f.name)) for f in fields(Settings)
                 if not f.name.startswith("_") and getattr(ns, f.name, None) is not None}
    return Settings.from_env(**overrides)
