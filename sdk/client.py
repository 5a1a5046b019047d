"""A small typed client for operators over the master's gRPC API (``cube.v1.Master``).

    from sdk.client import CubeClient
    with CubeClient("127.0.0.1:7070") as cube:
        for sb in cube.list_sandboxes(metadata={"user": "alice"}):
            print(sb.sandbox_id, sb.phase)
        key, secret = cube.create_api_key("ci")

Results are the generated protobuf messages (typed through their .pyi stubs); failures raise
``CubeError`` with the gRPC status code.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import grpc

from sdk.gen.cube.v1 import cubelet_pb2, master_pb2 as P, master_pb2_grpc

DEFAULT_MASTER = "127.0.0.1:7070"
_STATES = {"running": P.SANDBOX_PHASE_RUNNING, "paused": P.SANDBOX_PHASE_PAUSED}


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mb(value: str | int) -> int:
    """A size in MiB from ``512M``, ``1G``, ``1.5G``, ``2048K``, ``1GiB`` (binary units; a bare
    number is MiB), rounded up to whole MiB. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        n = float(value)
    else:
        m = _SIZE_RE.match(value or "")
        if not m:
            raise ValueError(f"invalid size {value!r} (want e.g. 512M or 1G)")
        n = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "M").upper()]
    mb = int(-(-n // 1))
    if mb < 1 or mb > 1 << 30:
        raise ValueError(f"invalid size {value!r}")
    return mb


class CubeError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class CubeClient:
    def __init__(self, address: str | None = None, timeout_s: float = 30.0):
        self.address = address or os.environ.get("CUBE_MASTER_ADDR") or DEFAULT_MASTER
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(self.address)
        self._stub = master_pb2_grpc.MasterStub(self._channel)

    def __enter__(self) -> "CubeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, timeout_s: float | None = None):
        try:
            return getattr(self._stub, method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise CubeError(e.code(), e.details() or "") from None

    # ---- sandboxes ----

    def list_sandboxes(self, metadata: dict[str, str] | None = None, states: tuple[str, ...] = (),
                       template: str = "", page_size: int = 100) -> Iterator[P.Sandbox]:
        """Every matching sandbox, newest first, fetched page by page."""
        token = ""
        while True:
            resp = self._call("ListSandboxRecords", P.ListSandboxRecordsRequest(
                metadata=metadata or {}, phases=[_STATES[s] for s in states], limit=page_size,
                page_token=token, template=template))
            yield from resp.sandboxes
            token = resp.next_page_token
            if not token:
                return

    def get_sandbox(self, sandbox_id: str) -> P.Sandbox:
        return self._call("GetSandbox", P.GetSandboxRequest(sandbox_id=sandbox_id))

    def create_sandbox(self, template: str, timeout_s: int = 0, metadata: dict[str, str] | None = None,
                       env_vars: dict[str, str] | None = None, auto_pause: bool = False) -> P.Sandbox:
        return self._call("CreateSandbox", P.CreateSandboxRequest(
            template=template, timeout_s=timeout_s, metadata=metadata or {}, env_vars=env_vars or {},
            auto_pause=auto_pause, client_id="operator"), timeout_s=max(self.timeout_s, 150))

    def kill_sandbox(self, sandbox_id: str) -> bool:
        return self._call("KillSandboxRecord", P.KillSandboxRecordRequest(sandbox_id=sandbox_id)).killed

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> P.Sandbox:
        return self._call("SetSandboxTimeout", P.SetSandboxTimeoutRequest(sandbox_id=sandbox_id, timeout_s=timeout_s))

    def pause_sandbox(self, sandbox_id: str) -> P.Sandbox:
        return self._call("PauseSandboxRecord", P.PauseSandboxRecordRequest(sandbox_id=sandbox_id), 150)

    def connect_sandbox(self, sandbox_id: str, timeout_s: int = 0) -> P.ConnectSandboxResponse:
        return self._call("ConnectSandbox", P.ConnectSandboxRequest(sandbox_id=sandbox_id, timeout_s=timeout_s), 150)

    def sandbox_logs(self, sandbox_id: str, limit: int = 1000) -> list[cubelet_pb2.LogLine]:
        return list(self._call("GetSandboxLogs", cubelet_pb2.SandboxLogsRequest(sandbox_id=sandbox_id, limit=limit)).lines)

    # ---- templates ----

    def list_templates(self) -> list[P.Template]:
        return list(self._call("ListTemplateRecords", P.ListTemplateRecordsRequest()).templates)

    def get_template(self, template: str) -> P.Template:
        return self._call("GetTemplate", P.GetTemplateRequest(template=template))

    def delete_template(self, template: str, force: bool = False) -> bool:
        return self._call("DeleteTemplateRecord", P.DeleteTemplateRecordRequest(template=template, force=force),
                          150).deleted

    def set_template_alias(self, alias: str, template_id: str) -> P.TemplateAlias:
        return self._call("SetTemplateAlias", P.TemplateAlias(alias=alias, template_id=template_id))

    # ---- template builds ----

    def create_template_build(self, build: cubelet_pb2.BuildTemplateRequest, aliases: list[str] | None = None,
                              node_id: str = "") -> P.TemplateBuild:
        """Start building a template (``build.template_id`` empty: a new id); returns the job."""
        return self._call("CreateTemplateBuild", P.CreateTemplateBuildRequest(build=build, aliases=aliases or [],
                                                                              node_id=node_id))

    def get_template_build(self, job_id: str) -> P.TemplateBuild:
        return self._call("GetTemplateBuild", P.GetTemplateBuildRequest(job_id=job_id))

    def list_template_builds(self, template_id: str = "") -> list[P.TemplateBuild]:
        return list(self._call("ListTemplateBuilds", P.ListTemplateBuildsRequest(template_id=template_id)).builds)

    def watch_template_build(self, job_id: str) -> Iterator[cubelet_pb2.TemplateBuildEvent]:
        """The build's events, past then live, until READY or FAILED (no deadline)."""
        try:
            yield from self._stub.WatchTemplateBuild(P.WatchTemplateBuildRequest(job_id=job_id))
        except grpc.RpcError as e:
            raise CubeError(e.code(), e.details() or "") from None

    # ---- nodes ----

    def list_nodes(self) -> list[P.Node]:
        return list(self._call("ListNodes", P.ListNodesRequest()).nodes)

    # ---- API keys ----

    def create_api_key(self, name: str = "") -> tuple[P.ApiKey, str]:
        resp = self._call("CreateApiKey", P.CreateApiKeyRequest(name=name))
        return resp.api_key, resp.key

    def list_api_keys(self) -> list[P.ApiKey]:
        return list(self._call("ListApiKeys", P.ListApiKeysRequest()).api_keys)

    def revoke_api_key(self, key_id: str) -> bool:
        return self._call("RevokeApiKey", P.RevokeApiKeyRequest(key_id=key_id)).revoked

    # ---- cluster ----

    def cluster_status(self) -> P.ClusterStatus:
        return self._call("GetClusterStatus", P.GetClusterStatusRequest())
