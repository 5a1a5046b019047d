"""E2B template definitions, as the SDK's `Template.build()` sends them: the request that reserves a
template (POST /v3/templates, `TemplateBuildRequestV3`) and the definition that starts its build
(POST /v2/templates/{id}/builds/{buildID}, `TemplateBuildStartV2`).

Only the shape is checked here (types, sizes, names); what the steps mean is the master's
(services/master/builds.py validates them again, naming the step) and the node's. Registry
credentials ride in the definition and go to the master and the node only; nothing here keeps them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P
from services.api.errors import bad_request
from services.api.models import opt_bool, opt_int

# E2B's template names: `name` or `name:tag` (the tag names the build), lower case.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_STEPS = 256
MAX_ARG_BYTES = 65536


@dataclass(frozen=True)
class NewTemplate:
    """POST /v3/templates: reserve a template for the caller's team under ``name``."""
    name: str
    tags: list[str]
    vcpus: int
    memory_mb: int

    @classmethod
    def parse(cls, body: dict) -> NewTemplate:
        # teamID: the key names the team (a different one is not honoured); minFreeDiskMb: the
        # writable layer's size is the template's (E2B grows it best effort, Cube does not).
        for key in ("teamID", "alias"):
            if key in body and not isinstance(body[key], str):
                raise bad_request(f"'{key}' must be a string")
        opt_int(body, "minFreeDiskMb", 0, 1 << 22)
        raw = body.get("name", body.get("alias"))
        if not isinstance(raw, str) or not raw:
            raise bad_request("'name' is required (the template's name, optionally 'name:tag')")
        name, _, tag = raw.lower().partition(":")
        tags = [tag] if tag else []
        extra = body.get("tags")
        if extra is not None:
            if not isinstance(extra, list) or not all(isinstance(t, str) for t in extra):
                raise bad_request("'tags' must be an array of strings")
            tags += [t.lower() for t in extra]
        if not NAME_RE.fullmatch(name):
            raise bad_request(f"invalid template name {name!r}: use up to 64 of a-z, 0-9, '.', '_', '-', starting "
                              "with a letter or digit")
        for t in tags:
            if not TAG_RE.fullmatch(t):
                raise bad_request(f"invalid tag {t!r}")
        # `default` names the latest build whatever is assigned: nothing to record.
        tags = [t for t in dict.fromkeys(tags) if t != "default"]
        return cls(name=name, tags=tags, vcpus=opt_int(body, "cpuCount", 1, 64) or 0,
                   memory_mb=opt_int(body, "memoryMB", 128, 1 << 20) or 0)

    def to_proto(self) -> P.CreateTemplateBuildRequest:
        build = cubelet_pb2.BuildTemplateRequest(vcpus=self.vcpus, memory_mb=self.memory_mb)
        return P.CreateTemplateBuildRequest(build=build, aliases=[self.name], deferred=True, move_aliases=True,
                                            tags=self.tags)


def _str(body: dict, key: str) -> str:
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise bad_request(f"'{key}' must be a string")
    if len(v.encode()) > MAX_ARG_BYTES:
        raise bad_request(f"'{key}' is longer than {MAX_ARG_BYTES} bytes")
    return v


def parse_definition(body: dict) -> P.StartTemplateBuildRequest:
    """POST /v2/templates/{id}/builds/{buildID}: the definition as a StartTemplateBuildRequest
    (its job id is the caller's to set)."""
    b = cubelet_pb2.BuildTemplateRequest()
    image, template = _str(body, "fromImage"), _str(body, "fromTemplate")
    if bool(image) == bool(template):
        raise bad_request("give exactly one of 'fromImage' and 'fromTemplate'")
    if template:
        b.from_template.template_id = template
    else:
        b.oci_image.reference = image
        registry = body.get("fromImageRegistry")
        if registry is not None:
            if not isinstance(registry, dict):
                raise bad_request("'fromImageRegistry' must be an object")
            kind = registry.get("type", "registry")
            if kind != "registry":
                raise bad_request(f"'fromImageRegistry' of type {kind!r} is not supported; use type 'registry' "
                                  "with username and password")
            user, password = _str(registry, "username"), _str(registry, "password")
            if bool(user) != bool(password):
                raise bad_request("registry username and password go together")
            b.oci_image.username, b.oci_image.password = user, password
    steps = body.get("steps") or []
    if not isinstance(steps, list):
        raise bad_request("'steps' must be an array")
    if len(steps) > MAX_STEPS:
        raise bad_request(f"at most {MAX_STEPS} steps")
    force_all = bool(opt_bool(body, "force"))
    for i, s in enumerate(steps):
        if not isinstance(s, dict):
            raise bad_request(f"step {i + 1} must be an object")
        kind = s.get("type")
        if not isinstance(kind, str) or not kind:
            raise bad_request(f"step {i + 1}: 'type' is required")
        args = s.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise bad_request(f"step {i + 1}: 'args' must be an array of strings")
        if any(len(a.encode()) > MAX_ARG_BYTES for a in args):
            raise bad_request(f"step {i + 1}: an argument is longer than {MAX_ARG_BYTES} bytes")
        files_hash = s.get("filesHash") or ""
        if not isinstance(files_hash, str):
            raise bad_request(f"step {i + 1}: 'filesHash' must be a string")
        force = s.get("force")
        b.steps.add(type=kind, args=args, files_hash=files_hash, force=bool(force) or force_all)
    b.start_cmd = _str(body, "startCmd")
    b.ready_cmd = _str(body, "readyCmd")
    # As on E2B, build steps reach the internet (package installs); sandboxes' own policy is theirs.
    b.steps_internet = True
    return P.StartTemplateBuildRequest(build=b)
