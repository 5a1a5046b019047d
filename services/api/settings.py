"""cube-api settings: one typed object from the environment (``CUBE_API_*`` plus the shared
``CUBE_MASTER_ADDR``, ``CUBE_DOMAIN``, ``CUBE_AUTH``) or the CLI."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3000
    # The master's gRPC address.
    master_addr: str = "127.0.0.1:7070"
    # Wildcard domain of the sandbox proxy, returned as `domain` so the SDK reaches
    # https://<port>-<sandboxID>.<domain> (never one of E2B's own domains).
    domain: str = "cube.localhost"
    # Off: any non-empty X-API-KEY is accepted (local use). On: only keys issued by
    # `cubemastercli apikey create`.
    auth: bool = False
    # Deadlines for calls to the master: creates and resumes wait for a VM.
    create_timeout_s: float = 150.0
    call_timeout_s: float = 30.0
    max_body_bytes: int = 1 << 20
    log_level: str = "INFO"

    _ENV_ALIASES = {
        "master_addr": ("CUBE_MASTER_ADDR",),
        "domain": ("CUBE_DOMAIN",),
        "auth": ("CUBE_AUTH",),
    }

    def validate(self) -> "Settings":
        if not self.domain or self.domain.strip(".") != self.domain:
            raise ValueError(f"bad domain {self.domain!r}")
        if any(self.domain == d or self.domain.endswith("." + d) for d in E2B_DOMAINS):
            raise ValueError(f"domain {self.domain!r} is one of E2B's own: the SDK would send traffic there")
        return self

    @classmethod
    def from_env(cls, env=None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        kw: dict = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            names = (f"CUBE_API_{f.name.upper()}", *cls._ENV_ALIASES.get(f.name, ()))
            raw = next((env[n] for n in names if n in env), None)
            if raw is not None:
                kw[f.name] = _convert(f.type, raw)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def with_overrides(self, **kw) -> "Settings":
        return replace(self, **kw).validate()


E2B_DOMAINS = {"e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev", "e2b-tango.dev", "e2b-juliett.dev"}


def _convert(type_name, raw: str):
    t = str(type_name)
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    if t == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        if not f.name.startswith("_"):
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                                help=f"(env CUBE_API_{f.name.upper()})")


def from_args(ns: argparse.Namespace) -> Settings:
    overrides = {f.name: _convert(f.type, getattr(ns, f.name)) for f in fields(Settings)
                 if not f.name.startswith("_") and getattr(ns, f.name, None) is not None}
    return Settings.from_env(**overrides)
