"""The image configuration the guest needs to run the image's own process."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import InvalidImage, WrongArchitecture
from .manifest import TARGET_ARCH, TARGET_OS, check_digest


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # a few old builders wrote a bare string
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidImage(f"image config: {what} is not a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI/Docker image config a sandbox honours.

    `env` keeps the image's order ("KEY=VALUE"); `exposed_ports` are "PORT/PROTO" strings.
    `digest` names the config blob, `manifest_digest` the manifest it came from."""

    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    os: str = ""
    architecture: str = ""
    variant: str = ""
    diff_ids: tuple[str, ...] = ()
    digest: str = ""
    manifest_digest: str = ""

    @classmethod
    def from_json(cls, body: bytes, *, digest: str = "", manifest_digest: str = "",
                  what: str = "image") -> ImageConfig:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidImage(f"{what}: config is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidImage(f"{what}: config is not a JSON object")
        c = doc.get("config") or {}
        if not isinstance(c, dict):
            raise InvalidImage(f"{what}: config.config is not an object")
        rootfs = doc.get("rootfs") or {}
        diff_ids = tuple(check_digest(d) for d in _strings(rootfs.get("diff_ids"), "diff_ids"))
        labels = c.get("Labels") or {}
        ports = c.get("ExposedPorts") or {}
        return cls(
            env=_strings(c.get("Env"), "Env"),
            user=str(c.get("User") or ""),
            working_dir=str(c.get("WorkingDir") or ""),
            entrypoint=_strings(c.get("Entrypoint"), "Entrypoint"),
            cmd=_strings(c.get("Cmd"), "Cmd"),
            exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            stop_signal=str(c.get("StopSignal") or ""),
            os=str(doc.get("os") or ""),
            architecture=str(doc.get("architecture") or ""),
            variant=str(doc.get("variant") or ""),
            diff_ids=diff_ids,
            digest=digest,
            manifest_digest=manifest_digest,
        )

    def check_platform(self, what: str) -> None:
        """Refuse a config that names another platform (an empty field is taken as ours)."""
        if (self.os and self.os != TARGET_OS) or (self.architecture and self.architecture != TARGET_ARCH):
            have = "/".join(p for p in (self.os, self.architecture, self.variant) if p)
            raise WrongArchitecture(what, [have])

    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def argv(self, entrypoint: list[str] | None = None, cmd: list[str] | None = None) -> list[str]:
        """The process to run, with Docker's override rules: a new entrypoint drops the image's
        cmd unless a cmd is given too; a new cmd replaces only the image's cmd."""
        ep = list(self.entrypoint) if entrypoint is None else list(entrypoint)
        if cmd is not None:
            args = list(cmd)
        elif entrypoint is not None:
            args = []
        else:
            args = list(self.cmd)
        return ep + args

    def tcp_ports(self) -> list[int]:
        ports = []
        for spec in self.exposed_ports:
            port, _, proto = spec.partition("/")
            if (proto or "tcp") == "tcp" and port.isdigit():
                ports.append(int(port))
        return sorted(ports)
