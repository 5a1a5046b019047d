"""The OpenAPI 3.1 document of cube-api (served at /openapi.json).

Schemas follow E2B's spec for the parts the SDKs use; a test checks that every route the app
serves is described here, and nothing else, but the web console's page and assets (routes/console.py:
HTML for a browser, no data, not an API). The document states every constraint the server
enforces on a request and every status it answers with: tests/control/test_api_fuzz.py fuzzes the
API from it (schemathesis) and fails on a refusal or a status it does not state. 3.1 rather than
3.0 for its JSON Schema: `propertyNames` (environment variable names) and `null` types (the
server reads a null field as an absent one). What JSON Schema cannot state (byte totals over
several fields, sizes inside strings, fields that go together) is said in descriptions.
"""

from __future__ import annotations

from cube_common import host_mask, https_ports, volumes as volume_rules
from cube_common.envd import ENVD_PORT, ENVD_VERSION
from services.api.models import MAX_DNS_SERVERS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _arr(schema: dict) -> dict:
    return {"type": "array", "items": schema}


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
STRMAP = {"type": "object", "additionalProperties": STR}


def _null(schema: dict) -> dict:
    """``schema`` or null: the server reads a null field as an absent one."""
    t = schema.get("type")
    if isinstance(t, str):
        return {**schema, "type": [t, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _unsupported(what: str) -> dict:
    # Exactly the values Python calls false: the server refuses the key when it is truthy.
    return {"enum": [None, False, 0, "", [], {}],
            "description": f"{what}: not supported by this server; refused (400) unless absent or empty"}


def _refused(what: str) -> dict:
    return {"not": {}, "description": f"{what}: refused (400) whatever its value"}


# Limits the master enforces with its default settings (services/master/settings.py: max_timeout_s,
# max_metadata_entries, max_metadata_bytes, max_env_bytes); an operator may change them there.
MAX_TIMEOUT_S = 86400
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 8192
MAX_ENV_BYTES = 65536
# Template ids and aliases as the master accepts them (services/master/templates.py, builds.py).
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
BUILD_TEMPLATE_ID_PATTERN = "^([A-Za-z0-9][A-Za-z0-9_-]{0,63})?$"
# Template tags as the master accepts them (services/master/tags.py): case-insensitive, never a
# UUID (E2B reads `name:<uuid>` as a build id), `default` neither assigned nor removed.
TAG_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_UUID_TAG = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
MAX_TAGS = 100
ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
# The last second a timestamp holds (9999-12-31T23:59:59Z).
MAX_UNIX_S = 253402300799
# Python's whitespace (str.isspace, what the server strips and refuses), spelled out so every
# regex dialect reading this document agrees on it.
WS = "[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
NOT_WS = WS.replace("[", "[^", 1)
# The list filter `metadata` (E2B's parseFilters): once percent-decoded, '&'-separated pairs, each
# with a non-empty key before its first '='; `&` and `=` may arrive percent-encoded.
_META_KEY = "(?:[^&=%]|%(?!26|3[dD]))+"
_META_VALUE = "(?:[^&%]|%(?!26))*"
_META_PAIR = f"{_META_KEY}(?:=|%3[dD]){_META_VALUE}"
METADATA_FILTER_PATTERN = f"^(?:{_META_PAIR})?(?:(?:&|%26)(?:{_META_PAIR})?)*$"

# Volumes (cube_common/volumes.py): names, and paths within a volume or the guest.
VOLUME_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
VOLUME_PATH = {"type": "string", "minLength": 1, "maxLength": volume_rules.MAX_PATH, "pattern": "^[^\\x00\\n\\r]*$",
               "allOf": [{"not": {"pattern": "(^|/)\\.\\.(/|$)"}}, {"not": {"pattern": "[^/]{256}"}}],
               "description": "absolute (a missing leading '/' is added), no '..' component, no NUL, newline or "
                              "carriage return, no component over 255 bytes (UTF-8); '.' and repeated slashes "
                              "are dropped"}
MAX_VOLUME_MOUNTS = 2
VOLUME_RESERVED = "/proc, /sys, /dev, /run, /tmp, /boot"

OPT_BOOL = _null(BOOL)
TAG = {"type": "string", "pattern": TAG_PATTERN, "not": {"pattern": f"^({_UUID_TAG})$"},
       "description": "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; case-insensitive "
                      "(stored lower-case); not a UUID"}
TAGS = {"type": "array", "minItems": 1, "maxItems": MAX_TAGS,
        "items": {**TAG, "not": {"pattern": f"^({_UUID_TAG}|[dD][eE][fF][aA][uU][lL][tT])$"},
                  "description": f"{TAG['description']}; not `default`, which always names the latest build"},
        "description": f"repeats count once; a template has at most {MAX_TAGS} tags besides `default` (409 beyond)"}
TAG_ASSIGNMENT = {"type": "object", "required": ["assignmentId", "buildId", "assignedAt", "buildCreatedAt",
                                                  "buildFinishedAt"], "properties": {
    "assignmentId": {"type": "string", "format": "uuid"}, "buildId": {"type": "string", "format": "uuid"},
    "assignedAt": TIME, "buildCreatedAt": TIME, "buildFinishedAt": {"type": ["string", "null"], "format": "date-time"}}}
TIMEOUT = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_TIMEOUT_S,
           "description": "seconds from now; 0 or absent: 300"}
ADDRESSES = _null({"type": "array", "items": {
    "type": "string", "description": "an IPv4 or IPv6 address or CIDR block: the node refuses domain names and "
                                     "anything else, and more than 128 entries (400)"}})
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = f"^{_OCTET}(?:\\.{_OCTET}){{3}}$"  # what ipaddress.IPv4Address accepts: no leading zeros
NETWORK_OPTIONS = {
    "allowOut": ADDRESSES, "denyOut": ADDRESSES,
    "allowPublicTraffic": {**OPT_BOOL, "description": "false: the create answers a trafficAccessToken, which "
                                                     "requests to the sandbox's ports (all but envd's) must carry "
                                                     "in e2b-traffic-access-token"},
    "egressProxy": {"type": "null", "description": "not supported by this server: refused (400) unless null"},
    "maskRequestHost": {
        "type": ["string", "null"], "maxLength": host_mask.MAX_LEN, "pattern": host_mask.PATTERN,
        "examples": ["localhost:${PORT}"],
        "description": "the Host header requests to the sandbox's ports (all but envd's) reach it with, ${PORT} "
                       "replaced by the port the request targets; the client's Host goes in X-Forwarded-Host. A "
                       "host name (IPv6 literals are not accepted) with an optional :port. Empty: none. Set at "
                       "create only"},
    "httpsPorts": _null({"type": "array", "maxItems": https_ports.MAX_PORTS, "items": {
        "type": "integer", "minimum": 1, "maximum": 65535, "not": {"const": ENVD_PORT}},
        "description": "guest ports whose servers speak HTTPS themselves: the proxy reaches them over TLS without "
                       "checking their certificate (the client's URL is HTTPS either way). Not envd's port. Set at "
                       "create only"}),
    "dnsServers": _null({"type": "array", "maxItems": MAX_DNS_SERVERS, "items": {"type": "string", "pattern": _IPV4},
                         "description": "checked (IPv4, at most 10) and not kept: on E2B the resolvers a sandbox "
                                        "may reach when allowOut names a domain, which this server refuses"}),
    "rules": {"type": ["object", "null"], "maxProperties": 0,
              "description": "per-domain transforms of outbound HTTPS requests: not supported by this server, "
                             "refused (400) unless empty"}}
METADATA = {"type": ["object", "null"], "additionalProperties": STR, "maxProperties": MAX_METADATA_ENTRIES,
            "propertyNames": {"minLength": 1},
            "description": f"at most {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes of keys and "
                           f"values (UTF-8)"}
ENV_VARS = {"type": ["object", "null"], "additionalProperties": STR, "propertyNames": {"pattern": ENV_NAME_PATTERN},
            "description": f"at most {MAX_ENV_BYTES} bytes of names and values (UTF-8)"}

SCHEMAS = {
    "Error": {"type": "object", "required": ["code", "message"],
              "properties": {"code": INT, "message": STR}},
    "NetworkConfig": {"type": "object", "properties": NETWORK_OPTIONS},
    "NewSandbox": {"type": "object", "required": ["templateID"], "properties": {
        "templateID": {"type": "string", "minLength": 1, "description": "a template id or alias"},
        "timeout": TIMEOUT, "autoPause": OPT_BOOL,
        "autoResume": {"type": ["object", "null"], "properties": {"enabled": BOOL}},
        "allow_internet_access": OPT_BOOL, "network": _null(_ref("NetworkConfig")), "metadata": METADATA,
        "envVars": ENV_VARS,
        "secure": {**OPT_BOOL, "description": "ignored: every sandbox has an envd access token"},
        "mcp": _unsupported("MCP gateways"),
        "volumeMounts": _null({"type": "array", "maxItems": MAX_VOLUME_MOUNTS, "items": _ref("SandboxVolumeMount"),
                               "description": "the team's volumes (by name or id) to mount read-write; each volume "
                                              "once, at paths that do not overlap; 404 for an unknown volume, 409 "
                                              "for one another sandbox mounts"}),
        "iam": _unsupported("IAM tokens")}},
    "SandboxVolumeMount": {"type": "object", "required": ["name", "path"], "properties": {
        "name": {"type": "string", "pattern": VOLUME_NAME_PATTERN, "description": "a volume name or id"},
        "path": {**VOLUME_PATH, "description": f"where the guest sees it: {VOLUME_PATH['description']}; not / and "
                                               f"not in {VOLUME_RESERVED}"}}},
    "Sandbox": {"type": "object", "required": ["templateID", "sandboxID", "clientID", "envdVersion"], "properties": {
        "templateID": STR, "sandboxID": STR, "clientID": STR, "alias": STR,
        "envdVersion": {"type": "string", "examples": [ENVD_VERSION]}, "envdAccessToken": STR,
        "trafficAccessToken": {"type": ["string", "null"]}, "domain": {"type": ["string", "null"]}}},
    "ListedSandbox": {"type": "object", "required": [
        "templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB", "state",
        "envdVersion"], "properties": {
        "templateID": STR, "sandboxID": STR, "clientID": STR, "alias": STR, "startedAt": TIME, "endAt": TIME,
        "cpuCount": INT, "memoryMB": INT, "diskSizeMB": INT, "state": {"type": "string", "enum": ["running", "paused"]},
        "envdVersion": STR, "metadata": STRMAP, "volumeMounts": _arr(_ref("SandboxVolumeMount")),
        "nodeID": {"type": "string", "description": "not E2B's: the node it runs on, or that keeps its paused state"},
        # Not E2B's: present only while the sandbox's node is lost (state says running, as E2B knows
        # no other); it is back when its node comes back, or deleted after the retention.
        "lost": {"type": "boolean", "description": "its node is lost: unreachable, no traffic reaches it"},
        "lostAt": TIME, "lostReason": {"type": "string", "description": "which node, and how it was lost"}}},
    "SandboxDetail": {"allOf": [_ref("ListedSandbox"), {"type": "object", "properties": {
        "domain": {"type": ["string", "null"]}, "envdAccessToken": STR, "allowInternetAccess": BOOL,
        "network": _ref("NetworkConfig"),
        "lifecycle": {"type": "object", "properties": {
            "autoResume": BOOL, "onTimeout": {"type": "string", "enum": ["kill", "pause"]}}}}}]},
    "ConnectSandbox": {"type": "object", "properties": {
        "timeout": TIMEOUT, "memory": {**OPT_BOOL, "description": "ignored: a resume restores memory"}}},
    "ResumedSandbox": {"type": "object", "properties": {
        "timeout": TIMEOUT,
        "autoPause": {**OPT_BOOL, "description": "ignored: the sandbox keeps the lifecycle it was created with"}}},
    "SandboxTimeoutRequest": {"type": "object", "required": ["timeout"], "properties": {
        "timeout": {"type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_S, "description": "seconds from now"}}},
    "SandboxRefreshRequest": {"type": "object", "properties": {
        "duration": {"type": ["integer", "null"], "minimum": 0, "maximum": 3600,
                     "description": "seconds; absent: 60"}}},
    "SandboxPauseRequest": {"type": "object", "properties": {
        "memory": {**OPT_BOOL, "description": "ignored: a pause always keeps memory"},
        "requireHealthyGuest": {**OPT_BOOL, "description": "ignored"}}},
    "SandboxSnapshotRequest": {"type": "object", "properties": {
        "name": {**_null({"type": "string", "pattern": NAME_PATTERN}),
                 "description": "an alias of the snapshot in the caller's team (moved from an older snapshot of "
                                "the team that had it)"},
        "memory": {"enum": [None, True], "description": "only full snapshots (memory and filesystem): false is "
                                                        "refused (400)"}}},
    "SandboxForkRequest": {"type": "object", "properties": {
        "count": _null({"type": "integer", "minimum": 1, "maximum": 20}),
        "timeout": _null({"type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_S})}},
    "SandboxForkResult": {"type": "object", "properties": {
        "sandbox": _ref("Sandbox"), "error": _ref("Error")}},
    "SnapshotInfo": {"type": "object", "required": ["snapshotID", "names"], "properties": {
        "snapshotID": STR, "names": _arr(STR)}},
    "SandboxNetworkUpdate": {"type": "object", "properties": {
        **NETWORK_OPTIONS, "allow_internet_access": OPT_BOOL,
        "maskRequestHost": _refused("maskRequestHost (set at create)"),
        "httpsPorts": _refused("httpsPorts (set at create)")}},
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
        "createdBy": {"type": ["object", "null"]}, "lastSpawnedAt": {"type": ["string", "null"], "format": "date-time"},
        "spawnCount": INT, "buildCount": INT, "envdVersion": STR,
        "buildStatus": {"type": "string", "enum": ["building", "waiting", "ready", "error"]}}},
    "TemplateWithBuilds": {"allOf": [_ref("Template"), {"type": "object", "properties": {
        "builds": _arr({"type": "object"})}}]},
    "TemplateAliasResponse": {"type": "object", "properties": {"templateID": STR, "public": BOOL}},
    "AssignTemplateTagsRequest": {"type": "object", "required": ["target", "tags"], "properties": {
        "target": {"type": "string", "pattern": NAME_PATTERN,
                   "description": "the build to tag: `name` (or `name:default`), the template's current build, or "
                                  "`name:tag`, the build that tag names (404 when a rebuild replaced it)"},
        "tags": TAGS}},
    "AssignedTemplateTags": {"type": "object", "required": ["tags", "buildID"], "properties": {
        "tags": _arr(STR), "buildID": {"type": "string", "format": "uuid"}}},
    "DeleteTemplateTagsRequest": {"type": "object", "required": ["name", "tags"], "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN,
                 "description": "the template's id or alias, without a tag (400 with one)"},
        "tags": {**TAGS, "description": "tags the template does not have are no error"}}},
    "TemplateTag": {"type": "object", "required": ["tag", "buildID", "createdAt"], "properties": {
        "tag": STR, "buildID": {"type": "string", "format": "uuid"},
        "createdAt": {**TIME, "description": "when the tag was assigned"}}},
    "TemplateTagsCount": {"type": "object", "required": ["total"], "properties": {
        "total": {**INT, "description": "tags naming the template's current build, `default` included"}}},
    "TemplateTagExists": {"type": "object", "required": ["exists", "normalizedTag"], "properties": {
        "exists": BOOL, "normalizedTag": STR}},
    "TemplateTagAssignment": TAG_ASSIGNMENT,
    "TemplateTagGroups": {"type": "object", "required": ["tags", "nextCursor"], "properties": {
        "tags": _arr({"type": "object", "required": ["tag", "assignments", "hasMore"], "properties": {
            "tag": STR, "assignments": _arr(_ref("TemplateTagAssignment")), "hasMore": BOOL}}),
        "nextCursor": {"type": ["string", "null"]}}},
    "TemplateTagAssignments": {"type": "object", "required": ["data", "nextCursor"], "properties": {
        "data": _arr(_ref("TemplateTagAssignment")), "nextCursor": {"type": ["string", "null"]}}},
    "NewTemplateBuild": {
        "type": "object", "required": ["image"],
        "description": "A template from a container image: the node pulls and unpacks it, builds the root filesystem "
                       "and a writable layer, boots it, waits for the probe and snapshots it. This is Cube's own API; "
                       "E2B's template definitions (the SDK's Template.build: steps, file uploads) go to "
                       "POST /v3/templates and POST /v2/templates/{templateID}/builds/{buildID}, and bodies with "
                       "their keys (dockerfile, fromImage, steps, ...) are refused here.",
        "properties": {
            "image": {"type": "string", "pattern": f"^{WS}*{NOT_WS}{{1,1024}}{WS}*$",
                      "description": "registry image reference: registry/repo:tag or repo@sha256:... "
                                     "(local paths are for operators: cubemastercli); a registry on a "
                                     "loopback, private or link-local address needs the node's "
                                     "registry_allowlist"},
            "templateID": {"type": ["string", "null"], "pattern": BUILD_TEMPLATE_ID_PATTERN,
                           "description": "default (absent or empty): a new id of 20 [a-z0-9]"},
            "aliases": _null({"type": "array", "uniqueItems": True,
                              "items": {"type": "string", "pattern": NAME_PATTERN},
                              "description": "claimed when the build is ready; none may be the template id"}),
            "registryUsername": {"type": ["string", "null"],
                                 "description": "given with registryPassword, or neither (400)"},
            "registryPassword": {"type": ["string", "null"],
                                 "description": "handed to the node for this build only; never stored"},
            "insecureRegistry": {**OPT_BOOL, "description": "plain-HTTP registry"},
            "cpuCount": {"type": ["integer", "null"], "minimum": 1, "maximum": 64, "default": 1},
            "memoryMB": {"type": ["integer", "null"], "minimum": 64, "maximum": 1 << 20},
            "writableLayerSize": {
                "anyOf": [{"type": "string", "pattern": (
                    f"^{WS}*[0-9]+(\\.[0-9]+)?{WS}*[KMGTkmgt]?([iI]?[bB])?{WS}*$")},
                    {"type": "integer", "minimum": 1, "maximum": 1 << 22}, {"type": "null"}],
                "examples": ["1G"],
                "description": "size of the sandbox's writable layer: \"512M\", \"1G\", ... (binary units) or an "
                               "integer of MiB; more than 0 and at most 4T (400); default 1G"},
            "exposePorts": _null({"type": "array", "maxItems": 64, "uniqueItems": True,
                                  "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                                  "description": "guest ports served at https://<port>-<sandboxID>.<domain>"}),
            "probePort": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535,
                          "description": "the template is snapshotted once this port answers "
                                         "(default 49983, the agent)"},
            "probePath": {"type": ["string", "null"], "pattern": f"^(/{NOT_WS}*)?$",
                          "description": "HTTP path to GET on the probe port; absent: a TCP connect"},
            "envVars": ENV_VARS,
            "cmd": _null({"type": "array", "items": STR, "maxItems": 256,
                          "description": "replaces the image's entrypoint; with args at most 256 strings and "
                                         "65536 bytes (400)"}),
            "args": _null({"type": "array", "items": STR, "maxItems": 256, "description": "replaces the image's cmd"}),
            "noMemorySharing": {**OPT_BOOL, "description": "no copy-on-write memory sharing between sandboxes"},
            "nodeID": {"type": ["string", "null"], "description": "build on this node (default: the least loaded)"},
            **{k: _refused(f"{k}: E2B's template-build API")
               for k in ("dockerfile", "fromImage", "fromTemplate", "steps", "startCmd", "readyCmd")}}},
    "TemplateBuildFileUpload": {"type": "object", "required": ["present", "url"], "properties": {
        "present": {"type": "boolean", "description": "the team already has the archive of this hash: no upload "
                                                      "needed"},
        "url": {"type": "string", "description": "where to PUT the archive (tar, gzip or not): this API as the "
                                                 "request reached it, with a signature valid for an hour"},
        "headers": STRMAP}},
    "TemplateBuildRequestV3": {
        "type": "object", "required": ["name"],
        "description": "Reserve a template of the caller's team under a name (E2B's Template.build, first call); a "
                       "name the team uses moves to the new template once its build is ready. cpuCount and "
                       "memoryMB are capped by the operator's maximums too (400 naming them)",
        "properties": {"name": {"type": "string",
                                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
                                "description": "name or name:tag (lower-cased)"},
                       "alias": {"type": "string", "description": "older SDKs' name for it"},
                       "tags": _null(_arr({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                           "description": "more tags for this build; 'default' always names "
                                                          "the latest build"})),
                       "cpuCount": {"type": ["integer", "null"], "minimum": 1, "maximum": 64},
                       "memoryMB": {"type": ["integer", "null"], "minimum": 128, "maximum": 1 << 20},
                       "minFreeDiskMb": {"type": ["integer", "null"], "minimum": 0, "maximum": 1 << 22,
                                         "description": "accepted, not applied: the writable layer is the "
                                                        "template's size"},
                       "teamID": {"type": "string", "description": "ignored: the API key names the team"}}},
    "TemplateRequestResponseV3": {
        "type": "object", "required": ["templateID", "buildID", "public", "names", "tags", "aliases"],
        "properties": {"templateID": STR, "buildID": STR, "public": BOOL, "names": _arr(STR), "tags": _arr(STR),
                       "aliases": _arr(STR)}},
    "TemplateStep": {
        "type": "object", "required": ["type"],
        "description": "args by type, as the SDK sends them: RUN [command, user?], COPY [src, dest, user?, mode?] "
                       "with filesHash, ENV [name, value, ...], WORKDIR [path], USER [name]; 400 naming the step "
                       "otherwise",
        "properties": {"type": {"type": "string", "enum": ["RUN", "COPY", "ENV", "WORKDIR", "USER"]},
                       "args": _arr(STR), "filesHash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                       "force": BOOL}},
    "TemplateBuildStartV2": {
        "type": "object", "description": "A template definition (E2B's Template.build, last call): its base, "
                                         "steps run in order in a build VM (each step's result cached by its "
                                         "inputs), the start command (running in the snapshot) and the ready "
                                         "command (polled until it exits 0 before the snapshot). Exactly one "
                                         "of fromImage and fromTemplate (400 otherwise)",
        "properties": {"fromImage": STR, "fromTemplate": STR,
                       "fromImageRegistry": {"type": "object", "properties": {
                           "type": {"type": "string", "enum": ["registry"]}, "username": STR, "password": STR}},
                       "force": BOOL, "steps": {"type": "array", "maxItems": 256, "items": _ref("TemplateStep")},
                       "startCmd": STR, "readyCmd": STR}},
    "TemplateBuildCreated": {"type": "object", "required": ["templateID", "buildID"],
                             "properties": {"templateID": STR, "buildID": STR}},
    "Node": {"type": "object", "required": ["nodeID", "state", "cpuCount", "memoryTotalBytes", "memoryAvailableBytes",
                                            "sandboxesRunning", "sandboxesPaused"], "properties": {
        "nodeID": STR,
        "state": {"type": "string", "enum": ["ready", "draining", "lost", "unknown"],
                  "description": "lost: its registration lapsed; its figures are the last it reported, or none"},
        "draining": BOOL, "drainReason": STR, "accel": {"type": "string", "description": "kvm or tcg"},
        "cpuCount": INT, "memoryTotalBytes": INT, "memoryAvailableBytes": INT, "diskFreeBytes": INT,
        "diskWatermarkBytes": {"type": "integer", "description": "below this much free disk it takes no new sandboxes"},
        "maxSandboxes": {"type": "integer", "description": "the operator's cap; 0: none"},
        "canTake": {"type": ["integer", "null"], "description": "more sandboxes the node can take now, from "
                    "its measured memory and CPU headroom and its cap; null from a node that does not say"},
        "sandboxMemoryEstimateBytes": {"type": "integer", "description": "what one more sandbox is taken "
                                       "to cost in host memory"},
        "sandboxesRunning": INT, "sandboxesPaused": INT, "sandboxesLost": INT,
        "templates": {**_arr(STR), "description": "template ids with a ready snapshot on the node"},
        "heartbeatAt": {"type": ["string", "null"], "format": "date-time"}}},
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
        "updatedAt": TIME, "finishedAt": {"type": ["string", "null"], "format": "date-time"},
        "logs": _arr(STR), "logEntries": _arr(_ref("BuildLogEntry")),
        "reason": {"type": "object", "description": "set when status is error", "properties": {
            "message": {"type": "string", "description": "the reason, with the tail of the guest console and the "
                                                         "service's output where the node has them"},
            "step": {"type": "string", "description": "the phase the build failed in"},
            "logEntries": _arr(_ref("BuildLogEntry"))}}}},
    "NewVolume": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": VOLUME_NAME_PATTERN, "description": "unique within the team"}}},
    "VolumeAndToken": {"type": "object", "required": ["volumeID", "name", "token", "domain"], "properties": {
        "volumeID": STR, "name": STR,
        "token": {"type": "string", "description": "the bearer token of the volume's content calls"},
        "domain": {"type": "string", "description": "the SDK sends content calls to https://api.<domain>"}}},
    "Volume": {"type": "object", "required": ["volumeID", "name"], "properties": {"volumeID": STR, "name": STR}},
    "VolumeEntryStat": {"type": "object", "required": [
        "name", "type", "path", "size", "mode", "uid", "gid", "atime", "mtime", "ctime"], "properties": {
        "name": STR, "type": {"type": "string", "enum": ["file", "directory", "symlink", "unknown"]},
        "path": STR, "size": {"type": "integer", "minimum": 0},
        "mode": {"type": "integer", "minimum": 0, "maximum": 0o7777, "description": "permission bits"},
        "uid": {"type": "integer", "minimum": 0}, "gid": {"type": "integer", "minimum": 0},
        "atime": TIME, "mtime": TIME, "ctime": TIME,
        "target": {"type": "string", "description": "a symlink's target"}}},
    "VolumeMetadataUpdate": {"type": "object", "properties": {
        "uid": _null({"type": "integer", "minimum": 0, "maximum": 2**32 - 2}),
        "gid": _null({"type": "integer", "minimum": 0, "maximum": 2**32 - 2}),
        "mode": _null({"type": "integer", "minimum": 0, "maximum": 0o7777, "description": "permission bits"})}},
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


# An empty path segment would name another route.
SEGMENT = {"type": "string", "minLength": 1}
SID = {"name": "sandboxID", "in": "path", "required": True, "schema": SEGMENT}
TID = {"name": "templateID", "in": "path", "required": True, "schema": SEGMENT}


def _q(name: str, schema: dict, desc: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


# Build files (services/api/build_files.py): the SDK's sha256 of a COPY step, and a team's directory.
FILES_HASH_PATTERN = "^[0-9a-f]{64}$"
TEAM_DIR_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
FILES_HASH = {"name": "hash", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": FILES_HASH_PATTERN}}
# Paths no API key opens: their URL's signature does (they call no master either).
SIGNED_PATHS = {"/build-files/{team}/{hash}"}


# Volume content calls (routes/volumes.py): their bearer token opens them, not an API key.
CONTENT_PREFIX = "/volumecontent/"
VID = {"name": "volumeID", "in": "path", "required": True, "schema": SEGMENT}
VPATH = {**_q("path", VOLUME_PATH, "the entry's path within the volume"), "required": True}
OWNER_ID = {"type": "integer", "minimum": 0, "maximum": 2**32 - 2}
OWNER_PARAMS = [_q("uid", OWNER_ID), _q("gid", OWNER_ID),
                _q("mode", {"type": "integer", "minimum": 0, "maximum": 0o7777}, "permission bits")]
FORCE = _q("force", BOOL)
CONTENT_ERRORS = (400, 401, 404, 409, 429, 500, 503)
UNIX_S = {"type": "integer", "minimum": 0, "maximum": MAX_UNIX_S}
UNIX_MS = {"type": "integer", "minimum": 0, "maximum": MAX_UNIX_S * 1000 + 999}
LOG_LIMIT = _q("limit", {"type": "integer", "minimum": 0, "maximum": 10000}, "0 or absent: 1000")
LIST_PARAMS = [
    _q("metadata", {"type": "string", "pattern": METADATA_FILTER_PATTERN},
       "k=v&k2=v2, each key and value percent-encoded, the whole encoded again; every pair needs a key"),
    {**_q("state", {"type": "array", "items": {"type": "string", "enum": ["running", "paused"]}},
          "running, paused or both (comma-joined); absent: both"), "style": "form", "explode": False},
    _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    _q("nextToken", STR, "the X-Next-Token of the previous page, as it came; any other value is refused (400)"),
    _q("order", {"type": "string", "enum": ["asc", "desc"]}),
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
     {**_ok(204), **_errors(400, 401, 404, 409, 429, 500, 503)}),
    ("get", "/sandboxes/{sandboxID}/metrics", "Sandbox metrics", [SID, _q("start", UNIX_S, "unix seconds"),
                                                                    _q("end", UNIX_S, "unix seconds")], None,
     {**_ok(200, _arr(_ref("SandboxMetric"))), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/sandboxes/metrics", "Latest metrics of several sandboxes",
     [{"name": "sandbox_ids", "in": "query", "required": True, "description": "1 to 100 comma-separated ids",
       "schema": {"type": "string", "pattern": "^,*[^,]+(,+[^,]+){0,99},*$"}}], None,
     {**_ok(200, _ref("SandboxesWithMetrics")), **_errors(400, 401, 500, 503)}),
    ("get", "/sandboxes/{sandboxID}/logs", "Sandbox logs", [SID, _q("start", UNIX_MS, "unix ms"), LOG_LIMIT], None,
     {**_ok(200, _ref("SandboxLogs")), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/v2/sandboxes/{sandboxID}/logs", "Sandbox logs (v2)",
     [SID, _q("cursor", UNIX_MS, "unix ms"), LOG_LIMIT,
      _q("direction", {"type": "string", "enum": ["forward", "backward"]})],
     None, {**_ok(200, _ref("SandboxLogsV2")), **_errors(400, 401, 404, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/snapshots", "Snapshot a running sandbox (it runs on); the snapshot is a "
                                                 "template sandboxes are created from", [SID],
     _body("SandboxSnapshotRequest", False),
     {**_ok(201, _ref("SnapshotInfo")), **_errors(400, 401, 404, 409, 500, 503)}),
    ("post", "/sandboxes/{sandboxID}/fork", "Fork a running sandbox: count new sandboxes from one snapshot of it "
                                            "(it runs on); one result per fork, a sandbox or its error", [SID],
     _body("SandboxForkRequest", False),
     {**_ok(201, _arr(_ref("SandboxForkResult"))), **_errors(400, 401, 404, 409, 500, 503)}),
    ("get", "/snapshots", "List the team's snapshots, newest first (paged)",
     [_q("sandboxID", STR, "only the snapshots of this sandbox"), _q("name", STR, "only the snapshot of this name"),
      _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
      _q("nextToken", STR, "the X-Next-Token of the previous page, as it came; any other value is refused (400)")],
     None, {**_ok(200, _arr(_ref("SnapshotInfo")), NEXT), **_errors(400, 401, 500, 503)}),
    ("put", "/sandboxes/{sandboxID}/network", "Update the egress policy", [SID], _body("SandboxNetworkUpdate"),
     {**_ok(204), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/templates", "List templates", [], None, {**_ok(200, _arr(_ref("Template"))), **_errors(401, 500, 503)}),
    ("post", "/templates", "Build a template from a container image (Cube's API, not E2B's Dockerfile builds); "
                           "202 at once, then follow the build status; 403 when a non-admin key names a public "
                           "template", [], _body("NewTemplateBuild"),
     {**_ok(202, _ref("TemplateBuildCreated")), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("post", "/v3/templates", "Reserve a template and a build for a template definition (E2B's Template.build); "
                              "the build waits for its definition", [], _body("TemplateBuildRequestV3"),
     {**_ok(202, _ref("TemplateRequestResponseV3")), **_errors(400, 401, 409, 500, 503)}),
    ("post", "/v2/templates/{templateID}/builds/{buildID}", "Start a reserved build with its definition; follow it "
                                                            "with the build status",
     [TID, {"name": "buildID", "in": "path", "required": True, "schema": SEGMENT}], _body("TemplateBuildStartV2"),
     {**_ok(202), **_errors(400, 401, 404, 409, 500, 503)}),
    ("get", "/templates/{templateID}", "Get a template (id or alias); with its build while it is being built", [TID],
     None, {**_ok(200, _ref("TemplateWithBuilds")), **_errors(401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/builds/{buildID}/status", "Status, progress and logs of a template build",
     [TID, {"name": "buildID", "in": "path", "required": True, "schema": SEGMENT},
      _q("logsOffset", {"type": "integer", "minimum": 0, "maximum": 1 << 31}, "skip this many log entries")], None,
     {**_ok(200, _ref("TemplateBuildStatus")), **_errors(400, 401, 404, 500, 503)}),
    ("delete", "/templates/{templateID}", "Delete a template (409 naming the sandboxes that use it, unless force; "
                                          "409 while it is being built; 403 for a public template unless the key "
                                          "is an admin's)",
     [TID, _q("force", BOOL, "kill the sandboxes that use it first")], None,
     {**_ok(204), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("get", "/templates/aliases/{alias}", "Resolve a template alias",
     [{"name": "alias", "in": "path", "required": True, "schema": SEGMENT}], None,
     {**_ok(200, _ref("TemplateAliasResponse")), **_errors(400, 401, 404, 500, 503)}),
    ("post", "/templates/tags", "Assign tags to the build a name or `name:tag` names (E2B's template tags); 403 "
                                "for a public template unless the key is an admin's; 409 while it is being built",
     [], _body("AssignTemplateTagsRequest"),
     {**_ok(201, _ref("AssignedTemplateTags")), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("delete", "/templates/tags", "Remove tags from a template (`default` stays)", [],
     _body("DeleteTemplateTagsRequest"), {**_ok(204), **_errors(400, 401, 403, 404, 409, 500, 503)}),
    ("get", "/templates/{templateID}/tags", "A template's tags, `default` (its latest build) first; a tag whose "
                                            "build a rebuild replaced is listed with that build", [TID], None,
     {**_ok(200, _arr(_ref("TemplateTag"))), **_errors(401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/tags/count", "How many of a template's tags name its current build", [TID],
     None, {**_ok(200, _ref("TemplateTagsCount")), **_errors(401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/tags/exists", "Whether a tag names the template's current build",
     [TID, {"name": "tag", "in": "query", "required": True, "schema": TAG}], None,
     {**_ok(200, _ref("TemplateTagExists")), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/tags/groups", "A template's tags naming its current build, each with its "
                                                   "assignment (paged)",
     [TID, _q("assignmentLimit", {"type": "integer", "minimum": 1, "maximum": 25}, "absent: 6"),
      _q("tagsLimit", {"type": "integer", "minimum": 1, "maximum": 100}, "absent: 25"),
      _q("tagsCursor", STR, "the nextCursor of the previous page (with the same sort), as it came; any other "
                            "value is refused (400)"),
      _q("search", {"type": "string", "pattern": "^[A-Za-z0-9._-]{0,64}$"}, "only tags containing it"),
      _q("sort", {"type": "string", "enum": ["latest_desc", "latest_asc", "name_asc", "name_desc"]},
         "absent: latest_desc")], None,
     {**_ok(200, _ref("TemplateTagGroups")), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/tags/{tag}/assignments", "A tag's assignment, while it names the template's "
                                                             "current build (Cube keeps one build)",
     [TID, {"name": "tag", "in": "path", "required": True, "schema": TAG},
      _q("cursor", STR, "the nextCursor of the previous page, as it came; any other value is refused (400)"),
      _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "absent: 50")], None,
     {**_ok(200, _ref("TemplateTagAssignments")), **_errors(400, 401, 404, 500, 503)}),
    ("get", "/templates/{templateID}/files/{hash}", "Whether the team has a template build file (a COPY step's "
                                                    "archive, by the SDK's files hash) and a signed URL to upload "
                                                    "it to (E2B's file upload link)",
     [TID, FILES_HASH], None, {**_ok(201, _ref("TemplateBuildFileUpload")), **_errors(400, 401, 404, 500, 503)}),
    ("put", "/build-files/{team}/{hash}", "Upload a template build file to the URL the file upload link gave "
                                          "(no API key: its signature authorises it; 403 when it is wrong or "
                                          "expired)",
     [{"name": "team", "in": "path", "required": True, "schema": {"type": "string", "pattern": TEAM_DIR_PATTERN}},
      FILES_HASH, {**_q("template", SEGMENT, "the template the link was made for"), "required": True},
      {**_q("expires", {"type": "string", "pattern": "^[0-9]{1,12}$"}, "unix seconds"), "required": True},
      {**_q("sig", {"type": "string", "pattern": FILES_HASH_PATTERN}, "HMAC-SHA256, hex"), "required": True}],
     {"required": True, "content": {"application/octet-stream": {"schema": {
         "type": "string", "format": "binary",
         "description": "a tar archive, gzip-compressed or not, of regular files, directories and symlinks with "
                        "relative names and no '..' (400 otherwise); at most the server's build_file_max_bytes "
                        "sent and unpacked (413)"}}}},
     {**_ok(201), **_errors(400, 403, 500)}),
    ("get", "/build-files/{team}/{hash}", "Read a template build file, for the node running a build that "
                                          "does not share the API's build files directory (no API key: the read "
                                          "URL each COPY step of a started build carries authorises it; 403 when "
                                          "it is wrong or expired, 404 when the file is gone)",
     [{"name": "team", "in": "path", "required": True, "schema": {"type": "string", "pattern": TEAM_DIR_PATTERN}},
      FILES_HASH, {**_q("template", SEGMENT, "the template whose build the URL was made for"), "required": True},
      {**_q("expires", {"type": "string", "pattern": "^[0-9]{1,12}$"}, "unix seconds"), "required": True},
      {**_q("sig", {"type": "string", "pattern": FILES_HASH_PATTERN}, "HMAC-SHA256, hex"), "required": True},
      {**_q("read", {"type": "string", "enum": ["1"]}, "a read URL (an upload URL does not read)"),
       "required": True}], None,
     {"200": {"description": "the archive, a plain tar", "content": {"application/x-tar": {
         "schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 403, 404, 500)}),
    ("post", "/volumes", "Create a volume (an ext4 filesystem a sandbox mounts); 409 when the team has one of "
                         "that name, 429 beyond the team's volume limits", [], _body("NewVolume"),
     {**_ok(201, _ref("VolumeAndToken")), **_errors(400, 401, 409, 429, 500, 503)}),
    ("get", "/volumes", "List the team's volumes", [], None,
     {**_ok(200, _arr(_ref("Volume"))), **_errors(401, 500, 503)}),
    ("get", "/volumes/{volumeID}", "Get a volume (id or name) with its content token", [VID], None,
     {**_ok(200, _ref("VolumeAndToken")), **_errors(401, 404, 500, 503)}),
    ("delete", "/volumes/{volumeID}", "Delete a volume and its files (409 while a sandbox mounts it)", [VID], None,
     {**_ok(204), **_errors(401, 404, 409, 500, 503)}),
    ("get", "/volumecontent/{volumeID}/dir", "List a directory of a volume no sandbox mounts (409 while one does)",
     [VID, VPATH, _q("depth", {"type": "integer", "minimum": 1, "maximum": 16}, "levels down; absent: 1")], None,
     {**_ok(200, _arr(_ref("VolumeEntryStat"))), **_errors(*CONTENT_ERRORS)}),
    ("post", "/volumecontent/{volumeID}/dir", "Make a directory (force: its parents too, and an existing one is "
                                              "no error)",
     [VID, VPATH, *OWNER_PARAMS, {**FORCE, "description": "make missing parents; an existing directory is no error"}],
     None, {**_ok(201, _ref("VolumeEntryStat")), **_errors(*CONTENT_ERRORS)}),
    ("get", "/volumecontent/{volumeID}/path", "Stat an entry of a volume", [VID, VPATH], None,
     {**_ok(200, _ref("VolumeEntryStat")), **_errors(*CONTENT_ERRORS)}),
    ("patch", "/volumecontent/{volumeID}/path", "Change an entry's owner or mode (those given)", [VID, VPATH],
     _body("VolumeMetadataUpdate", False), {**_ok(200, _ref("VolumeEntryStat")), **_errors(*CONTENT_ERRORS)}),
    ("delete", "/volumecontent/{volumeID}/path", "Remove a file, link or directory (recursively); not the root",
     [VID, VPATH], None, {**_ok(204), **_errors(*CONTENT_ERRORS)}),
    ("get", "/volumecontent/{volumeID}/file", "Read a file's bytes", [VID, VPATH], None,
     {"200": {"description": "the file's bytes", "content": {"application/octet-stream": {
         "schema": {"type": "string", "format": "binary"}}}}, **_errors(*CONTENT_ERRORS)}),
    ("put", "/volumecontent/{volumeID}/file", "Write a file (created or replaced) from the raw body",
     [VID, VPATH, *OWNER_PARAMS, {**FORCE, "description": "make missing parent directories"}],
     {"required": False, "content": {"application/octet-stream": {"schema": {
         "type": "string", "format": "binary",
         "description": "the file's bytes: at most the server's volume_file_max_bytes (413) and what the volume "
                        "has room for (429)"}}}},
     {**_ok(201, _ref("VolumeEntryStat")), **_errors(*CONTENT_ERRORS, 413)}),
    ("get", "/nodes", "The cluster's nodes with their capacity and sandboxes (Cube's own; admin keys only: 403 "
                      "for a team's key)", [], None,
     {**_ok(200, _arr(_ref("Node"))), **_errors(401, 403, 500, 503)}),
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
        if path.startswith(CONTENT_PREFIX):
            op["security"] = [{"VolumeToken": []}]
            op["responses"] = {**_errors(504), **responses}
        elif path not in ("/health", "/openapi.json") and path not in SIGNED_PATHS:
            op["security"] = [{"ApiKeyAuth": []}]
            # Every call the API makes to the master has a deadline (call_timeout_s, create_timeout_s).
            op["responses"] = {**_errors(504), **responses}
        if body is not None:
            # Sanic refuses a body over max_body_bytes before any handler runs.
            op["responses"] = {**_errors(413), **op["responses"]}
        op["responses"] = dict(sorted(op["responses"].items()))
        paths.setdefault(path, {})[method] = op
    domain = getattr(settings, "domain", "cube.localhost")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cube API (E2B-compatible)", "version": "1.0.0",
                 "description": f"E2B control plane for self-hosted sandboxes; sandbox traffic goes to "
                                f"https://<port>-<sandboxID>.{domain}. Errors are {{code, message}}. Templates are "
                                f"built from container images with POST /templates (Cube's own body), or from E2B "
                                f"template definitions (the SDK's Template.build: POST /v3/templates, the COPY "
                                f"steps' file uploads, POST /v2/templates/{{templateID}}/builds/{{buildID}})."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {
                           "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                           "VolumeToken": {"type": "http", "scheme": "bearer",
                                           "description": "a volume's token (VolumeAndToken.token); only the "
                                                          "/volumecontent routes take it"}}},
    }
