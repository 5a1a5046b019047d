"""The agent's one typed settings object, read from the command line and CUBE_ENVD_* variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    root: str = "/"
    hosts: tuple[str, ...] = ("0.0.0.0", "::")
    envd_port: int = 49983
    interpreter_port: int = 49999
    interpreter: bool = True
    kernel_python: str = "python3"
    default_user: str = "user"
    default_contexts: bool = True
    tmpfs_tmp: bool = False
    runtime_dir: str = "/run/cube-envd"
    log_level: str = "INFO"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CUBE_ENVD_{name}", default)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(f"CUBE_ENVD_{name}")
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def parse_settings(argv: list[str] | None = None) -> Settings:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="cube-envd",
        description="Cube guest agent: envd (Connect process/filesystem services, /files) and "
        "the code interpreter (Jupyter kernels) inside one sandbox root filesystem.",
    )
    p.add_argument("--root", default=_env("ROOT", d.root),
                   help="template root filesystem to enter (chroot) after binding; '/' stays put")
    p.add_argument("--host", default=_env("HOST", ",".join(d.hosts)),
                   help="comma-separated listen addresses (default: all IPv4 and IPv6)")
    p.add_argument("--envd-port", type=int, default=int(_env("PORT", str(d.envd_port))))
    p.add_argument("--interpreter-port", type=int,
                   default=int(_env("INTERPRETER_PORT", str(d.interpreter_port))))
    p.add_argument("--no-interpreter", action="store_true",
                   default=not _env_bool("INTERPRETER", True),
                   help="do not serve the code-interpreter port")
    p.add_argument("--kernel-python", default=_env("KERNEL_PYTHON", d.kernel_python),
                   help="python (inside the root) that has ipykernel; bare names use the root's PATH")
    p.add_argument("--default-user", default=_env("DEFAULT_USER", d.default_user))
    p.add_argument("--no-default-contexts", action="store_true",
                   default=not _env_bool("DEFAULT_CONTEXTS", True),
                   help="do not start the python and javascript kernels at startup")
    p.add_argument("--tmpfs-tmp", action="store_true", default=_env_bool("TMPFS_TMP", False),
                   help="mount a fresh tmpfs on the root's /tmp")
    p.add_argument("--runtime-dir", default=_env("RUNTIME_DIR", d.runtime_dir),
                   help="directory inside the root for kernel sockets and helper files")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    a = p.parse_args(argv)
    hosts = tuple(h.strip() for h in a.host.split(",") if h.strip())
    if not hosts:
        p.error("--host needs at least one address")
    return Settings(
        root=os.path.abspath(a.root),
        hosts=hosts,
        envd_port=a.envd_port,
        interpreter_port=a.interpreter_port,
        interpreter=not a.no_interpreter,
        kernel_python=a.kernel_python,
        default_user=a.default_user,
        default_contexts=not a.no_default_contexts,
        tmpfs_tmp=a.tmpfs_tmp,
        runtime_dir=a.runtime_dir,
        log_level=a.log_level.upper(),
    )
