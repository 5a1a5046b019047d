"""One loader for every Cube service's settings.

A service declares its settings as a frozen dataclass that subclasses ``Settings`` and names its
environment prefix; every field is a setting:

    @dataclass(frozen=True)
    class ApiSettings(Settings):
        ENV_PREFIX: ClassVar[str] = "CUBE_API_"
        port: int = setting(3000, "HTTP listen port")
        master_addr: str = shared.master_addr()

    s = ApiSettings.load(argv)          # entry points: defaults < environment < command line
    s = ApiSettings(port=0)             # tests: exactly what is written, the environment unread

Invariants:
- The environment is read only by ``load``/``from_env``, at the call, never at import time and never
  by the constructor, so a settings object built in code is exactly what its arguments say.
- Each field has one default (in the class) and one canonical variable ``<ENV_PREFIX><FIELD>``;
  settings that several services share (etcd endpoints, state dir, ...) are declared once in
  ``shared`` below, with the short alias every service accepts (``CUBE_ETCD_ENDPOINTS``).
- Text is converted by the field's type hint, in one place (``_convert``): str, int, float, bool,
  Path, Enum, ``X | None`` (empty text is None), ``tuple[X, ...]`` (comma-separated), and any type
  with a ``parse(text)`` classmethod.
- ``validate()`` runs on every object the loader or ``with_overrides`` makes; a bad value fails at
  start-up with the setting's name, not later.
- ``--help`` lists every setting with its flag, its variables and its default.

Why not pydantic-settings: the guest agent uses this loader inside every sandbox image, which would
then carry pydantic and its compiled core; frozen dataclasses stay ``dataclasses.replace``-able
value objects that tests build without the environment leaking in, and the conversions Cube needs
fit in the hundred lines below.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import socket
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cube_common import defaults
from cube_common.addresses import split_host_port

S = TypeVar("S", bound="Settings")

# Under the state dir, the default home of uploaded build files (shared.build_files_dir).
BUILD_FILES_SUBDIR = "build-files"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting's value is malformed or out of range."""


def setting(default: Any = dataclasses.MISSING, help: str = "", *, env: str | tuple[str, ...] = (),
            flag: str = "", factory: typing.Callable[[], Any] | None = None) -> Any:
    """A settings field: its default (or ``factory``), a line of help, extra environment variables
    read after the canonical one (``env``), and a flag name when ``--<field>`` is not the right one."""
    aliases = (env,) if isinstance(env, str) else tuple(env)
    meta = {"help": help, "env": aliases, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class shared:
    """Settings that several services have, declared once: same default, type, alias and help.

    ``flag`` and ``env`` let one service keep an older flag or variable name besides the shared
    ones; ``help`` replaces the shared text where the service uses the setting differently."""

    @staticmethod
    def _field(default: Any, help: str, alias: str, flag: str, env: tuple[str, ...], own_help: str,
               factory: typing.Callable[[], Any] | None = None) -> Any:
        return setting(default, own_help or help, env=(*env, alias), flag=flag, factory=factory)

    @staticmethod
    def etcd_endpoints(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field((defaults.ETCD_ENDPOINT,), "etcd client endpoints (host:port, comma-separated); "
                             "the client fails over between them", "CUBE_ETCD_ENDPOINTS", flag, env, help)

    @staticmethod
    def etcd_prefix(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field(defaults.ETCD_PREFIX, "root of the cluster state in etcd", "CUBE_ETCD_PREFIX",
                             flag, env, help)

    @staticmethod
    def state_dir(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field(Path(defaults.STATE_DIR), "where this node keeps artifacts, VMs and state",
                             "CUBE_STATE_DIR", flag, env, help)

    @staticmethod
    def build_files_dir(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        # Unset (None) means ``<state_dir>/build-files`` (``build_files_path``): the API writes the
        # archives of E2B COPY steps there and the cubelet reads them, so both resolve it alike.
        return shared._field(None, "where uploaded build files (the archives of template COPY steps) are "
                             "kept, one directory per team; the API writes them, the node's builds read them "
                             "(default: <state_dir>/build-files)", "CUBE_BUILD_FILES_DIR", flag, env, help)

    @staticmethod
    def build_files_path(state_dir: Path, build_files_dir: Path | None) -> Path:
        """The build files directory a service with these two settings uses."""
        return build_files_dir if build_files_dir is not None else Path(state_dir) / BUILD_FILES_SUBDIR

    @staticmethod
    def master_addr(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field(defaults.MASTER_ADDR, "the master's gRPC address", "CUBE_MASTER_ADDR", flag, env, help)

    @staticmethod
    def domain(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field(defaults.DOMAIN, "wildcard domain sandboxes are served under "
                             "(https://<port>-<sandboxID>.<domain>)", "CUBE_DOMAIN", flag, env, help)

    @staticmethod
    def node_id(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field(dataclasses.MISSING, "this node's name in the cluster (default: the host name)",
                             "CUBE_NODE_ID", flag, env, help, factory=socket.gethostname)

    @staticmethod
    def insecure_public(help: str = "") -> Any:
        # No shared alias on purpose: exposing an unguarded listener is decided per service.
        return setting(False, help or "let listen addresses off loopback stand although nothing there "
                       "authenticates callers (see cube_common/listen.py); without it such a service "
                       "refuses to start")

    @staticmethod
    def mtls_dir(help: str = "") -> Any:
        # No shared alias on purpose: each component presents its own certificate.
        return setting(None, help or "this component's TLS directory (tls.crt, tls.key, ca.crt: a "
                       "Kubernetes TLS Secret's layout; deploy/pki.py issues it): mutual TLS on its gRPC "
                       "ports and to its peers and etcd. Unset: plaintext, loopback only")

    @staticmethod
    def metrics_listen(port: int) -> Any:
        # Each service has its own default port (defaults.*_METRICS_PORT) and no shared alias: one
        # variable for all would put every service of a node on one port.
        return setting(f"{defaults.LOOPBACK}:{port}", "Prometheus /metrics listen address (host:port; '' for "
                       "none). It serves read-only figures to whoever reaches it, without a credential: keep it "
                       "on loopback or on a network only your monitoring reaches (cube_common/metrics.py)")

    @staticmethod
    def log_level(flag: str = "", env: tuple[str, ...] = (), help: str = "") -> Any:
        return shared._field("INFO", "log level (DEBUG, INFO, WARNING, ERROR)", "CUBE_LOG_LEVEL", flag, env, help)


@dataclass(frozen=True)
class Settings:
    """Base of every service's settings dataclass; see the module docstring."""

    ENV_PREFIX: ClassVar[str] = "CUBE_"
    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    def validate(self: S) -> S:
        """Check values that types cannot; raise SettingsError. Subclasses extend it."""
        return self

    def with_overrides(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes).validate()

    @classmethod
    def env_names(cls, f: dataclasses.Field[Any]) -> tuple[str, ...]:
        return (f"{cls.ENV_PREFIX}{f.name.upper()}", *f.metadata.get("env", ()))

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Defaults, then the environment, then ``overrides`` (already typed; None means unset)."""
        env = os.environ if env is None else env
        hints = _hints(cls)
        kw: dict[str, Any] = {}
        for f in _settings_fields(cls):
            for name in cls.env_names(f):
                if name in env:
                    kw[f.name] = _convert_named(name, hints[f.name], env[name])
                    break
        kw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            obj = cls(**kw)
        except (TypeError, ValueError) as e:
            raise SettingsError(str(e)) from e
        return obj.validate()

    @classmethod
    def parser(cls, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        """An argument parser (or ``parser`` extended) with a flag for every setting."""
        p = parser or argparse.ArgumentParser(prog=cls.PROG or None, description=cls.DESCRIPTION or None)
        hints = _hints(cls)
        group = p.add_argument_group("settings (flag > environment > default)")
        for f in _settings_fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            env_text = " | ".join(cls.env_names(f))
            help_text = f"{f.metadata.get('help', '')} [env {env_text}; default {_show_default(f)}]".strip()
            help_text = help_text.replace("%", "%%")
            if _is_bool(hints[f.name]):
                group.add_argument(flag, dest=f.name, nargs="?", const="true", default=None, metavar="BOOL",
                                   help=help_text)
                group.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="false",
                                   help=argparse.SUPPRESS)
            else:
                group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)
        return p

    @classmethod
    def from_namespace(cls: type[S], ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> S:
        hints = _hints(cls)
        overrides = {f.name: _convert_named("--" + f.name.replace("_", "-"), hints[f.name], getattr(ns, f.name))
                     for f in _settings_fields(cls) if getattr(ns, f.name, None) is not None}
        return cls.from_env(env, **overrides)

    @classmethod
    def load(cls: type[S], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> S:
        """What an entry point calls: defaults < environment < command line; exits on bad input."""
        p = cls.parser()
        ns = p.parse_args(argv)
        try:
            return cls.from_namespace(ns, env)
        except SettingsError as e:
            p.error(str(e))
            raise  # unreachable: error() exits


def check_listen(name: str, value: str) -> None:
    """An optional listen address: empty (none) or ``host:port``; raise SettingsError naming it."""
    if value:
        check_host_ports(name, (value,))


def check_host_ports(name: str, values: Sequence[str]) -> None:
    """Every item is ``host:port`` (``[v6]:port`` too); raise SettingsError naming the setting."""
    if not values:
        raise SettingsError(f"{name} is empty")
    for v in values:
        try:
            _host, port = split_host_port(v)
        except ValueError:
            port = 0
        if not port:
            raise SettingsError(f"bad {name} entry {v!r} (want host:port)")


def _settings_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _show_default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
        if isinstance(d, tuple):
            return ",".join(str(x) for x in d) or "''"
        if isinstance(d, enum.Enum):
            return str(d.value)
        return "''" if d == "" else str(d)
    return "computed"


def _is_bool(hint: Any) -> bool:
    return hint is bool or (_optional_inner(hint) is bool)


def _optional_inner(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _convert_named(name: str, hint: Any, raw: Any) -> Any:
    try:
        return _convert(hint, raw)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{name}={raw!r}: {e}") from e


def _convert(hint: Any, raw: Any) -> Any:
    """Text to the type ``hint`` names; values that are already typed pass through."""
    if not isinstance(raw, str):
        return raw
    inner = _optional_inner(hint)
    if inner is not None:
        return None if raw.strip() == "" else _convert(inner, raw)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, part.strip()) for part in _split_list(raw) if part.strip())
    if hint is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("want true or false")
    if hint in (int, float, str, Path):
        return hint(raw.strip() if hint is not str else raw)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(raw.strip().lower() if issubclass(hint, str) else raw)
    parse = getattr(hint, "parse", None)
    if callable(parse):
        return parse(raw)
    return raw


def _split_list(raw: str) -> list[str]:
    """Comma-separated items; commas inside [...] (IPv6 endpoints) do not split."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in raw:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out
