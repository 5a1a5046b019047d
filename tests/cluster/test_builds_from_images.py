"""E2B template definitions on a container image, as a team builds them: the unmodified SDK's
`Template().from_dockerfile(...)` and `.from_image(...)` against the cluster (auth on, a team's key),
pulling from a registry the operator allowlisted (the cluster's, on this machine's bridge address,
plain HTTP), steps run in a real build VM on whichever host the master picks.

- The Dockerfile's steps (USER, RUN, COPY, ENV, WORKDIR) all take effect; a file one RUN writes in
  /tmp is there for the next RUN and in the sandbox; the last USER and WORKDIR are the sandboxes'
  defaults for commands (E2B persists them), the image's ENV and the Dockerfile's ENV reach them.
- The same definition again takes every step from the cache, and its sandboxes are the same: what
  the steps left is on the disk the cache keeps.
- A registry the operator did not allowlist (a private address) and an image the registry does not
  have fail the build with the SDK's BuildException naming why, and leave no template and no
  build VM.
- The JS SDK's `Template.build()` of the same Dockerfile (it parses it itself) makes the same
  template (tests/e2e/js/image_build.mjs).
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from deploy import cluster as cluster_mod
from testkit.images import WEB, busybox_image, push
from tests.support.npm import npm_ci

pytestmark = pytest.mark.timeout(900)

IMAGE = "team/web:1"
# What a sandbox of the built template is asked (commands run as its default user, in its default
# working directory), and what it answers.
PROBE = "cat /opt/tool/stamp; cat note.txt; echo $TOOL_HOME/$GREETING; id -un; pwd; stat -c '%U' /tmp/web-was-here"
EXPECTED = ["staged-in-tmp", "hello from root", "copied from the context", "/opt/tool/hello", "web", "/opt/app",
            "web"]
JS = Path(__file__).resolve().parents[1] / "e2e" / "js"

CLIENT = """
import json, time
from e2b import BuildException, Sandbox, Template

P = json.loads(PARAMS)
out = {}


def build(template, name):
    logs = []
    t0 = time.monotonic()
    Template.build(template, name, on_build_logs=lambda e: logs.append(e.message))
    return round(time.monotonic() - t0, 1), logs


def probe(name):
    sbx = Sandbox.create(name, timeout=120)
    try:
        return sbx.commands.run(P["probe"]).stdout.splitlines()
    finally:
        sbx.kill()


df = Template(file_context_path=P["ctx"]).from_dockerfile(P["ctx"] + "/Dockerfile")
out["cold_s"], logs = build(df, "img-df")
out["cold_steps"] = [line for line in logs if line.startswith("[")]
out["cold"] = probe("img-df")
out["cached_s"], logs = build(df, "img-df")
out["cached_steps"] = [line for line in logs if line.startswith("CACHED [")]
out["cached"] = probe("img-df")

out["refused"] = {}
for name, ref in (("img-private", P["private"]), ("img-unknown", P["unknown"])):
    try:
        Template.build(Template().from_image(ref).run_cmd("echo never"), name)
        out["refused"][name] = "built"
    except BuildException as e:
        out["refused"][name] = str(e)
    out["refused"][name + "-exists"] = Template.exists(name)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def image(cluster, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("images")
    push(busybox_image(work, "web", WEB), "web", f"{cluster.registry.host}/{IMAGE}")
    return f"{cluster.registry.host}/{IMAGE}"


def test_a_team_builds_from_a_dockerfile_on_an_allowlisted_registry(cluster, image, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app/note.txt").write_text("copied from the context\n")
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {image}
        USER root
        RUN echo staged-in-tmp > /tmp/stage
        RUN mkdir -p /opt/tool && cat /tmp/stage > /opt/tool/stamp && echo "$GREETING from $(id -un)" >> /opt/tool/stamp
        COPY app /opt/app
        ENV TOOL_HOME=/opt/tool
        WORKDIR /opt/app
        USER web
        RUN touch /tmp/web-was-here
        """))
    ctx.chmod(0o755)
    gateway, _, port = cluster.registry.host.partition(":")
    params = {"ctx": str(ctx), "probe": PROBE, "private": f"{gateway}:{int(port) + 1}/{IMAGE}",
              "unknown": f"{cluster.registry.host}/team/web:nope"}
    out = cluster.sdk(CLIENT.replace("PARAMS", repr(json.dumps(params))), timeout=840)
    print(f"\ncold build {out['cold_s']}s, cached {out['cached_s']}s")

    # USER root, WORKDIR / (the SDK's Docker defaults), then the Dockerfile's eight instructions.
    assert len(out["cold_steps"]) == 10, out["cold_steps"]
    assert out["cold"] == EXPECTED, out["cold"]
    assert len(out["cached_steps"]) == 10, out["cached_steps"]
    assert out["cached"] == EXPECTED, out["cached"]

    refused = out["refused"]
    assert "registry_allowlist" in refused["img-private"] and "private" in refused["img-private"], refused
    assert "nope" in refused["img-unknown"] and refused["img-unknown"] != "built", refused
    assert refused["img-private-exists"] is False and refused["img-unknown-exists"] is False, refused
    left = subprocess.run(["pgrep", "-af", "tplbuild-"], capture_output=True, text=True).stdout
    assert "qemu" not in left, left

    # The JS SDK parses the same Dockerfile itself: the same template, under another name.
    node = npm_ci(JS, "the JS SDK's Template.build")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "CUBE_")) and k != "SSL_CERT_FILE"}
    sdk = cluster_mod.sdk_env(cluster.s)
    env.update({"E2B_API_URL": sdk["E2B_API_URL"], "E2B_API_KEY": sdk["E2B_API_KEY"],
                "NODE_EXTRA_CA_CERTS": sdk["SSL_CERT_FILE"]})
    r = subprocess.run(["nsenter", f"--net=/run/netns/{cluster.s.netns('h1')}", "--", node, "image_build.mjs",
                        str(ctx), str(ctx / "Dockerfile"), "img-js", PROBE], cwd=JS, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(js["steps"]) == 10 and js["probe"] == EXPECTED, js
