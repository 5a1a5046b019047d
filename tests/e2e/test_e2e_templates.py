"""Templates from container images, end to end: a registry on loopback with images this test
builds (umoci, from a static busybox), `cubemastercli tpl create-from-image` / `tpl watch` against
the real node, sandboxes from the template with the unmodified SDK, and every bad input.
"""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deploy.supervisor import NodeConfig
from testkit.registry import Registry
from tests.e2e import cluster

REPO = Path(__file__).resolve().parents[2]
CLI = str(REPO / ".venv/bin/cubemastercli")
CFG = NodeConfig.from_env()
APPLETS = ("sh", "httpd", "dd", "sleep", "false", "cat", "echo", "ls", "id", "df", "mkdir", "rm")


def sh(*argv: str, timeout: float = 300) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr[-2000:]}"
    return r.stdout


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CUBE_MASTER_ADDR": CFG.master_addr})


def build_image(work: Path, name: str, cmd: list[str], *, arch: str = "amd64", salt: bool = False) -> Path:
    """An OCI layout with one image: a static busybox root serving /www, with the given command."""
    layout = work / f"layout-{name}"
    sh("umoci", "init", "--layout", str(layout))
    sh("umoci", "new", "--image", f"{layout}:{name}")
    bundle = work / f"bundle-{name}"
    sh("umoci", "unpack", "--image", f"{layout}:{name}", str(bundle))
    root = bundle / "rootfs"
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "www").mkdir()
    (root / "www/index.html").write_text(f"served by image {name}\n")
    if salt:  # a layer no other image (and no layer cache) has
        (root / "www/salt").write_bytes(os.urandom(4096))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nweb:x:100:100::/www:/bin/sh\n")
    sh("umoci", "repack", "--image", f"{layout}:{name}", str(bundle))
    args = ["umoci", "config", "--image", f"{layout}:{name}", "--config.user", "web", "--config.workingdir", "/www",
            "--config.env", "GREETING=hello", "--config.exposedports", "8080/tcp", "--architecture", arch]
    for c in cmd:
        args += ["--config.cmd", c]
    sh(*args)
    return layout


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-registry")
    reg = Registry(work / "registry", work / "storage").start()
    images = {
        "web": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        "crash": ["/bin/false"],
    }
    for name, cmd in images.items():
        layout = build_image(work, name, cmd)
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{reg.host}/e2e/{name}:1")
    arm = build_image(work, "arm", images["web"], arch="arm64")
    sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{arm}:arm", f"docker://{reg.host}/e2e/arm:1")
    # An image of its own whose layer blob the test tampers with in the registry's storage.
    corrupt = build_image(work, "corrupt", images["web"], salt=True)
    sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{corrupt}:corrupt", f"docker://{reg.host}/e2e/corrupt:1")
    manifest = json.loads(sh("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{reg.host}/e2e/corrupt:1"))
    yield reg, manifest["layers"][0]["digest"]
    reg.stop()


def template_traces(template_id: str) -> list[str]:
    """Everything a template leaves on the node and in etcd."""
    traces = []
    if cluster.etcd_get_prefix(f"/cube/templates/{template_id}"):
        traces.append("etcd template record")
    tdir = CFG.state_dir / "cubelet" / "templates" / template_id
    if tdir.exists():
        traces.append(f"template dir {tdir}")
    leftovers = [p.name for p in (CFG.state_dir / "cubelet" / "templates").glob(f".*{template_id}*")]
    if leftovers:
        traces.append(f"staging/trash dirs {leftovers}")
    return traces


def create_and_watch(*args: str) -> tuple[int, str, str]:
    r = cli("--json", "tpl", "create-from-image", *args)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout).get("jobId") or json.loads(r.stdout).get("job_id")
    assert job_id, r.stdout
    w = cli("tpl", "watch", "--job-id", job_id, timeout=900)
    return w.returncode, w.stdout, w.stderr


def test_image_template_lifecycle(registry, sandboxes):
    reg, _ = registry
    tid = f"e2eweb{uuid.uuid4().hex[:10]}"
    code, out, err = create_and_watch("--image", f"{reg.host}/e2e/web:1", "--insecure-registry",
                                      "--writable-layer-size", "64M", "--memory", "256", "--expose-port", "8080",
                                      "--probe", "8080", "--probe-path", "/", "--template-id", tid)
    assert code == 0, f"watch failed: {err}\n{out}"
    assert out.strip().splitlines()[-1].strip() == tid
    for phase in ("PULLING", "UNPACKING", "BOOTING", "PROBING", "SNAPSHOTTING", "READY"):
        assert phase in out, f"{phase} missing from the watch output:\n{out}"
    listed = json.loads(cli("--json", "tpl", "list").stdout)
    assert tid in json.dumps(listed)
    try:
        sbx = sandboxes.create(template=tid, timeout=120)
        # The image's own service, as its user, through the proxy at <port>-<id>.<domain>.
        tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        r = httpx.get(f"https://{sbx.get_host(8080)}/", verify=tls, timeout=30)
        assert r.status_code == 200 and r.text.strip() == "served by image web"
        # Commands run in the image (no bash: its /bin/sh), with the image's environment.
        assert sbx.commands.run("echo $GREETING", user="root").stdout.strip() == "hello"
        # The writable layer is 64 MB: filling it fails inside, the sandbox and the node go on.
        with pytest.raises(Exception) as e:
            sbx.commands.run("dd if=/dev/zero of=/fill bs=1M count=200", user="root", timeout=120)
        assert "No space left" in str(e.value) or "No space left" in getattr(e.value, "stderr", "")
        assert sbx.commands.run("echo still-here", user="root").stdout.strip() == "still-here"
        # Deleting a template in use is refused, clearly.
        d = cli("tpl", "delete", tid)
        assert d.returncode != 0 and sbx.sandbox_id in (d.stderr + d.stdout)
        sbx.kill()
        d = cli("tpl", "delete", tid)
        assert d.returncode == 0, d.stderr
        deadline = time.monotonic() + 30
        while template_traces(tid) and time.monotonic() < deadline:
            time.sleep(1)
        assert not template_traces(tid)
    finally:
        cli("tpl", "delete", "--force", tid)


@pytest.mark.parametrize("case", ["unknown-tag", "other-arch", "corrupt-layer", "crashing-command", "tiny-disk"])
def test_bad_image_builds_fail_and_leave_nothing(registry, case):
    reg, corrupt_digest = registry
    tid = f"e2ebad{uuid.uuid4().hex[:10]}"
    image = {"unknown-tag": "e2e/web:nope", "other-arch": "e2e/arm:1", "corrupt-layer": "e2e/corrupt:1",
             "crashing-command": "e2e/crash:1", "tiny-disk": "e2e/web:1"}[case]
    expect = {"unknown-tag": "not found", "other-arch": "arm64", "corrupt-layer": "digest",
              "crashing-command": "keeps exiting", "tiny-disk": "too small"}[case]
    if case == "corrupt-layer":
        blob = reg.blob_path(corrupt_digest)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    size = "8M" if case == "tiny-disk" else "64M"
    args = ["--image", f"{reg.host}/{image}", "--insecure-registry", "--writable-layer-size", size, "--memory",
            "256", "--expose-port", "8080", "--probe", "8080", "--template-id", tid]
    r = cli("--json", "tpl", "create-from-image", *args)
    if r.returncode != 0:  # refused before any build (the master validates some input itself)
        message = r.stderr + r.stdout
    else:
        job_id = json.loads(r.stdout).get("jobId") or json.loads(r.stdout).get("job_id")
        w = cli("tpl", "watch", "--job-id", job_id, timeout=600)
        assert w.returncode != 0, f"{case}: the build did not fail:\n{w.stdout}"
        message = w.stderr + w.stdout
    assert expect in message.lower(), f"{case}: expected {expect!r} in:\n{message[-3000:]}"
    deadline = time.monotonic() + 30
    while template_traces(tid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not template_traces(tid), f"{case}: left behind {template_traces(tid)}"


def test_template_id_in_use_is_refused(registry):
    reg, _ = registry
    r = cli("tpl", "create-from-image", "--image", f"{reg.host}/e2e/web:1", "--insecure-registry",
            "--writable-layer-size", "64M", "--expose-port", "8080", "--probe", "8080",
            "--template-id", "code-interpreter")
    assert r.returncode != 0
    assert "already" in (r.stderr + r.stdout).lower()
