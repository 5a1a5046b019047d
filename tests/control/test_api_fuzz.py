"""The REST API fuzzed from its own /openapi.json with auth on (issue 11, "Bad input"), with
schemathesis against a real master and API (and the fake node) on a cluster of this module's own.

Two passes over every operation the document lists, with data generated from the document
(schema-valid and schema-violating, boundary values, methods it does not list), bounded in
examples per operation (and each test in time), seeded and derandomized so CI replays the same
requests; about 3 minutes together on a 2-core machine:

- invalid credentials (none, empty, malformed, unknown, revoked, not UTF-8, the valid key altered
  or in another header): every operation but the public two answers 401 with E2B's error body,
  and nothing changes, in etcd or on the node;
- a valid key of a non-admin team: no 5xx; every status, content type, header and body is one
  the document declares for that operation; schema-valid requests are never refused as invalid
  (400), so the document states every constraint the server enforces; schema-violating ones are
  refused, so it states none the server does not; and a request that succeeds fails without the
  key (ignored_auth). The admin-only operations (``ADMIN_ONLY``) answer that key 403; an admin
  key's answer to them is checked against the document on its own.

Path ids are generated or, two times in three, one this module made (a running and a paused
sandbox, a template of its team, its build and alias), so every operation also succeeds and its
2xx bodies are checked. Destructive calls never reach the default template: the team cannot
delete public templates (403), the test does not even ask, and a test checks it is still there.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from tests.control.cli import cubemastercli
from tests.control.cluster import Cluster, one_node_cluster, wait_until

# Each pass is one test over every operation (39 with the volume routes): room for a loaded machine.
pytestmark = pytest.mark.timeout(600)

# Bounds: examples per operation (the coverage phase's boundary cases come on top), one seed.
# 20 valid examples over the 60-odd operations are ~2 minutes here; 30 were ~3 (CI's budget).
SEED = 11
MAX_EXAMPLES_VALID = 20
MAX_EXAMPLES_INVALID = 8
REQUEST_TIMEOUT_S = 20

PUBLIC_PATHS = {"/health", "/openapi.json"}
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")  # openapi.NAME_PATTERN
DEFAULT_TEMPLATE_NAMES = {"code-interpreter", "base", "code-interpreter-v1"}
# What the fuzzing team's volume holds (Fuzz._replenish_volume).
KNOWN_DIR = "/fuzz"
KNOWN_FILE = "/fuzz/file.txt"
KNOWN_PATHS = (KNOWN_DIR, KNOWN_FILE)
# Operations only an admin key may call: the fuzzing team's key gets 403 (a state status), and
# test_admin_only_operations_answer_an_admin_key checks an admin key's answer.
ADMIN_ONLY = {"GET /nodes"}
# Operations a URL's signature authorises, not a key (build file uploads and nodes' reads,
# routes/build_files.py): a request without the signature the API made for it is refused (403),
# whatever its key; successful ones are tested in test_api_build_files.py.
SIGNED = {"PUT /build-files/{team}/{hash}", "GET /build-files/{team}/{hash}"}
SIGNED_PATHS = {label.split(" ", 1)[1] for label in SIGNED}
# Volume content calls (routes/volumes.py): a volume's bearer token opens them, not a key. The
# valid pass sends the fuzzing team's volume's token; without a bearer they answer 401; with a key
# as the bearer 401, or 400 for bad input (checked before the master checks the token) or 404 for
# a volume id that is no volume (nothing to authorise).
CONTENT_PREFIX = "/volumecontent/"
# Node calls that change something (the leader's periodic reads are not).
NODE_WRITES = {"RunSandbox", "KillSandbox", "PauseSandbox", "ResumeSandbox", "UpdateNetwork", "BuildTemplate",
               "DeleteTemplate"}
# What a schema-valid request may get with a valid key: not 400 (the document would have missed
# a constraint) nor 401; 403/404/409/429 are about state (public templates, unknown or busy ids,
# quotas), not about the request's shape.
STATE_STATUSES = {403, 404, 409, 429}
# Constraints JSON Schema cannot state, which the document states in prose: totals over several
# fields, numbers inside strings, tokens only the server mints, fields that go together. A
# schema-valid request refused (400) for one of these is refused rightly; for anything else the
# document missed a constraint. Matched on the server's messages, so each stays this narrow.
PROSE_CONSTRAINTS = (
    "metadata is ", "envVars are ", "env is ",  # byte totals
    "invalid page token",  # nextToken
    "cmd and args: at most",  # cmd and args together
    "writable layer must be at most", "'writableLayerSize' must be more than 0",  # sizes in strings
    "is the template id itself", "go together",  # fields that depend on each other
    "invalid cursor",  # tagsCursor, cursor (template tags)
    "memory must be between", "cpu must be between",  # the operator's maximums (master settings)
    "give exactly one of 'fromImage' and 'fromTemplate'",  # a template definition's base
    # A template step's arguments, by its type (the master's checks name the step).
    " (RUN): ", " (COPY): ", " (ENV): ", " (WORKDIR): ", " (USER): ", "unknown instruction type",
    # Volume paths once normalized (cube_common.volumes), and mounts taken together.
    "has a component longer than", "cannot be mounted at /", "which the guest's system owns", "overlap",
    "is mounted twice", "root directory cannot be removed", "root directory is not a file",
    # An entry of another type than the call needs (the node's answers: state, not shape).
    "is not a directory", "is a directory", "is not a regular file",
)


class Fuzz:
    """The auth-on cluster, the fuzzing team's key, bad keys, and ids this module owns."""

    def __init__(self, c: Cluster):
        self.c = c
        self.master = c.masters[0].address
        cubemastercli(self.master, "team", "create", "fuzz")
        self.key = self._key("fuzzer")
        self.admin_key = self._key("fuzz-admin", "--admin")
        self.revoked = self._key("revoked")
        cubemastercli(self.master, "apikey", "revoke", self._key_id("revoked"))
        self.http = httpx.Client(base_url=c.api_url, headers={"X-API-KEY": self.key}, timeout=30)
        self.running = self.paused = ""
        self.template_id = self.build_id = self.alias = ""
        self.volume_id = self.volume_token = ""
        self._volumes = 0
        self._builds = 0
        self.exercised: dict[str, set[str]] = {"invalid": set(), "valid": set()}
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)  # of the valid key's requests
        self.replenish()

    def _key(self, name: str, *flags: str) -> str:
        out = json.loads(cubemastercli(self.master, "--json", "apikey", "create", "--name", name,
                                       "--team", "fuzz", *flags).stdout)
        return out["key"]

    def _key_id(self, name: str) -> str:
        keys = json.loads(cubemastercli(self.master, "--json", "apikey", "list").stdout)
        return next(k["keyId"] for k in keys if k["name"] == name)

    def bad_credentials(self) -> list[tuple[str, dict[str, str]]]:
        return [("no key", {}), ("empty key", {"X-API-KEY": ""}), ("malformed key", {"X-API-KEY": "not-a-key"}),
                ("malformed e2b key", {"X-API-KEY": "e2b_zz"}), ("unknown key", {"X-API-KEY": "e2b_" + "0" * 40}),
                ("revoked key", {"X-API-KEY": self.revoked}),
                ("valid key upper-cased", {"X-API-KEY": self.key.upper()}),
                ("valid key and more", {"X-API-KEY": self.key + "0"}),
                ("key that is not UTF-8", {"X-API-KEY": "e2b_\xff"}),
                ("valid key as a bearer token", {"Authorization": f"Bearer {self.key}"})]

    # ---- ids this module owns ----

    def _state_of(self, sid: str) -> str | None:
        if not sid:
            return None
        r = self.http.get(f"/sandboxes/{sid}")
        return r.json()["state"] if r.status_code == 200 else None

    def _create(self) -> str:
        # An hour: none may time out while the invalid-credentials pass compares the cluster.
        body = {"templateID": "base", "timeout": 3600, "metadata": {"owner": "fuzz"}}
        r = self.http.post("/v2/sandboxes", json=body)
        if r.status_code == 429:  # the team's quota, filled by the fuzzer's creates: make room
            for s in self.http.get("/v2/sandboxes").json():
                if s["sandboxID"] not in (self.running, self.paused):
                    self.http.delete(f"/sandboxes/{s['sandboxID']}")
            r = self.http.post("/v2/sandboxes", json=body)
        assert r.status_code == 201, r.text
        return r.json()["sandboxID"]

    def replenish(self) -> None:
        """A running and a paused sandbox and a ready template of the team's, again after the
        fuzzer killed, paused, resumed or deleted the previous ones."""
        if self._state_of(self.running) != "running":
            self.running = self._create()
        if self._state_of(self.paused) != "paused":
            sid = self._create()
            r = self.http.post(f"/sandboxes/{sid}/pause", json={})
            assert r.status_code == 204, r.text
            self.paused = sid
        if not self.template_id or self.http.get(f"/templates/{self.template_id}").status_code != 200:
            self._builds += 1
            # A new id each time: a deleted template's id may stay reserved.
            tid, alias = f"fuzz-tpl-{self._builds}", f"fuzz-alias-{self._builds}"
            r = self.http.post("/templates", json={"image": "registry.test:5000/fuzz:1", "templateID": tid,
                                                   "aliases": [alias]})
            assert r.status_code == 202, r.text
            build = r.json()["buildID"]
            wait_until(lambda: self.http.get(f"/templates/{tid}/builds/{build}/status").json()["status"] == "ready",
                       timeout=30, what=f"build of {tid}")
            wait_until(lambda: self.http.get(f"/templates/aliases/{alias}").status_code == 200, timeout=10,
                       what=f"alias {alias}")
            self.template_id, self.build_id, self.alias = tid, build, alias
        self._replenish_volume()

    def _content(self, method: str, route: str, path: str, **kw) -> httpx.Response:
        return self.http.request(method, f"/volumecontent/{self.volume_id}/{route}", params={"path": path},
                                 headers={"Authorization": f"Bearer {self.volume_token}"}, **kw)

    def _replenish_volume(self) -> None:
        """A volume of the team's holding KNOWN_PATHS, again after the fuzzer deleted it or them."""
        ok = self.volume_id and self.http.get(f"/volumes/{self.volume_id}").status_code == 200
        if not ok:
            self._volumes += 1
            r = self.http.post("/volumes", json={"name": f"fuzz-volume-{self._volumes}"})
            if r.status_code == 429:  # the team's volume limit, filled by the fuzzer's creates
                for v in self.http.get("/volumes").json():
                    self.http.delete(f"/volumes/{v['volumeID']}")
                r = self.http.post("/volumes", json={"name": f"fuzz-volume-{self._volumes}"})
            assert r.status_code == 201, r.text
            self.volume_id, self.volume_token = r.json()["volumeID"], r.json()["token"]
        if self._content("GET", "path", KNOWN_FILE).status_code != 200:
            r = self.http.post(f"/volumecontent/{self.volume_id}/dir", params={"path": KNOWN_DIR, "force": "true"},
                               headers={"Authorization": f"Bearer {self.volume_token}"})
            assert r.status_code == 201, r.text
            r = self._content("PUT", "file", KNOWN_FILE, content=b"fuzz")
            assert r.status_code == 201, r.text

    def known_ids(self, method: str, path: str) -> list[dict[str, str]]:
        """Path parameters naming things that exist, for the operation at method + path."""
        if "{volumeID}" in path:
            return [{"volumeID": self.volume_id}]
        if "{sandboxID}" in path:
            return [{"sandboxID": self.running}, {"sandboxID": self.paused}]
        if path == "/templates/{templateID}/builds/{buildID}/status":
            return [{"templateID": self.template_id, "buildID": self.build_id},
                    {"templateID": self.alias, "buildID": self.build_id}]
        if path == "/templates/{templateID}":
            ids = [{"templateID": self.template_id}, {"templateID": self.alias}]
            return ids + ([{"templateID": "base"}] if method == "GET" else [])  # public: read, never delete
        if path == "/templates/aliases/{alias}":
            return [{"alias": self.alias}, {"alias": "base"}]
        if path == "/v2/templates/{templateID}/builds/{buildID}":
            # A build reserved for this case (a start consumes it).
            r = self.http.post("/v3/templates", json={"name": f"fuzz-def-{len(self.exercised['valid'])}-"
                                                              f"{self._builds}"})
            self._builds += 1
            if r.status_code != 202:
                return []
            return [{"templateID": r.json()["templateID"], "buildID": r.json()["buildID"]}]
        if path == "/templates/{templateID}/files/{hash}":
            return [{"templateID": self.template_id, "hash": "0" * 64}, {"templateID": self.alias, "hash": "1" * 64}]
        if path.startswith("/templates/{templateID}/tags"):
            ids = [{"templateID": self.template_id}, {"templateID": self.alias}, {"templateID": "base"}]
            return [{**i, "tag": "default"} for i in ids] if "{tag}" in path else ids
        return []

    # ---- what a refused request must leave unchanged ----

    def state(self) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
        """Every etcd key of the cluster but the leader lease, and what the node was asked to change."""
        kv = {k: v for k, v in self.c.etcd.prefix(self.c.prefix + "/").items() if k != f"{self.c.prefix}/leader"}
        node = self.c.cubelets[0]
        return kv, [call for call in node.calls if call[0] in NODE_WRITES]


@pytest.fixture(scope="module")
def fuzz(etcd_server) -> Iterator[Fuzz]:
    with one_node_cluster(etcd_server.endpoint, CUBE_AUTH="on") as c:
        f = Fuzz(c)
        yield f
        f.http.close()


def _config(**project) -> schemathesis.Config:
    """One run's settings, as schemathesis.toml would give them: bounded, seeded, derandomized,
    no example database (CI replays the same requests)."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "request-timeout": REQUEST_TIMEOUT_S,
        "suppress-health-check": ["too_slow", "filter_too_much"],
        **project,
    })


def _generation(max_examples: int, **extra) -> dict:
    return {"max-examples": max_examples, "deterministic": True, "database": "none", **extra}


@pytest.fixture(scope="module")
def invalid_schema(fuzz):
    """The document as served, for requests without valid credentials: the test sets the key
    header itself, so the generator adds none."""
    return schemathesis.openapi.from_url(fuzz.c.api_url + "/openapi.json", config=_config(
        generation=_generation(MAX_EXAMPLES_INVALID, **{"with-security-parameters": False}),
        # Methods the document does not list are refused by routing (405), before auth.
        phases={"coverage": {"unexpected-methods": []}}))


@pytest.fixture(scope="module")
def valid_schema(fuzz):
    schema = schemathesis.openapi.from_url(fuzz.c.api_url + "/openapi.json", config=_config(
        headers={"X-API-KEY": fuzz.key},
        generation=_generation(MAX_EXAMPLES_VALID),
        checks={
            # valid_requests_are_accepted below, which knows the document's prose constraints.
            "positive_data_acceptance": {"enabled": False},
            # The coverage phase drops the key header too: that is a 401, as for any missing key.
            "missing_required_header": {"expected-statuses": ["401"]},
            # These need links between operations (stateful testing), which the document has not.
            "use_after_free": {"enabled": False},
            "ensure_resource_availability": {"enabled": False},
        }))

    @schema.hook
    def before_generate_path_parameters(ctx, strategy):
        # Two times in three, name something that exists (looked up when the case is drawn: the
        # fuzzer kills and deletes them). Schema-valid cases only (plain dicts; schema-violating
        # ones come wrapped): a violating id is the point of such a case.
        def swap(drawn):
            params, pick = drawn
            known = fuzz.known_ids(ctx.operation.method.upper(), ctx.operation.path)
            if not pick or not known or not isinstance(params, dict):
                return params
            return {**params, **known[(pick - 1) % len(known)]}

        return st.tuples(strategy, st.integers(0, 2)).map(swap)

    @schema.hook
    def before_generate_query(ctx, strategy):
        # Two times in three, a content call names an entry that exists (KNOWN_PATHS: the file for
        # file calls, the directory for directory calls, either for the rest); schema-valid
        # queries only, as for path parameters.
        if not ctx.operation.path.startswith(CONTENT_PREFIX):
            return strategy
        route = ctx.operation.path.rsplit("/", 1)[1]
        known = {"file": [KNOWN_FILE], "dir": [KNOWN_DIR]}.get(route, list(KNOWN_PATHS))

        def swap(drawn):
            query, pick = drawn
            if not pick or not isinstance(query, dict) or not isinstance(query.get("path"), str):
                return query
            return {**query, "path": known[(pick - 1) % len(known)]}

        return st.tuples(strategy, st.integers(0, 2)).map(swap)

    @schema.hook
    def before_generate_body(ctx, strategy):
        # A generated template name is never one that exists (the coverage phase tries those):
        # schema-valid creates name the default template, so the rest of the body (timeouts,
        # metadata, env, network) reaches a 201; tag writes name the team's template (a valid
        # name only: a violating one is the point of such a case).
        op = (ctx.operation.method.upper(), ctx.operation.path)
        if op in (("POST", "/templates/tags"), ("DELETE", "/templates/tags")):
            key = "target" if op[0] == "POST" else "name"

            def name_ours(body):
                if isinstance(body, dict) and isinstance(body.get(key), str) and TEMPLATE_NAME.match(body[key]):
                    return {**body, key: fuzz.alias}
                return body

            return strategy.map(name_ours)
        if op == ("POST", "/v2/templates/{templateID}/builds/{buildID}"):
            # A schema-valid definition builds on the team's view of the public base template.
            def on_base(body):
                if isinstance(body, dict) and ("fromTemplate" in body or "fromImage" in body):
                    return {**{k: v for k, v in body.items() if k != "fromImage"}, "fromTemplate": "base"}
                return body

            return strategy.map(on_base)
        if op not in (("POST", "/v2/sandboxes"), ("POST", "/sandboxes")):
            return strategy

        def name_default(body):
            if isinstance(body, dict) and isinstance(body.get("templateID"), str):
                return {**body, "templateID": "base"}
            return body

        return strategy.map(name_default)

    return schema


def _body_allowed(case) -> bool:
    """Whether the document allows the case's body. schemathesis' coverage phase labels a few
    bodies valid that are not: it probes additionalProperties with a key of its own
    (x-schemathesis-additional), whatever propertyNames says."""
    doc = case.operation.schema.raw_schema
    body = doc["paths"][case.operation.path][case.method.lower()].get("requestBody")
    if body is None or case.body is NOT_SET or "application/json" not in body["content"]:
        return True
    schema = {**body["content"]["application/json"]["schema"], "components": doc["components"]}
    return jsonschema_rs.validator_for(schema).is_valid(case.body)


def valid_requests_are_accepted(ctx, response, case) -> None:
    """schemathesis' positive_data_acceptance, less the refusals PROSE_CONSTRAINTS names."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not _body_allowed(case):
        return
    status = response.status_code
    if 200 <= status < 300 or status in STATE_STATUSES:
        return
    try:
        message = response.json()["message"]
    except Exception:  # noqa: BLE001 - whatever it is, it is not an E2B error body
        message = response.text
    if status == 400 and any(m in message for m in PROSE_CONSTRAINTS):
        return
    raise AssertionError(f"a request the document allows was refused: {status} {message!r}\n"
                         f"(state the constraint in services/api/openapi.py, or fix the server)")


invalid_api = schemathesis.pytest.from_fixture("invalid_schema")
valid_api = schemathesis.pytest.from_fixture("valid_schema")


def _e2b_401(r) -> None:
    assert r.status_code == 401, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"][0].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == 401 and isinstance(body["message"], str), body


def _walk(node):
    """Every dict under ``node``, depth first."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_document_is_valid_openapi_3_1(fuzz):
    doc = fuzz.http.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    OPENAPI_31_VALIDATOR.validate(doc)  # the document's structure; its schemas are JSON Schema 2020-12:
    schemas = [*doc["components"]["schemas"].values(),
               *(d["schema"] for d in _walk(doc["paths"]) if isinstance(d.get("schema"), dict))]
    for schema in schemas:
        jsonschema_rs.meta.validate(schema)
    # Patterns mean the same to Python (the server, the generator) and to Rust's regex (what
    # schemathesis validates responses and negative data with): both must at least compile them.
    patterns = {d["pattern"] for d in _walk(schemas) if isinstance(d.get("pattern"), str)}
    assert len(patterns) > 5
    for pattern in patterns:
        re.compile(pattern)
        jsonschema_rs.Draft202012Validator({"type": "string", "pattern": pattern})


@invalid_api.parametrize()
def test_invalid_credentials_change_nothing(case, fuzz):
    fuzz.exercised["invalid"].add(case.operation.label)
    before = fuzz.state()
    for what, headers in fuzz.bad_credentials():
        r = case.call(headers=headers, timeout=REQUEST_TIMEOUT_S)
        if case.path in PUBLIC_PATHS:
            assert r.status_code == 200, (what, r.status_code, r.text[:300])
            continue
        if case.path in SIGNED_PATHS:
            assert r.status_code in (400, 403), (what, r.status_code, r.text[:300])
            case.validate_response(r, headers=headers)
            continue
        if case.path.startswith(CONTENT_PREFIX) and "Authorization" in headers and r.status_code in (400, 404):
            # A bearer that is no volume's token: the master, which checks it, is asked only with
            # valid input (400 before, saying nothing of the volume), and a volume id that is no
            # volume has nothing to authorise (404).
            assert r.json()["code"] == r.status_code, (what, r.text[:300])
            if r.status_code == 404:
                case.validate_response(r, headers=headers)
            continue
        try:
            _e2b_401(r)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
        case.validate_response(r, headers=headers)
    assert fuzz.state() == before, "a request without valid credentials changed the cluster"


@valid_api.parametrize()
def test_valid_key_requests_follow_the_document(case, fuzz):
    if (case.method == "DELETE" and case.path == "/templates/{templateID}"
            and case.path_parameters.get("templateID") in DEFAULT_TEMPLATE_NAMES):
        return  # refused (403) for this team anyway; other modules' tests rely on it
    fuzz.exercised["valid"].add(case.operation.label)
    headers = {"Authorization": f"Bearer {fuzz.volume_token}"} if case.path.startswith(CONTENT_PREFIX) else None
    r = case.call_and_validate(headers=headers, additional_checks=[valid_requests_are_accepted],
                               timeout=REQUEST_TIMEOUT_S)
    fuzz.statuses[case.operation.label][r.status_code] += 1
    fuzz.replenish()


def test_default_template_survived(fuzz):
    for name in sorted(DEFAULT_TEMPLATE_NAMES):
        r = fuzz.http.get(f"/templates/{name}")
        assert r.status_code == 200 and r.json()["templateID"] == "code-interpreter", (name, r.text)
    assert "code-interpreter" in fuzz.c.cubelets[0].templates


def test_every_operation_was_fuzzed(fuzz):
    """Guards against a vacuous pass (an operation filtered out, a document that lost paths)."""
    doc = fuzz.http.get("/openapi.json").json()
    labels = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    assert len(labels) > 20
    assert fuzz.exercised["invalid"] == labels
    assert fuzz.exercised["valid"] == labels
    print("\n".join(f"{op}: {dict(sorted(n.items()))}" for op, n in sorted(fuzz.statuses.items())))
    # And every one also succeeded, so its success body was checked against the document too
    # (the admin-only ones: test_admin_only_operations_answer_an_admin_key).
    assert {op for op, n in fuzz.statuses.items() if any(200 <= code < 300 for code in n)} == (
        labels - ADMIN_ONLY - SIGNED)
    assert all(set(fuzz.statuses[op]) <= {400, 403, 405, 413} and fuzz.statuses[op][403] for op in SIGNED)
    assert all(set(fuzz.statuses[op]) <= {401, 403, 405} and fuzz.statuses[op][403] for op in ADMIN_ONLY)


def test_admin_only_operations_answer_an_admin_key(fuzz):
    doc = fuzz.http.get("/openapi.json").json()
    for label in sorted(ADMIN_ONLY):
        method, path = label.split(" ", 1)
        r = fuzz.http.request(method, path, headers={"X-API-KEY": fuzz.admin_key})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), (label, r.text)
        schema = doc["paths"][path][method.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
        assert validator.is_valid(r.json()) and r.json(), (label, r.json())
        assert fuzz.http.request(method, path).status_code == 403  # the team's key
