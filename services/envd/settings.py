"""The agent's one typed settings object, from the shared loader: flags, then ``CUBE_ENVD_*``
variables, then defaults (``cube-envd --help`` lists them all)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from cube_common.envd import ENVD_PORT, INTERPRETER_PORT
from cube_common.settings import Settings as _Base, SettingsError, setting


@dataclass(frozen=True)
class Settings(_Base):
    ENV_PREFIX: ClassVar[str] = "CUBE_ENVD_"
    PROG: ClassVar[str] = "cube-envd"
    DESCRIPTION: ClassVar[str] = ("Cube guest agent: envd (Connect process/filesystem services, /files) and "
                                  "the code interpreter (Jupyter kernels) inside one sandbox root filesystem.")

    root: str = setting("/", "template root filesystem to enter (chroot) after binding; '/' stays put")
    hosts: tuple[str, ...] = setting(("0.0.0.0", "::"), "comma-separated listen addresses "
                                     "(default: all IPv4 and IPv6)", flag="--host", env="CUBE_ENVD_HOST")
    envd_port: int = setting(ENVD_PORT, "envd's port", env="CUBE_ENVD_PORT")
    interpreter_port: int = setting(INTERPRETER_PORT, "the code interpreter's port")
    interpreter: bool = setting(True, "serve the code-interpreter port (--no-interpreter: do not)")
    kernel_python: str = setting("python3", "python (inside the root) that has ipykernel; bare names use "
                                 "the root's PATH")
    deno: str = setting("deno", "Deno (inside the root), the javascript and typescript kernel; bare names use "
                        "the root's PATH")
    r_binary: str = setting("R", "R (inside the root) with IRkernel, the r kernel", flag="--r", env="CUBE_ENVD_R")
    java: str = setting("java", "java (inside the root), the java kernel's JVM (a JDK: JShell compiles cells)")
    java_kernel_jar: str = setting("/usr/local/share/jupyter/kernels/java/jjava.jar",
                                   "the JJava kernel's jar inside the root")
    default_user: str = setting("user", "user that commands run as unless the call names one")
    default_contexts: bool = setting(True, "start the python and javascript kernels at startup "
                                     "(--no-default-contexts: do not)")
    tmpfs_tmp: bool = setting(False, "mount a fresh tmpfs on the root's /tmp")
    runtime_dir: str = setting("/run/cube-envd", "directory inside the root for kernel sockets and helper files")
    log_level: str = setting("INFO", "log level")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.abspath(self.root))
        object.__setattr__(self, "log_level", self.log_level.upper())

    def validate(self) -> Settings:
        if not self.hosts:
            raise SettingsError("--host needs at least one address")
        return self


def parse_settings(argv: list[str] | None = None) -> Settings:
    return Settings.load(argv)
