"""Route table → Envoy resources (listeners, clusters, one route configuration).

Routing scheme (why it looks like this):

* A Lua filter runs first on every request and *normalises* it: the sandbox id and guest port
  come from `E2b-Sandbox-Id`/`E2b-Sandbox-Port` when both are present, else from the leftmost
  Host label `<port>-<sandboxID>`. It answers malformed requests (400) and envd's internal routes
  (`/init`, ... on 49983: 403) itself, stores id and port as dynamic metadata (namespace `cube`,
  used by error bodies and the upstream address), sets the internal header `x-cube-sandbox`
  (client copies are dropped first) and clears the route cache.
* The route configuration has a single virtual host whose routes are a *match tree* keyed on
  `x-cube-sandbox` (`exact_match_map`: a hash lookup per request, not a linear scan of
  thousands of routes). Each sandbox is one map entry: a forward route, a paused 502 (or, for a
  paused autoResume sandbox, a route to the resumer: resume.py), or a small nested matcher that
  checks `E2B-Traffic-Access-Token` for ports other than 49983.
* Upstreams never depend on the sandbox: one ORIGINAL_DST cluster per source address the proxy
  must bind (CubeVS gives one per node, so in practice one cluster) takes the destination from
  the `x-cube-upstream` header that the sandbox's route sets to `<host_address>:<port>`, the
  port coming from the request. Creating or deleting sandboxes therefore only changes the route
  configuration (RDS), never clusters (CDS), so churn costs no cluster warming and no connection
  drains; each sandbox costs ~300 bytes of route config. Sandboxes on other nodes route to a
  STATIC (or DNS) cluster per remote node proxy.
* Errors: no map entry = Envoy's "no route" (NR) and a connect failure or reset by the guest
  (UF/UC) become the SDK's 502 bodies through local-reply mappers (errors.py).
* Host masks (E2B's maskRequestHost, cube_common/host_mask.py): a masked sandbox's forward route
  for ports other than 49983 sets the internal header `x-cube-host` to the mask with `${PORT}`
  made the request's port (dynamic metadata, as for `x-cube-upstream`) and has Envoy rewrite the
  Host from it (`host_rewrite_header`; Envoy cannot set Host as a plain header, nor format a
  `host_rewrite_literal`), the client's Host going to `X-Forwarded-Host`. Route headers are
  applied before the rewrite reads them, so `x-cube-host` cannot be removed and reaches the guest,
  equal to its Host. Only the owning node masks: a hop to another node's proxy keeps the Host.
* httpsPorts (E2B's, cube_common/https_ports.py): a local sandbox's map entry sends requests to
  those ports to the TLS twin of its source-address cluster (same ORIGINAL_DST, TLS to the guest
  without certificate checks), with the same token check and Host mask as its other ports. Each
  local cluster has its twin from the start, so no route ever waits for a cluster.

* WebSockets (HTTP/1.1 upgrades, HTTP/2 extended CONNECT) take the same routes, token check and
  mask as any request; the Lua filter gives an HTTP/2 one the Sec-WebSocket-Key guests expect.
* api.<domain> (E2B's API host: the SDKs send volume content calls, /volumecontent/{volumeID}/...
  with the volume's bearer token, there): when the request has no sandbox headers and its Host,
  without a port and in any case, is exactly api.<domain>, the Lua filter answers 404
  (`{"code":404,"message":...}`) unless the path starts with /volumecontent/ (after the same
  decoding as envd's block list, and without dot segments) and the route is on (`api_upstream`);
  otherwise it sets `x-cube-sandbox` to API_ROUTE_KEY, which no sandbox id can be, and the map
  entry of that key sends the request to the cube-api cluster (STATIC or DNS, from the settings
  only, so it never churns) with Host, path, query, Authorization and bodies as they came: no
  buffering, no route timeout, an idle timeout between bytes. The sandbox headers win over this
  Host as over any other: a request carrying both E2b-Sandbox-Id and E2b-Sandbox-Port is sandbox
  traffic whatever its Host. cube-api failing (refused, reset, unresolved) is a 502 of its own,
  not a sandbox's (a local-reply mapper keyed on the Lua filter's `cube:api` metadata).

Only RDS changes per sandbox. Envoy's state-of-the-world RDS resends the whole route
configuration on a change; the control plane coalesces bursts (ads.py), so this stays cheap
(Envoy rebuilds a hash map) up to thousands of sandboxes per node.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass

# Importing these registers the message types that appear inside `Any` fields.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message
from xds.type.matcher.v3 import matcher_pb2

from cube_common import host_mask
from cube_common.envd import ENVD_PORT

from . import errors
from .routes import Route, RouteState, RouteTable
from .settings import Endpoint, ProxySettings
from .tls import TlsFiles

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

ROUTE_CONFIG_NAME = "cube_sandboxes"
SANDBOX_HEADER = "x-cube-sandbox"
PORT_HEADER = "x-cube-port"
UPSTREAM_HEADER = "x-cube-upstream"
HOST_HEADER = "x-cube-host"  # a masked sandbox's Host, for host_rewrite_header
TOKEN_HEADER = "e2b-traffic-access-token"
WS_KEY = "Y3ViZS1wcm94eS1rZXkhIQ=="  # base64 of 16 bytes, as RFC 6455 wants (see the Lua filter)
RESUMER_CLUSTER = "cube_resumer"
API_CLUSTER = "cube_api"
# The Lua filter's x-cube-sandbox value for a volume content call to api.<domain>: its map entry
# routes to cube-api. No sandbox id can take it (routes.SANDBOX_ID_RE: letters, digits, '_', '-').
API_ROUTE_KEY = "@api"
API_PATH_PREFIX = "/volumecontent/"
# Volume transfers may be large: no overall timeout on that route, only this one between bytes.
API_IDLE_TIMEOUT_S = 300
# Below cube-api's keep-alive (Sanic KEEP_ALIVE_TIMEOUT 75 s), so Envoy never reuses a connection
# the API is closing.
API_UPSTREAM_IDLE_TIMEOUT_S = 60
# envd routes only the orchestrator may call (upstream E2B blocks the same list at its proxy).
BLOCKED_ENVD_PATHS = ("/init", "/freeze", "/unfreeze", "/fsfreeze", "/fsthaw", "/collapse", "/upgrade")

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
ROUTE_ACTION = "type.googleapis.com/envoy.config.route.v3.Route"

LUA_TEMPLATE = r"""
-- CubeProxy request normaliser: which sandbox and port does this request want?
local ENVD_PORT = "%(envd_port)d"
local BLOCKED = {}
for _, p in ipairs({%(blocked)s}) do BLOCKED[p] = true end
local API_HOST = %(api_host)s  -- api.<domain>: E2B's volume content calls
local API_ON = %(api_on)s
local API_PREFIX = "%(api_prefix)s"

local function reply(h, status, message, sandbox_id)
  local body = '{"code":' .. status .. ',"message":"' .. message .. '"'
  if sandbox_id ~= nil then body = body .. ',"sandboxId":"' .. sandbox_id .. '"' end
  h:respond({[":status"] = tostring(status), ["content-type"] = "application/json"}, body .. "}")
end

local function valid_id(id)
  return id ~= nil and #id <= 128 and id:match("^[%%w][%%w_%%-]*$") ~= nil
end

local function canonical_port(p)
  if p == nil or #p > 5 or p:match("^%%d+$") == nil then return nil end
  local n = tonumber(p)
  if n < 1 or n > 65535 then return nil end
  return tostring(n)
end

-- The path as the guest's router will see it: no query, %%XX decoded, no repeated or trailing
-- slashes, so "/%%69nit" or "//init/" cannot slip past the block list.
local function canonical_path(p)
  p = p:match("^[^?#]*") or ""
  p = p:gsub("%%%%(%%x%%x)", function(x) return string.char(tonumber(x, 16)) end)
  p = p:gsub("/+", "/")
  if #p > 1 then p = p:gsub("/$", "") end
  return p
end

-- api.<domain> (any port): /volumecontent/... goes to cube-api (its map entry), the rest is 404.
-- Dot segments are refused, so the path cannot climb out of /volumecontent/ at the API.
local function api_request(h, hd)
  local p = canonical_path(hd:get(":path") or "/")
  if not API_ON or p:sub(1, #API_PREFIX) ~= API_PREFIX or (p .. "/"):find("/%%.%%.?/") ~= nil then
    return reply(h, 404, "%(api_not_found)s")
  end
  h:streamInfo():dynamicMetadata():set("cube", "api", "1")  -- for the API's own 502 body
  hd:replace("%(sandbox)s", "%(api_key)s")
  h:clearRouteCache()
end

function envoy_on_request(h)
  local hd = h:headers()
  hd:remove("%(sandbox)s")
  hd:remove("%(port)s")
  hd:remove("%(upstream)s")
  hd:remove("%(host)s")
  local id = hd:get("e2b-sandbox-id")
  local port = hd:get("e2b-sandbox-port")
  if id == nil or port == nil then
    local authority = (hd:get(":authority") or ""):lower()
    if (authority:match("^(.-):%%d+$") or authority) == API_HOST then return api_request(h, hd) end
    local label = authority:match("^[^.:]+")
    if label ~= nil then port, id = label:match("^(%%d+)%%-(.+)$") end
    if id == nil then
      return reply(h, 400, "no sandbox in the request: use the host <port>-<sandboxID>.<domain> or the "
                           .. "E2b-Sandbox-Id and E2b-Sandbox-Port headers")
    end
    id = id:lower()
  end
  if not valid_id(id) then return reply(h, 400, "invalid sandbox id") end
  local p = canonical_port(port)
  if p == nil then return reply(h, 400, "invalid sandbox port", id) end
  local md = h:streamInfo():dynamicMetadata()
  md:set("cube", "sandbox_id", id)
  md:set("cube", "port", p)
  if p == ENVD_PORT and BLOCKED[canonical_path(hd:get(":path") or "/")] then
    return reply(h, 403, "this envd route is internal to Cube", id)
  end
  -- A WebSocket over HTTP/2 (RFC 8441 extended CONNECT) has no Sec-WebSocket-Key: Envoy makes
  -- it an HTTP/1.1 upgrade without one, which guests' servers refuse (400). Any valid key does:
  -- Envoy answers the HTTP/2 client itself, and that client checks no Sec-WebSocket-Accept.
  if (hd:get("upgrade") or ""):lower() == "websocket" and hd:get("sec-websocket-key") == nil then
    hd:add("sec-websocket-key", "%(ws_key)s")
  end
  hd:replace("%(sandbox)s", id)
  hd:replace("%(port)s", p)
  h:clearRouteCache()
end
"""


def _lua_string(text: str) -> str:
    """A Lua string literal of `text`."""
    plain = lambda b: (b < 128 and chr(b).isalnum()) or b in b".-_:"  # noqa: E731
    return '"' + "".join(chr(b) if plain(b) else f"\\{b:03d}" for b in text.encode()) + '"'


def lua_source(s: ProxySettings) -> str:
    """The request normaliser; it knows api.<domain> and whether its route is on."""
    # Lua is full of braces: %-substitution keeps it readable.
    return LUA_TEMPLATE % {
        "blocked": ", ".join(f'"{p}"' for p in BLOCKED_ENVD_PATHS), "envd_port": ENVD_PORT,
        "sandbox": SANDBOX_HEADER, "port": PORT_HEADER, "upstream": UPSTREAM_HEADER, "host": HOST_HEADER,
        "ws_key": WS_KEY, "api_host": _lua_string(f"api.{s.domain}"),
        "api_on": "true" if s.api_endpoint is not None else "false", "api_prefix": API_PATH_PREFIX,
        "api_key": API_ROUTE_KEY, "api_not_found": errors.API_NOT_FOUND,
    }


@dataclass(frozen=True)
class Resources:
    """Everything Envoy gets over ADS, by type URL: resource name → message."""

    listeners: dict[str, Message]
    clusters: dict[str, Message]
    routes: dict[str, Message]

    def by_type(self) -> dict[str, dict[str, Message]]:
        return {LISTENER_TYPE: self.listeners, CLUSTER_TYPE: self.clusters, ROUTE_TYPE: self.routes}


def _parse(d: dict, cls):
    return json_format.ParseDict(d, cls())


def _address(ep: Endpoint) -> dict:
    return {"socket_address": {"address": ep.host, "port_value": ep.port}}


def _safe(text: str) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9]", "_", text)[:40] + "_" + digest


# -- clusters ---------------------------------------------------------------------------------

LOCAL_CLUSTER_PREFIX = "cube_local_src_"


def local_cluster_name(source_address: str, tls: bool = False) -> str:
    """This node's guests, reached binding ``source_address``; ``tls``: over TLS (httpsPorts)."""
    name = "cube_local" if not source_address else LOCAL_CLUSTER_PREFIX + _safe(source_address)
    return name + "_tls" if tls else name


def remote_cluster_name(remote: Endpoint) -> str:
    return "cube_node_" + _safe(str(remote))


_UNLIMITED = {"thresholds": [{"priority": "DEFAULT", "max_connections": 1000000, "max_pending_requests": 1000000,
                              "max_requests": 1000000, "max_retries": 1000}]}


def _http1_upstream(idle_timeout_s: int = 3600) -> dict:
    # Guests (envd, the code interpreter, user servers) speak HTTP/1.1. Idle upstream
    # connections are kept an hour; no per-request timeout (streams may be silent for minutes).
    return {HTTP_OPTIONS: {"@type": "type.googleapis.com/" + HTTP_OPTIONS,
                           "common_http_protocol_options": {"idle_timeout": f"{idle_timeout_s}s"},
                           "explicit_http_config": {"http_protocol_options": {}}}}


def _local_cluster(source_address: str, s: ProxySettings, tls: bool = False) -> cluster_pb2.Cluster:
    d = {
        "name": local_cluster_name(source_address, tls),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": UPSTREAM_HEADER},
        # Keep per-guest connection pools around between bursts of SDK calls.
        "cleanup_interval": "60s",
        "connect_timeout": f"{s.upstream_connect_timeout}s",
        "circuit_breakers": _UNLIMITED,
        "typed_extension_protocol_options": _http1_upstream(),
    }
    if source_address:
        # CubeVS admits only this source into the sandbox network.
        d["upstream_bind_config"] = {"source_address": {"address": source_address, "port_value": 0}}
    if tls:
        # A guest server's certificate is its own (self-signed, for any name): E2B's httpsPorts
        # does not check it, so no validation context. The hop never leaves the node.
        d["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"alpn_protocols": ["http/1.1"]}}}
    return _parse(d, cluster_pb2.Cluster)


def _endpoint_cluster(name: str, ep: Endpoint, connect_timeout: float, **extra) -> cluster_pb2.Cluster:
    """A cluster of one fixed endpoint (STATIC for an IP, else resolved by DNS)."""
    try:
        ipaddress.ip_address(ep.host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    return _parse({
        "name": name,
        "type": kind,
        "connect_timeout": f"{connect_timeout}s",
        "typed_extension_protocol_options": _http1_upstream(),
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(ep)}}]}]},
        **extra,
    }, cluster_pb2.Cluster)


def _remote_cluster(remote: Endpoint, s: ProxySettings) -> cluster_pb2.Cluster:
    return _endpoint_cluster(remote_cluster_name(remote), remote, s.upstream_connect_timeout,
                             circuit_breakers=_UNLIMITED)


def _resumer_cluster(s: ProxySettings) -> cluster_pb2.Cluster:
    return _endpoint_cluster(RESUMER_CLUSTER, s.resumer, 2.0)


def _api_cluster(api: Endpoint, s: ProxySettings) -> cluster_pb2.Cluster:
    # A Service name may resolve to IPv4 or IPv6 only: prefer v4, take v6 when that is all there is.
    return _endpoint_cluster(API_CLUSTER, api, s.upstream_connect_timeout, dns_lookup_family="V4_PREFERRED",
                             typed_extension_protocol_options=_http1_upstream(API_UPSTREAM_IDLE_TIMEOUT_S))


def build_clusters(table: RouteTable, s: ProxySettings, cache: dict | None = None) -> dict[str, Message]:
    """Clusters by name; `cache` (name → message) avoids re-parsing unchanged clusters."""
    cache = {} if cache is None else cache

    def get(name: str, make) -> Message:
        if name not in cache:
            cache[name] = make()
        return cache[name]

    # Every local cluster has a TLS twin for httpsPorts, made with it and kept as long: a route
    # switching to it never waits for a cluster (see the source-address clusters below).
    clusters = {name: get(name, functools.partial(_local_cluster, "", s, tls))
                for tls in (False, True) for name in [local_cluster_name("", tls)]}
    if s.master_addr:
        clusters[RESUMER_CLUSTER] = get(RESUMER_CLUSTER, lambda: _resumer_cluster(s))
    api = s.api_endpoint
    if api is not None:  # depends on the settings only: built once, never churns
        clusters[API_CLUSTER] = get(API_CLUSTER, lambda: _api_cluster(api, s))
    for r in table.routes.values():
        if r.state is not RouteState.RUNNING:
            continue
        if r.remote is not None:
            name = remote_cluster_name(r.remote)
            if name not in clusters:
                clusters[name] = get(name, functools.partial(_remote_cluster, r.remote, s))
        elif r.proxy_source_address:
            for tls in (False, True):
                name = local_cluster_name(r.proxy_source_address, tls)
                if name not in clusters:
                    clusters[name] = get(name, functools.partial(_local_cluster, r.proxy_source_address, s, tls))
    for name in [n for n in cache if n not in clusters]:
        if name.startswith(LOCAL_CLUSTER_PREFIX):
            # This node's source-address cluster stays when its last sandbox pauses: Envoy may
            # apply the cluster removal before the route change, and a request in between would
            # find its route's cluster gone (NC). There is one per source address, so it is cheap.
            clusters[name] = cache[name]
        else:
            del cache[name]
    return clusters


# -- routes -----------------------------------------------------------------------------------

def _json_headers() -> list[dict]:
    return [{"header": {"key": "content-type", "value": "application/json"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def _direct(status: int, body: dict) -> dict:
    return {"match": {"prefix": "/"},
            "direct_response": {"status": status, "body": {"inline_string": errors.dumps(body)}},
            "response_headers_to_add": _json_headers()}


def _set(key: str, value: str) -> dict:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


# The internal routing headers never reach a guest or another node. They are removed by the
# routes that forward, not for the whole virtual host: the resume route must keep them, because
# Envoy routes its internal redirect with the request's headers as the router left them.
# (x-cube-upstream must stay: the ORIGINAL_DST load balancer reads it after route headers apply.)
_INTERNAL = [SANDBOX_HEADER, PORT_HEADER]


def _envoy_host(mask: str) -> str:
    """A host mask as an Envoy header-value format: `${PORT}` becomes the request's port. A mask
    has no '%' (host_mask.check); doubling any anyway keeps it literal."""
    return mask.replace("%", "%%").replace(host_mask.PORT_PLACEHOLDER, errors.ENVOY_PORT)


def _forward(r: Route, masked: bool = False, tls: bool = False) -> dict:
    """Where a running sandbox's requests go; `masked`: with its Host mask, `tls`: over TLS (its
    httpsPorts) (both local routes only)."""
    if r.remote is not None:
        # The owning node's proxy routes by header; the Host (and so the guest's view) is kept.
        return {"match": {"prefix": "/"},
                "route": {"cluster": remote_cluster_name(r.remote), "timeout": "0s"},
                "request_headers_to_add": [_set("e2b-sandbox-id", r.sandbox_id),
                                           _set("e2b-sandbox-port", errors.ENVOY_PORT)],
                "request_headers_to_remove": _INTERNAL}
    host = f"[{r.host_address}]" if ":" in r.host_address else r.host_address
    route: dict = {"cluster": local_cluster_name(r.proxy_source_address, tls), "timeout": "0s"}
    headers = [_set(UPSTREAM_HEADER, f"{host}:{errors.ENVOY_PORT}")]
    if masked:
        # Route headers are applied before the rewrite: X-Forwarded-Host gets the client's Host.
        route["host_rewrite_header"] = HOST_HEADER
        headers += [_set(HOST_HEADER, _envoy_host(r.mask_request_host)),
                    _set("x-forwarded-host", "%REQ(:AUTHORITY)%")]
    return {"match": {"prefix": "/"}, "route": route, "request_headers_to_add": headers,
            "request_headers_to_remove": _INTERNAL}


def _resume(s: ProxySettings) -> dict:
    """A paused autoResume sandbox: the resumer (resume.py) wakes it and answers 307 to the same
    URL, which Envoy follows itself (internal redirect): it routes again, now to the running
    sandbox, and replays the buffered request. Bodies over the buffer limit (1 MiB) cannot be
    replayed; their client gets the 307. So does a WebSocket upgrade (its body is the socket,
    never complete): the sandbox is resumed, and the client's retry connects."""
    # No header mutation here: the resumer reads the sandbox from x-cube-sandbox (set by the Lua
    # filter). A header this route added was seen to reach the guest with a corrupted name after
    # the redirect, the route having been replaced (paused -> running) meanwhile.
    return {"match": {"prefix": "/"},
            "route": {"cluster": RESUMER_CLUSTER, "timeout": f"{s.resume_timeout + 5:g}s",
                      "internal_redirect_policy": {"max_internal_redirects": 1, "redirect_response_codes": [307]}}}


def _api() -> dict:
    """A volume content call to api.<domain>: on to cube-api, bodies streamed both ways (no
    buffering filter; the API caps uploads). No route timeout, which would cut a large transfer:
    only an idle timeout between bytes. The Host (api.<domain>) is kept."""
    return {"match": {"prefix": "/"},
            "route": {"cluster": API_CLUSTER, "timeout": "0s", "idle_timeout": f"{API_IDLE_TIMEOUT_S}s"},
            "request_headers_to_remove": _INTERNAL}


def _action(route: dict) -> dict:
    return {"action": {"name": "route", "typed_config": {"@type": ROUTE_ACTION, **route}}}


def _header_input(name: str) -> dict:
    return {"name": name, "typed_config": {"@type": HEADER_INPUT, "header_name": name}}


def _on_match(r: Route, s: ProxySettings | None = None) -> dict:
    """A sandbox's map entry. `s` is None when auto-resume is off (no master to ask).

    envd's port (49983) gets `envd`; every other port `user`, the same unless the sandbox has a
    Host mask (envd's requests keep their Host, as on E2B) and behind the traffic token check."""
    if r.state is RouteState.PAUSED:
        if not (r.auto_resume and s is not None and s.master_addr):
            return _action(_direct(502, errors.paused(r.sandbox_id)))
        # Guarded like the running sandbox's traffic would be; the mask applies once the
        # resumed request is routed again, to the running sandbox.
        envd = user = _action(_resume(s))
    else:
        envd = _action(_forward(r))
        user = _action(_forward(r, masked=True)) if r.mask_request_host and r.is_local else envd
    # httpsPorts: the same as `user` but over TLS, one map entry per port (the owning node's only:
    # another node's proxy sends them on to that node's, which does the TLS).
    tls_ports = r.https_ports if r.state is RouteState.RUNNING and r.is_local else ()
    if not r.traffic_access_token and user is envd and not tls_ports:
        return envd
    tls_user = _action(_forward(r, masked=bool(r.mask_request_host), tls=True)) if tls_ports else None
    if r.traffic_access_token:
        user = {"matcher": _token_check(r, user)}
        if tls_user is not None:
            tls_user = {"matcher": _token_check(r, tls_user)}
    ports = {str(ENVD_PORT): envd, **{str(p): tls_user for p in tls_ports}}
    return {"matcher": {
        "matcher_tree": {"input": _header_input(PORT_HEADER), "exact_match_map": {"map": ports}},
        "on_no_match": user,
    }}


def _token_check(r: Route, forward: dict) -> dict:
    """Ports other than envd's need E2B-Traffic-Access-Token: missing → 401, wrong → 403."""
    return {
        "matcher_list": {"matchers": [
            {"predicate": {"single_predicate": {"input": _header_input(TOKEN_HEADER),
                                                "value_match": {"exact": r.traffic_access_token}}},
             "on_match": forward},
            {"predicate": {"single_predicate": {"input": _header_input(TOKEN_HEADER),
                                                "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}}}},
             "on_match": _action(_direct(403, errors.client_error(
                 403, "invalid E2B-Traffic-Access-Token", r.sandbox_id)))},
        ]},
        "on_no_match": _action(_direct(401, errors.client_error(
            401, "missing E2B-Traffic-Access-Token", r.sandbox_id))),
    }


def _vhost_base() -> dict:
    return {"name": "sandboxes", "domains": ["*"]}  # internal headers: see _forward


def build_route_config(table: RouteTable, s: ProxySettings | None = None) -> route_pb2.RouteConfiguration:
    """The one RouteConfiguration, from scratch (ResourceBuilder keeps one up to date instead).
    With settings whose api_upstream is set, the map also has the volume content entry."""
    rc = _parse({"name": ROUTE_CONFIG_NAME, "virtual_hosts": [_vhost_base()]}, route_pb2.RouteConfiguration)
    api = s is not None and s.api_endpoint is not None
    if not table.routes and not api:
        return rc  # no entry → no route (NR) → the "was not found" 502 from the local-reply mapper
    tree = rc.virtual_hosts[0].matcher.matcher_tree
    json_format.ParseDict(_header_input(SANDBOX_HEADER), tree.input)
    if api:
        tree.exact_match_map.map[API_ROUTE_KEY].CopyFrom(_parse(_action(_api()), matcher_pb2.Matcher.OnMatch))
    for sid, r in sorted(table.routes.items()):
        tree.exact_match_map.map[sid].CopyFrom(_parse(_on_match(r, s), matcher_pb2.Matcher.OnMatch))
    return rc


class ResourceBuilder:
    """Builds Resources for successive route tables, reusing what did not change: listeners are
    built once, and the route configuration is edited in place (only changed sandboxes' map
    entries are parsed and copied). The returned messages are serialised by the ADS server
    before the next build edits them."""

    def __init__(self, settings: ProxySettings, tls: TlsFiles | None, https: list[Endpoint], http: list[Endpoint]):
        self._settings = settings
        self._listeners = build_listeners(settings, tls, https, http)  # depend on settings only
        self._rc = build_route_config(RouteTable(), settings)
        self._clusters: dict[str, Message] = {}
        self._current: dict[str, Route] = {}  # sandbox id → route, as in _rc

    def _routes(self, table: RouteTable) -> route_pb2.RouteConfiguration:
        wanted = table.routes
        if not wanted:
            self._rc = build_route_config(RouteTable(), self._settings)
            self._current = {}
            return self._rc
        vhost = self._rc.virtual_hosts[0]
        if not vhost.matcher.matcher_tree.HasField("input"):
            json_format.ParseDict(_header_input(SANDBOX_HEADER), vhost.matcher.matcher_tree.input)
        entries = vhost.matcher.matcher_tree.exact_match_map.map
        for sid in [sid for sid in self._current if sid not in wanted]:
            del entries[sid]
            del self._current[sid]
        for sid, r in wanted.items():
            if self._current.get(sid) != r:
                entries[sid].CopyFrom(_parse(_on_match(r, self._settings), matcher_pb2.Matcher.OnMatch))
                self._current[sid] = r
        return self._rc

    def build(self, table: RouteTable) -> Resources:
        return Resources(listeners=self._listeners, clusters=build_clusters(table, self._settings, self._clusters),
                         routes={ROUTE_CONFIG_NAME: self._routes(table)})


# -- listeners --------------------------------------------------------------------------------

def _local_reply_config() -> dict:
    def mapper(flags: list[str], text: str) -> dict:
        return {"filter": {"response_flag_filter": {"flags": flags}}, "status_code": 502,
                "body_format_override": {"text_format_source": {"inline_string": text},
                                         "content_type": "application/json"}}
    # The volume content route's upstream is cube-api, not a sandbox (the Lua filter marks it).
    api = mapper(["UF", "UC", "URX", "UH", "NC", "UO"], errors.ENVOY_API_UNREACHABLE)
    api["filter"] = {"and_filter": {"filters": [
        {"metadata_filter": {"matcher": {"filter": "cube", "path": [{"key": "api"}],
                                         "value": {"present_match": True}},
                             "match_if_key_not_found": False}},
        api["filter"]]}}
    return {"mappers": [
        api,
        mapper(["NR"], errors.ENVOY_NOT_FOUND),
        # Refused or reset by the guest (or the connect timed out): the sandbox is there, the
        # port is not serving.
        mapper(["UF", "UC", "URX"], errors.ENVOY_PORT_NOT_OPEN),
        mapper(["UH", "NC", "UO"], errors.ENVOY_UNREACHABLE),
    ]}


ACCESS_LOG_FORMAT = {
    "component": "envoy-access",
    "sandbox_id": errors.ENVOY_SANDBOX_ID,
    "port": errors.ENVOY_PORT,
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(WQ:ORIG)%",  # no query: signed URLs carry their signature there
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "upstream": "%UPSTREAM_HOST%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


def _access_log(mode: str) -> list[dict]:
    if mode == "off":
        return []
    log = {"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"json_format": ACCESS_LOG_FORMAT}}}
    if mode == "errors":
        log["filter"] = {"or_filter": {"filters": [
            {"status_code_filter": {"comparison": {"op": "GE", "value": {
                "default_value": 400, "runtime_key": "cube_access_log_min_status"}}}},
            {"response_flag_filter": {}},
        ]}}
    return [log]


def _hcm(stat_prefix: str, s: ProxySettings) -> dict:
    return {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": ROUTE_CONFIG_NAME},
        "http_filters": [
            {"name": "envoy.filters.http.lua", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua_source(s)}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": True}},
        ],
        # Pass requests and responses through as they are: no request ids, no server rewrite,
        # no compression filter, no buffering filter.
        "generate_request_id": False,
        "server_header_transformation": "PASS_THROUGH",
        # envd streams idle ~50 s between keepalives, /execute ~5 s: never cut a quiet stream
        # short; no overall request timeout (long downloads, long-running commands).
        "stream_idle_timeout": "3600s",
        "request_timeout": "0s",
        "request_headers_timeout": "60s",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        # WebSockets to sandbox ports (Jupyter, Chrome DevTools on 9222, ...), as E2B's proxy
        # carries them; said explicitly rather than left to Envoy's default.
        # allow_connect lets HTTP/2 clients use extended CONNECT (RFC 8441), which Envoy turns
        # into an HTTP/1.1 upgrade toward the guests (every cluster here is HTTP/1.1).
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "http2_protocol_options": {"initial_stream_window_size": 4 * 1024 * 1024,
                                   "initial_connection_window_size": 16 * 1024 * 1024,
                                   "max_concurrent_streams": 1024, "allow_connect": True},
        "local_reply_config": _local_reply_config(),
        "access_log": _access_log(s.access_log),
    }


def _listener_name(kind: str, ep: Endpoint) -> str:
    return f"{kind}_{_safe(str(ep))}"


def build_listeners(s: ProxySettings, tls: TlsFiles | None, https: list[Endpoint],
                    http: list[Endpoint]) -> dict[str, Message]:
    out: dict[str, Message] = {}
    for ep in https:
        assert tls is not None
        name = _listener_name("https", ep)
        chain = {
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": _hcm("https", s)}],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(tls.cert)},
                                          "private_key": {"filename": str(tls.key)}}],
                    # The SDK uses h2 for RPC when offered and forces HTTP/1.1 elsewhere.
                    "alpn_protocols": ["h2", "http/1.1"],
                }}},
        }
        out[name] = _parse({"name": name, "address": _address(ep), "filter_chains": [chain],
                            "enable_reuse_port": False}, listener_pb2.Listener)
    for ep in http:
        name = _listener_name("http", ep)
        chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                              "typed_config": _hcm("http", s)}]}
        out[name] = _parse({"name": name, "address": _address(ep), "filter_chains": [chain],
                            "enable_reuse_port": False}, listener_pb2.Listener)
    return out


def build_resources(table: RouteTable, s: ProxySettings, tls: TlsFiles | None,
                    https: list[Endpoint], http: list[Endpoint]) -> Resources:
    return Resources(
        listeners=build_listeners(s, tls, https, http),
        clusters=build_clusters(table, s),
        routes={ROUTE_CONFIG_NAME: build_route_config(table, s)},
    )
