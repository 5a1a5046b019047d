"""After the services are up: make sure the default template exists and a sandbox can be created.

    python -m deploy.bootstrap

1. Builds the default code-interpreter template on this node (a no-op when its inputs have not
   changed: the cubelet caches it by build key) and registers it with the master together with the
   aliases the SDKs ask for by default (`base`, `code-interpreter-v1`).
2. Makes sure the local team exists and this node has an admin API key for it, kept in
   `$CUBE_STATE_DIR/secrets/api-key` (deploy/local_key.py): the stored key is reused while the
   master knows it, otherwise a new one is issued. `make env` exports it as E2B_API_KEY, so the
   SDK works whether auth is on or off.
3. Creates a sandbox with the unmodified E2B SDK, runs a command in it, and kills it: `make up`
   returns only once that works.

It talks to the cubelet and the master as an operator (this node's operator certificate, no caller
metadata): the template it registers is public.
"""
from __future__ import annotations

import asyncio
import os
import time

import grpc

from cube_common.mtls import Role, aio_channel
from cube_common.teams import LOCAL_TEAM
from deploy import local_key
from deploy.env import sdk_env
from deploy.supervisor import NodeConfig
from sdk.gen.cube.v1 import cubelet_pb2 as cpb, cubelet_pb2_grpc, master_pb2, master_pb2_grpc

DEFAULT_TEMPLATE = os.environ.get("CUBE_DEFAULT_TEMPLATE", "code-interpreter")
ALIASES = ("base", "code-interpreter-v1")


async def build_default(cfg: NodeConfig) -> cpb.TemplateInfo:
    async with aio_channel(cfg.cubelet_addr, cfg.operator_tls(), Role.CUBELET) as ch:
        stub = cubelet_pb2_grpc.CubeletStub(ch)
        # 1 GiB: a node keeps each template's whole guest RAM in memory (vmm_core/sealed_memory.py),
        # and templates built on this one inherit its size. Its six kernels (python, two Deno, R,
        # Java, bash) leave users' code ~220 MB plus the page cache; templates built on it may ask
        # for more (`memory_mb` of Template.build, `memoryMB` of the API).
        req = cpb.BuildTemplateRequest(template_id=DEFAULT_TEMPLATE, default_image=cpb.DefaultImageSource(),
                                       vcpus=1, memory_mb=1024, writable_layer_mb=1024)
        last = None
        async for ev in stub.BuildTemplate(req, timeout=3600):
            name = cpb.TemplateBuildPhase.Name(ev.phase)
            print(f"  template {DEFAULT_TEMPLATE}: {name} {ev.message}".rstrip(), flush=True)
            last = ev
        if last is None or last.phase != cpb.READY:
            raise SystemExit(f"default template build failed: {last.error if last else 'no events'}")
        return last.template


async def register(cfg: NodeConfig, info: cpb.TemplateInfo) -> None:
    async with aio_channel(cfg.master_addr, cfg.operator_tls(), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        tpl = master_pb2.Template(
            template_id=info.template_id, aliases=list(ALIASES), vcpus=info.vcpus, memory_mb=info.memory_mb,
            disk_size_mb=info.writable_layer_mb, envd_version=info.envd_version, created_at=info.created_at,
            source=info.source, status=master_pb2.TEMPLATE_STATUS_READY, snapshot_bytes=info.snapshot_bytes,
            no_memory_sharing=info.no_memory_sharing, expose_ports=list(info.expose_ports))
        await stub.PutTemplate(master_pb2.PutTemplateRequest(template=tpl), timeout=30)
        for alias in ALIASES:
            await stub.SetTemplateAlias(master_pb2.TemplateAlias(alias=alias, template_id=info.template_id),
                                        timeout=30)


async def _ours(stub: master_pb2_grpc.MasterStub, key: str) -> bool:
    """Is ``key`` a live admin key of the local team?"""
    try:
        rec = await stub.ValidateApiKey(master_pb2.ValidateApiKeyRequest(key=key), timeout=30)
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:  # revoked, or etcd was wiped
            return False
        raise
    return rec.team_id == LOCAL_TEAM and rec.role == master_pb2.API_KEY_ROLE_ADMIN


async def ensure_api_key(cfg: NodeConfig) -> str:
    """The local team and this node's admin key for it (see the module docstring). Returns what
    was done: "reused" or "issued"."""
    async with aio_channel(cfg.master_addr, cfg.operator_tls(), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        try:
            await stub.CreateTeam(master_pb2.CreateTeamRequest(team_id=LOCAL_TEAM), timeout=30)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        key = local_key.read(cfg.state_dir)
        if key is not None and await _ours(stub, key):
            return "reused"
        resp = await stub.CreateApiKey(master_pb2.CreateApiKeyRequest(
            name="make-up", team_id=LOCAL_TEAM, role=master_pb2.API_KEY_ROLE_ADMIN), timeout=30)
        local_key.write(cfg.state_dir, resp.key)
        return "issued"


def smoke(cfg: NodeConfig, timeout: float = 300.0) -> float:
    """Create a sandbox with the unmodified SDK, run a command, kill it. Returns the create time."""
    os.environ.update(sdk_env(cfg))
    from e2b import Sandbox

    deadline = time.monotonic() + timeout
    while True:
        try:
            t0 = time.monotonic()
            sbx = Sandbox.create(timeout=60)
            created = time.monotonic() - t0
            try:
                out = sbx.commands.run("echo cube-ready")
                if out.stdout.strip() != "cube-ready":
                    raise RuntimeError(f"unexpected output {out.stdout!r}")
            finally:
                sbx.kill()
            return created
        except Exception as e:  # the node may still be settling (warm pool, proxy routes)
            if time.monotonic() > deadline:
                raise SystemExit(f"no sandbox could be created: {e!r}") from e
            print(f"  waiting for a sandbox: {e!r}", flush=True)
            time.sleep(2)


def main() -> None:
    cfg = NodeConfig.from_env()
    print("default template:", flush=True)
    info = asyncio.run(build_default(cfg))
    asyncio.run(register(cfg, info))
    print(f"  registered {info.template_id} (aliases {', '.join(ALIASES)})", flush=True)
    done = asyncio.run(ensure_api_key(cfg))
    print(f"api key of team {LOCAL_TEAM} (admin): {done}, in {local_key.path(cfg.state_dir)}", flush=True)
    created = smoke(cfg)
    print(f"a sandbox was created in {created * 1000:.0f} ms, ran a command and was killed: the node is up",
          flush=True)


if __name__ == "__main__":
    main()
