"""What the guest init is told at boot: network identity and the services to run.

Written by the host into the writable layer (`/cube/guest.json`) when the layer is made; the
guest init reads it once at boot, so every clone of a snapshot inherits it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum


class ServiceRoot(str, Enum):
    BASE = "base"  # runs from the guest base image (the agent)
    TEMPLATE = "template"  # chrooted into the sandbox root (the template's own command)


@dataclass(frozen=True)
class GuestNetwork:
    """The network identity baked into a snapshot; identical in every clone of it."""

    ip: str = "169.254.0.21"
    prefix: int = 30
    gateway: str = "169.254.0.22"
    mac: str = "02:fc:00:00:00:15"
    dns: tuple[str, ...] = ("8.8.8.8",)


@dataclass(frozen=True)
class GuestService:
    name: str
    argv: tuple[str, ...]
    root: ServiceRoot = ServiceRoot.TEMPLATE
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    restart: bool = True


@dataclass(frozen=True)
class GuestConfig:
    hostname: str = "cube"
    network: GuestNetwork = field(default_factory=GuestNetwork)
    services: tuple[GuestService, ...] = ()

    def to_json(self) -> str:
        d = asdict(self)
        for s in d["services"]:
            s["root"] = s["root"].value if isinstance(s["root"], ServiceRoot) else s["root"]
            s["argv"] = list(s["argv"])
        d["network"]["dns"] = list(d["network"]["dns"])
        return json.dumps(d, indent=1, sort_keys=True)
