"""Who a Cube component is, proved by certificate: mutual TLS on every internal gRPC hop.

Identity. The cluster CA (``deploy/pki.py`` issues everything) names one role and one instance in
each certificate, as a URI SAN ``spiffe://cube.internal/<role>/<instance>``. A certificate a server
presents also carries the DNS name ``<role>.cube.internal``, and every client checks that name
whatever address it dials (``grpc.ssl_target_name_override``): an api reaching "the master" talks
to a holder of a master certificate, not to whatever answers on that port.

Material. A component's TLS directory has the layout of a Kubernetes TLS Secret with its CA, so a
Helm chart mounts one Secret per component as is: ``tls.crt`` (the leaf, then any chain),
``tls.key`` (private: no group or other access) and ``ca.crt`` (the cluster CA).

Invariants:
- A server with a TLS directory listens only with TLS and requires a client certificate from the
  same CA: a peer without one fails the handshake, before any handler runs.
- ``RoleGate`` (``SyncRoleGate`` for a thread-pool server) says which roles may call a service (per
  method where it matters); any other peer gets PERMISSION_DENIED and the handler does not run.
- A service without a TLS directory speaks plaintext; ``cube_common.listen`` then allows it only on
  loopback (or with ``--insecure-public``). ``peer_identity`` is None on such a connection.
- A key file readable by group or others is refused, not used.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

TRUST_DOMAIN = "cube.internal"
URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/"

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


class Role(enum.StrEnum):
    OPERATOR = "operator"  # cubemastercli, sdk.client, deploy: admin of the cluster
    API = "api"            # cube-api: acts for the team of the key it authenticated
    MASTER = "master"
    CUBELET = "cubelet"
    VS = "vs"
    PROXY = "proxy"        # cube-proxy: the xDS server Envoy connects to, and a client of the master
    ENVOY = "envoy"        # the proxy's Envoy, client of the proxy's xDS server
    ETCD = "etcd"


class TlsError(Exception):
    """TLS material missing, unreadable or unsafe."""


@dataclass(frozen=True)
class Identity:
    role: Role
    instance: str  # a node or user name: INSTANCE_RE

    def __post_init__(self) -> None:
        if not INSTANCE_RE.match(self.instance):
            raise ValueError(f"bad instance name {self.instance!r} (letters, digits, '.', '_', '-'; "
                             f"at most 63)")

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{self.role}/{self.instance}"

    def __str__(self) -> str:
        return f"{self.role}/{self.instance}"


def server_name(role: Role) -> str:
    """The DNS name a server of ``role`` proves and its clients check."""
    return f"{role}.{TRUST_DOMAIN}"


def parse_uri(uri: str) -> Identity | None:
    """The identity a SAN URI names, or None when it is not one of ours."""
    if not uri.startswith(URI_PREFIX):
        return None
    role, _, instance = uri[len(URI_PREFIX):].partition("/")
    try:
        return Identity(Role(role), instance)
    except ValueError:
        return None


@dataclass(frozen=True)
class TlsFiles:
    """A component's TLS directory (see the module docstring)."""

    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / CERT_FILE

    @property
    def key(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.dir / CA_FILE

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert chain, key) as PEM; TlsError when a file is missing or the key is not private."""
        try:
            mode = self.key.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise TlsError(f"{self.key} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
                               f"chmod 600 it")
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise TlsError(f"TLS directory {self.dir}: {e.strerror or e}: {e.filename or self.dir}") from None

    def identity(self) -> Identity:
        """Who this directory's certificate says it is."""
        return identity_of_pem(self.read()[1])


def files(tls_dir: Path | None, role: Role | None = None) -> TlsFiles | None:
    """The TLS directory a setting names (None: plaintext), checked now, at start-up: readable, its
    key private, and (with ``role``) holding that role's certificate: a component started with
    another's directory says so instead of being refused by every peer."""
    if tls_dir is None:
        return None
    f = TlsFiles(Path(tls_dir))
    f.read()
    if role is not None and (found := f.identity()).role is not role:
        raise TlsError(f"{tls_dir} holds the certificate of {found} (role {found.role}); this needs "
                       f"one of role {role}")
    return f


@functools.lru_cache(maxsize=256)
def identity_of_pem(pem: bytes) -> Identity:
    """The identity in the first certificate of ``pem``; TlsError when it names none of ours."""
    from cryptography import x509  # not at import: the guest agent ships this package without it

    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, IndexError, x509.ExtensionNotFound) as e:
        raise TlsError(f"not a Cube certificate: {e}") from None
    found = [i for i in map(parse_uri, uris) if i is not None]
    if len(found) != 1:
        raise TlsError(f"a Cube certificate names exactly one {URI_PREFIX}<role>/<instance> (found {uris})")
    return found[0]


# ---- servers ---------------------------------------------------------------------------------------

def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def add_port(server: grpc.aio.Server | grpc.Server, address: str, tls: TlsFiles | None) -> int:
    """Listen on ``address``: with mutual TLS when there is TLS material, else plaintext."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(tls))


def peer_identity(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Identity | None:
    """The verified identity of the peer of a call; None on a plaintext connection."""
    # gRPC gives each auth property as a list of values (bytes).
    pems = cast(list[bytes], context.auth_context().get("x509_pem_cert") or [])
    if not pems:
        return None
    try:
        return identity_of_pem(pems[0])
    except TlsError:
        return None


class _Rules:
    """Which roles may call which method: ``default`` for any, ``methods`` per short method name
    (``"Allocate"``)."""

    def __init__(self, default: Collection[Role], methods: Mapping[str, Collection[Role]] | None = None):
        self.default = frozenset(default)
        self.methods = {k: frozenset(v) for k, v in (methods or {}).items()}

    def allowed(self, method: str) -> frozenset[Role]:
        return self.methods.get(method.rsplit("/", 1)[-1], self.default)

    def refusal(self, context: grpc.ServicerContext | grpc.aio.ServicerContext, method: str) -> str | None:
        """Why the peer of ``context`` may not call ``method``; None when it may."""
        allowed = self.allowed(method)
        peer = peer_identity(context)
        if peer is not None and peer.role in allowed:
            return None
        who = f"a {peer.role} certificate" if peer else "no Cube certificate"
        return (f"{method.rsplit('/', 1)[-1]}: callers with {who} may not call it "
                f"(allowed: {', '.join(sorted(allowed)) or 'nobody'})")


class RoleGate(_Rules, grpc.aio.ServerInterceptor):
    """Lets a call to an asyncio server through only when its peer's role may make it. Only install
    it on a TLS server: on plaintext every call is denied."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method

        async def check(context: grpc.aio.ServicerContext) -> None:
            why = self.refusal(context, method)
            if why is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await fn(request, context)
            return call

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                out = fn(request, context)
                if inspect.isasyncgen(out):
                    async for item in out:
                        yield item
                else:
                    await out
            return call

        return rewrap_handler(handler, unary, streaming)


class SyncRoleGate(_Rules, grpc.ServerInterceptor):
    """``RoleGate`` for a thread-pool gRPC server (CubeVS)."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def check(context: grpc.ServicerContext) -> None:
            why = self.refusal(context, method)
            if why is not None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, why)  # raises

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                return fn(request, context)
            return call

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                yield from fn(request, context)
            return call

        return rewrap_handler(handler, unary, streaming)


def rewrap_handler(handler: grpc.RpcMethodHandler, unary: Callable[[Callable[..., Any]], Callable[..., Any]],
                   streaming: Callable[[Callable[..., Any]], Callable[..., Any]]) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped: by ``unary`` when it returns one message, else by
    ``streaming``; the (de)serializers kept. (The server interceptors here and in metrics.py.)"""
    for kind, wrap in (("unary_unary", unary), ("stream_unary", unary), ("unary_stream", streaming),
                       ("stream_stream", streaming)):
        fn = getattr(handler, kind)
        if fn is not None:
            make = getattr(grpc, f"{kind}_rpc_method_handler")
            return make(wrap(fn), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    raise ValueError("a method handler with no behaviour")


# ---- clients ---------------------------------------------------------------------------------------

def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def aio_channel(address: str, tls: TlsFiles | None, server: Role,
                options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to a server of role ``server``: mutual TLS checking that role's name when there
    is TLS material, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=_checking(server, options))


def sync_channel(address: str, tls: TlsFiles | None, server: Role,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """``aio_channel`` for blocking callers (tests, benchmarks)."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, channel_credentials(tls), options=_checking(server, options))


def _checking(server: Role, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``options`` plus the name a server of role ``server`` must prove, whatever address is dialed."""
    return [*options, ("grpc.ssl_target_name_override", server_name(server))]


def client_ssl_context(tls: TlsFiles) -> Any:
    """An ``ssl.SSLContext`` presenting ``tls``'s certificate and trusting only its CA (for
    clients not built on grpcio: grpclib, httpx). Pair it with ``server_name(role)`` as the name
    to check; a gRPC client also sets ALPN ``h2``."""
    import ssl

    ca, _cert, _key = tls.read()  # also checks the key's mode
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx
