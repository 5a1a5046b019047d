"""The OpenAPI 3.0 document of cube-api (served at /openapi.json).

Schemas follow E2B's spec for the parts the SDKs use; a test checks that every route the app
serves is described here, and nothing else.
"""

from __future__ import annotations

from cube_common.envd import ENVD_VERSION


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _arr(schema: dict) -> dict:
    return {"type": "array", "items": schema}


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
STRMAP = {"type": "object", "additionalProperties": STR}

SCHEMAS = {
    "Error": {"type": "object", "required": ["code", "message"],
              "properties": {"code": INT, "message": STR}},
    "NetworkConfig": {"type": "object", "properties": {"allowOut": _arr(STR), "denyOut": _arr(STR)}},
    "NewSandbox": {"type": "object", "required": ["templateID"], "properties": {
        "templateID": STR, "timeout": {"type": "integer", "minimum": 1, "default": 300},
        "autoPause": BOOL, "autoResume": {"type": "object", "properties": {"enabled": BOOL}},
        "allow_internet_access": BOOL, "network": _ref("NetworkConfig"), "metadata": STRMAP, "envVars": STRMAP,
        "secure": {"type": "boolean", "description": "ignored: every sandbox has an envd access token"}}},
    "Sandbox": {"type": "object", "required": ["templateID", "sandboxID", "clientID", "envdVersion"], "properties": {
        "templateID": STR, "sandboxID": STR, "clientID": STR, "alias": STR,
        "envdVersion": {"type": "string", "example": ENVD_VERSION}, "envdAccessToken": STR,
        "trafficAccessToken": {"type": "string", "nullable": True}, "domain": {"type": "string", "nullable": True}}},
    "ListedSandbox": {"type": "object", "required": [
        "templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB", "state",
        "envdVersion"], "properties": {
        "templateID": STR, "sandboxID": STR, "clientID": STR, "alias": STR, "startedAt": TIME, "endAt": TIME,
        "cpuCount": INT, "memoryMB": INT, "diskSizeMB": INT, "state": {"type": "string", "enum": ["running", "paused"]},
        "envdVersion": STR, "metadata": STRMAP}},
    "SandboxDetail": {"allOf": [_ref("ListedSandbox"), {"type": "object", "properties": {
        "domain": {"type": "string", "nullable": True}, "envdAccessToken": STR, "allowInternetAccess": BOOL,
        "network": _ref("NetworkConfig"),
        "lifecycle": {"type": "object", "properties": {
            "autoResume": BOOL, "onTimeout": {"type": "string", "enum": ["kill", "pause"]}}}}}]},
    "ConnectSandbox": {"type": "object", "properties": {"timeout": INT, "memory": BOOL}},
    "ResumedSandbox": {"type": "object", "properties": {"timeout": INT, "autoPause": BOOL}},
    "SandboxTimeoutRequest": {"type": "object", "required": ["timeout"], "properties": {"timeout": INT}},
    "SandboxRefreshRequest": {"type": "object", "properties": {"duration": {"type": "integer", "maximum": 3600}}},
    "SandboxPauseRequest": {"type": "object", "properties": {"memory": BOOL, "requireHealthyGuest": BOOL}},
    "SandboxNetworkUpdate": {"type": "object", "properties": {
        "allowOut": _arr(STR), "denyOut": _arr(STR), "allow_internet_access": BOOL}},
    "SandboxMetric": {"type": "object", "required": [
        "timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal", "memCache", "diskUsed",
        "diskTotal"], "properties": {
        "timestamp": TIME, "timestampUnix": INT, "cpuCount": INT, "cpuUsedPct": {"type": "number"}, "memUsed": INT,
        "memTotal": INT, "memCache": INT, "diskUsed": INT, "diskTotal": INT}},
    "SandboxesWithMetrics": {"type": "object", "properties": {
        "sandboxes": {"type": "object", "additionalProperties": _ref("SandboxMetric")}}},
    "SandboxLog": {"type": "object", "properties": {"timestamp": TIME, "line": STR}},
    "SandboxLogEntry": {"type": "object", "properties": {
        "timestamp": TIME, "message": STR, "level": {"type": "string", "enum": ["debug", "info", "warn", "error"]},
        "fields": STRMAP}},
    "SandboxLogs": {"type": "object", "properties": {"logs": _arr(_ref("SandboxLog")),
                                                     "logEntries": _arr(_ref("SandboxLogEntry"))}},
    "SandboxLogsV2": {"type": "object", "properties": {"logs": _arr(_ref("SandboxLogEntry"))}},
    "Template": {"type": "object", "properties": {
        "templateID": STR, "buildID": STR, "cpuCount": INT, "memoryMB": INT, "diskSizeMB": INT, "public": BOOL,
        "aliases": _arr(STR), "names": _arr(STR), "createdAt": TIME, "updatedAt": TIME,
        "createdBy": {"nullable": True}, "lastSpawnedAt": {"type": "string", "format": "date-time", "nullable": True},
        "spawnCount": INT, "buildCount": INT, "envdVersion": STR,
        "buildStatus": {"type": "string", "enum": ["building", "waiting", "ready", "error"]}}},
    "TemplateWithBuilds": {"allOf": [_ref("Template"), {"type": "object", "properties": {
        "builds": _arr({"type": "object"})}}]},
    "TemplateAliasResponse": {"type": "object", "properties": {"templateID": STR, "public": BOOL}},
    "NewTemplateBuild": {
        "type": "object", "required": ["image"],
        "description": "A template from a container image: the node pulls and unpacks it, builds the root filesystem "
                       "and a writable layer, boots it, waits for the probe and snapshots it. This is Cube's own API: "
                       "E2B's template-build API (v2/v3 builds from a Dockerfile or build steps with file uploads) "
                       "is not supported, and bodies with its keys (dockerfile, fromImage, steps, ...) are refused.",
        "properties": {
            "image": {"type": "string",
                      "description": "image reference: registry/repo:tag, repo@sha256:..., "
                                     "oci-archive:/path.tar, docker-archive:/path.tar, oci:/dir[:tag]"},
            "templateID": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                           "description": "default: a new id of 20 [a-z0-9]"},
            "aliases": {"type": "array", "items": STR, "description": "claimed when the build is ready"},
            "registryUsername": STR,
            "registryPassword": {"type": "string",
                                 "description": "handed to the node for this build only; never stored"},
            "insecureRegistry": {"type": "boolean", "description": "plain-HTTP registry"},
            "cpuCount": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
            "memoryMB": {"type": "integer", "minimum": 64},
            "writableLayerSize": {"oneOf": [STR, INT], "example": "1G",
                                  "description": "size of the sandbox's writable layer: \"512M\", \"1G\", ... or "
                                                 "an integer of MiB (default 1G)"},
            "exposePorts": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "description": "guest ports served at https://<port>-<sandboxID>.<domain>"},
            "probePort": {"type": "integer", "minimum": 1, "maximum": 65535,
                          "description": "the template is snapshotted once this port answers "
                                         "(default 49983, the agent)"},
            "probePath": {"type": "string", "description": "HTTP path to GET on the probe port; absent: a TCP connect"},
            "envVars": STRMAP,
            "cmd": {"type": "array", "items": STR, "description": "replaces the image's entrypoint"},
            "args": {"type": "array", "items": STR, "description": "replaces the image's cmd"},
            "noMemorySharing": {"type": "boolean", "description": "no copy-on-write memory sharing between sandboxes"},
            "nodeID": {"type": "string", "description": "build on this node (default: the least loaded)"}}},
    "TemplateBuildCreated": {"type": "object", "required": ["templateID", "buildID"],
                             "properties": {"templateID": STR, "buildID": STR}},
    "BuildLogEntry": {"type": "object", "required": ["timestamp", "level", "message"], "properties": {
        "timestamp": TIME, "level": {"type": "string", "enum": ["debug", "info", "warn", "error"]}, "message": STR,
        "step": STR}},
    "BuildProgress": {"type": "object", "properties": {
        "layersDone": INT, "layersTotal": INT, "bytesDone": INT, "bytesTotal": INT}},
    "TemplateBuildStatus": {"type": "object", "required": ["templateID", "buildID", "status", "logs", "logEntries"],
                            "properties": {
        "templateID": STR, "buildID": STR,
        "status": {"type": "string", "enum": ["waiting", "building", "ready", "error"]},
        "phase": {"type": "string", "enum": ["queued", "pulling", "unpacking", "building_image", "booting", "probing",
                                             "snapshotting", "ready", "failed"]},
        "message": STR, "progress": _ref("BuildProgress"), "nodeID": STR, "image": STR, "createdAt": TIME,
        "updatedAt": TIME, "finishedAt": {"type": "string", "format": "date-time", "nullable": True},
        "logs": _arr(STR), "logEntries": _arr(_ref("BuildLogEntry")),
        "reason": {"type": "object", "description": "set when status is error", "properties": {
            "message": {"type": "string", "description": "the reason, with the tail of the guest console and the "
                                                         "service's output where the node has them"},
            "step": {"type": "string", "description": "the phase the build failed in"},
            "logEntries": _arr(_ref("BuildLogEntry"))}}}},
}


def _errors(*codes: int) -> dict:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}} for c in codes}


def _ok(code: int, schema: dict | None = None, headers: dict | None = None) -> dict:
    r: dict = {"description": "success"}
    if schema is not None:
        r["content"] = {"application/json": {"schema": schema}}
    if headers:
        r["headers"] = headers
    return {str(code): r}


def _body(name: str, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


SID = {"name": "sandboxID", "in": "path", "required": True, "schema": STR}
TID = {"name": "templateID", "in": "path", "required": True, "schema": STR}


def _q(name: str, schema: dict, desc: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


LIST_PARAMS = [
    _q("metadata", STR, "k=v&k2=v2, each key and value percent-encoded, the whole encoded again"),
    _q("state", STR, "comma-separated: running, paused"),
    _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    _q("nextToken", STR), _q("order", {"type": "string", "enum": ["asc", "desc"]}),
    _q("startedAfter", TIME), _q("template", STR)]
NEXT = {"X-Next-Token": {"schema": STR, "description": "cursor of the next page; absent on the last"}}

# (method, path, summary, parameters, request body, responses)
OPERATIONS = [
    ("post", "/v2/sandboxes", "Create a sandbox", [], _body("NewSandbox"),
     {**_ok(201, _ref("Sandbox")), **_errors(400, 401, 404, 409, 429, 500, 503, 504)}),
    ("post", "/sandboxes", "Create a sandbox (v1, older SDKs)", [], _body("NewSandbox"),
     {**_ok(201, _ref("Sandbox")), **_errors(400, 401, 404, 409, 429, 500, 503, 504)}),
    ("get", "/v2/sandboxes", "List sandboxes (paged)", LIST_PARAMS, None,
     {**_ok(200, _arr(_ref("ListedSandbox")), NEXT), **_errors(400, 401, 500, 503)}),
    ("get", "/sandboxes", "List running sandboxes (v1, unpaged)", [LIST_PARAMS[0]], None,
     {**_ok(200, _arr(_ref("ListedSandbox"))), **_errors(400, 401, 500, 503)}),
    ("get", "/sandboxes/{sandboxID}", "Get a sandbox", [SID], None,
     {**_ok(200, _ref("SandboxDetail")), **_errors(401, 404, 500, 503)}),
    ("delete", "/sandboxes/{sandboxID}", "Kill a sandbox", [SID], None,
     {**_ok(204), **_errors(401, 404, 500, 503)}),
    ("post", "/v2/sandboxes/{sandboxID}/connect", "Connect: extend a running sandbox's end time or resume a paused one",
     [SID], _body("ConnectSandbox", False),
     {**_ok(200, _ref("Sandbox")), **_ok(201, _ref("Sandbox")), **_errors(400, 401, 404, 409, 429, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/connect", "Connect (v1 path)", [SID], _body("ConnectSandbox", False),
     {**_ok(200, _ref("Sandbox")), **_ok(201, _ref("Sandbox")), **_errors(400, 401, 404, 409, 429, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/resume", "Resume a paused sandbox (409 when running)", [SID],
     _body("ResumedSandbox", False), {**_ok(201, _ref("Sandbox")), **_errors(400, 401, 404, 409, 429, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/timeout", "Set the end time to now + timeout", [SID],
     _body("SandboxTimeoutRequest"), {**_ok(204), **_errors(400, 401, 404, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/refreshes", "Extend the end time (never shortens)", [SID],
     _body("SandboxRefreshRequest", False), {**_ok(204), **_errors(400, 401, 404, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/pause", "Pause a sandbox", [SID], _body("SandboxPauseRequest", False),
     {**_ok(204), **_errors(401, 404, 409, 500, 503)}),
    ("get", "/sandboxes/{sandboxID}/metrics", "Sandbox metrics", [SID, _q("start", INT, "unix seconds"),
                                                                    _q("end", INT, "unix seconds")], None,
     {**_ok(200, _arr(_ref("SandboxMetric"))), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/sandboxes/metrics", "Latest metrics of several sandboxes",
     [{"name": "sandbox_ids", "in": "query", "required": True, "schema": STR}], None,
     {**_ok(200, _ref("SandboxesWithMetrics")), **_errors(400, 401, 500, 503)}),
    ("get", "/sandboxes/{sandboxID}/logs", "Sandbox logs", [SID, _q("start", INT, "unix ms"), _q("limit", INT)], None,
     {**_ok(200, _ref("SandboxLogs")), **_errors(401, 404, 500, 503)}),
    ("get", "/v2/sandboxes/{sandboxID}/logs", "Sandbox logs (v2)",
     [SID, _q("cursor", INT, "unix ms"), _q("limit", INT),
      _q("direction", {"type": "string", "enum": ["forward", "backward"]})],
     None, {**_ok(200, _ref("SandboxLogsV2")), **_errors(401, 404, 500, 503)}),
    ("put", "/sandboxes/{sandboxID}/network", "Update the egress policy", [SID], _body("SandboxNetworkUpdate"),
     {**_ok(204), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/templates", "List templates", [], None, {**_ok(200, _arr(_ref("Template"))), **_errors(401, 500, 503)}),
    ("post", "/templates", "Build a template from a container image (Cube's API, not E2B's Dockerfile builds); "
                           "202 at once, then follow the build status; 403 when a non-admin key names a public "
                           "template", [], _body("NewTemplateBuild"),
     {**_ok(202, _ref("TemplateBuildCreated")), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("get", "/templates/{templateID}", "Get a template (id or alias); with its build while it is being built", [TID],
     None, {**_ok(200, _ref("TemplateWithBuilds")), **_errors(401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/builds/{buildID}/status", "Status, progress and logs of a template build",
     [TID, {"name": "buildID", "in": "path", "required": True, "schema": STR},
      _q("logsOffset", {"type": "integer", "minimum": 0}, "skip this many log entries")], None,
     {**_ok(200, _ref("TemplateBuildStatus")), **_errors(400, 401, 404, 500, 503)}),
    ("delete", "/templates/{templateID}", "Delete a template (409 naming the sandboxes that use it, unless force; "
                                          "409 while it is being built; 403 for a public template unless the key "
                                          "is an admin's)",
     [TID, _q("force", BOOL, "kill the sandboxes that use it first")], None,
     {**_ok(204), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("get", "/templates/aliases/{alias}", "Resolve a template alias",
     [{"name": "alias", "in": "path", "required": True, "schema": STR}], None,
     {**_ok(200, _ref("TemplateAliasResponse")), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/health", "Liveness of the API process (no auth)", [], None, _ok(200, {"type": "object"})),
    ("get", "/openapi.json", "This document (no auth)", [], None, _ok(200, {"type": "object"})),
]


def document(settings=None) -> dict:
    paths: dict = {}
    for method, path, summary, params, body, responses in OPERATIONS:
        op_id = method + path.replace("/", "_").replace("{", "").replace("}", "")
        op: dict = {"summary": summary, "operationId": op_id, "parameters": params, "responses": responses}
        if body is not None:
            op["requestBody"] = body
        if path not in ("/health", "/openapi.json"):
            op["security"] = [{"ApiKeyAuth": []}]
        paths.setdefault(path, {})[method] = op
    domain = getattr(settings, "domain", "cube.localhost")
    return {
        "openapi": "3.0.3",
        "info": {"title": "Cube API (E2B-compatible)", "version": "1.0.0",
                 "description": f"E2B control plane for self-hosted sandboxes; sandbox traffic goes to "
                                f"https://<port>-<sandboxID>.{domain}. Errors are {{code, message}}. Templates are "
                                f"built from container images with POST /templates (Cube's own body); E2B's "
                                f"template-build API (v2/v3: Dockerfile or build steps with file uploads) is out of "
                                f"scope."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}}},
    }
