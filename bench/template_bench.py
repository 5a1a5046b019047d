"""Template build benchmark: the default template, and image templates that share layers.

    .venv/bin/python bench/template_bench.py        (brings the node up first if it is not)

1. The default code-interpreter template, built under a fresh id (its image comes from the
   artifact cache, as on every `make up` after the first; the boot, probe and snapshot are real).
2. Image A: the default template's root filesystem packed as an OCI image (umoci), pushed to a
   registry on loopback (Debian's docker-registry) and built as a template: a cold layer cache.
3. Image B: A plus one small layer. Its build fetches only what A did not have.
4. An E2B template definition through the unmodified SDK's `Template.build()` on the
   code-interpreter template (testkit/template_defs.py: two COPY uploads, an offline pip install,
   env vars, a RUN step, a start command with wait_for_port): cold (its file uploads and every
   step), the same definition again (every step cached), and with its last step changed.
Phases come from the cubelet's TemplateInfo.phase_ms. Progress goes to stderr; the last stdout
line is one JSON object.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, machine, progress  # noqa: E402
from cube_common.mtls import Role, aio_channel  # noqa: E402
from deploy.supervisor import NodeConfig  # noqa: E402
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc  # noqa: E402
from services.cubelet import default_image  # noqa: E402
from services.cubelet.oci import LayerCache  # noqa: E402
from testkit.registry import Registry  # noqa: E402
from vmm_core import VmmSettings  # noqa: E402

CFG = NodeConfig.from_env()


def run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.strip()[-1500:]}")
    return r.stdout


def ensure_node() -> None:
    if not (CFG.run / "ready").exists():
        progress("bringing the node up (scripts/node_up.sh)")
        subprocess.run(["bash", "scripts/node_up.sh"], cwd=REPO, check=True, stdout=sys.stderr)


async def build(stub, req: pb.BuildTemplateRequest) -> dict:
    t0 = time.monotonic()
    last = None
    async for ev in stub.BuildTemplate(req, timeout=3600):
        last = ev
        if ev.phase in (pb.PULLING, pb.UNPACKING) and ev.bytes_total:
            continue
        progress(f"  {req.template_id}: {pb.TemplateBuildPhase.Name(ev.phase)} {ev.message}")
    wall = (time.monotonic() - t0) * 1000
    if last is None or last.phase != pb.READY:
        raise SystemExit(f"build of {req.template_id} failed: {last.error if last else 'no events'}")
    return {"total_ms": round(wall), "phases_ms": dict(last.template.phase_ms),
            "snapshot_mb": round(last.template.snapshot_bytes / 2**20, 1)}


def sdk_definition_builds(work: Path) -> dict:
    """Section 4: three builds of one name through the E2B SDK, each timed whole and by phase."""
    from e2b import Template

    from bench.common import point_sdk_at_node
    from sdk.client import CubeClient
    from testkit.template_defs import definition, make_context

    point_sdk_at_node(CFG)
    name = f"bench-sdk-{int(time.time())}"
    ctx = make_context(work, name)
    out: dict = {}
    logs: list[str] = []
    with CubeClient() as c:
        try:
            for label, last in (("sdk_cold", "echo one"), ("sdk_all_cached", "echo one"),
                                ("sdk_last_step_changed", "echo two")):
                progress(f"{label}: Template.build({name!r})")
                logs.clear()
                t0 = time.monotonic()
                info = Template.build(definition(ctx, last), name, on_build_logs=lambda e: logs.append(e.message))
                cached = [m for m in logs if m.startswith("CACHED [")]
                wall = (time.monotonic() - t0) * 1000
                job = c.get_template_build(info.build_id)
                out[label] = {"total_ms": round(wall), "phases_ms": dict(job.template.phase_ms),
                              "steps_cached": len(cached), "snapshot_mb": round(job.template.snapshot_bytes / 2**20, 1)}
        finally:
            for t in c.list_templates():
                if name in t.aliases:
                    c.delete_template(t.template_id, force=True)
    return out


def make_images(work: Path, root: Path, registry: Registry) -> tuple[str, str]:
    """Push image A (the default root as one layer) and image B (A + one layer)."""
    layout = work / "layout"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:a")
    bundle = work / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:a", str(bundle))
    shutil.rmtree(bundle / "rootfs")
    run("cp", "-a", str(root), str(bundle / "rootfs"))
    progress("  packing image A (the default root filesystem)")
    run("umoci", "repack", "--image", f"{layout}:a", str(bundle))
    (bundle / "rootfs" / "etc" / "bench-layer-b").write_text("the only change in image B\n")
    run("umoci", "repack", "--image", f"{layout}:b", str(bundle))
    refs = []
    for tag in ("a", "b"):
        dest = f"{registry.host}/bench/default:{tag}"
        run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{dest}")
        refs.append(dest)
    return refs[0], refs[1]


async def main() -> dict:
    ensure_node()
    vmm = VmmSettings.from_env()
    work = Path(tempfile.mkdtemp(prefix="cube-tpl-bench-", dir="/var/tmp"))
    registry = Registry(work / "registry", work / "registry-storage").start()
    suffix = str(int(time.time()))
    ids = [f"bench-default-{suffix}", f"bench-a-{suffix}", f"bench-b-{suffix}"]
    cache = LayerCache(vmm.state_dir / "oci-cache")
    before = set(cache.digests())
    try:
        # As the node's operator (its certificate): the cubelet serves only masters and operators,
        # and an operator's build may pull from the bench's registry on loopback.
        async with aio_channel(CFG.cubelet_addr, CFG.operator_tls(), Role.CUBELET) as ch:
            stub = cubelet_pb2_grpc.CubeletStub(ch)
            progress("default template")
            default = await build(stub, pb.BuildTemplateRequest(
                template_id=ids[0], default_image=pb.DefaultImageSource(), memory_mb=1024, writable_layer_mb=1024))
            progress("making images A and B")
            a_ref, b_ref = make_images(work, default_image.ensure_default_root(vmm), registry)
            results = {}
            for tid, ref, name in ((ids[1], a_ref, "image_a_cold_cache"), (ids[2], b_ref, "image_b_shared_layers")):
                progress(f"{name}: {ref}")
                mark = registry.mark()
                results[name] = await build(stub, pb.BuildTemplateRequest(
                    template_id=tid, oci_image=pb.OciImageSource(reference=ref, insecure_registry=True),
                    memory_mb=1024, writable_layer_mb=1024))
                blobs = [r for r in registry.requests_since(mark) if "/blobs/" in r[1] and r[0] == "GET"]
                results[name]["blobs_fetched"] = len(blobs)
            for tid in ids:
                await stub.DeleteTemplate(pb.DeleteTemplateRequest(template_id=tid, force=True))
        progress("E2B template definition (the SDK's Template.build)")
        results.update(await asyncio.to_thread(sdk_definition_builds, work))
        return {"default_template": default, **results, "machine": machine()}
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
        # The bench's layers are of no use to anyone later.
        for digest in set(cache.digests()) - before:
            cache.remove(digest)


if __name__ == "__main__":
    os.chdir(REPO)
    emit(asyncio.run(main()))
