"""E2B template definitions, end to end: the unmodified SDK's `Template().….build()` against the real
node, on top of Cube's code-interpreter template.

The definition copies a local directory and a wheel the test writes (its COPY uploads go to the API's
signed URLs), installs the wheel with pip (offline: `--no-index`), sets env vars, runs a command and
starts a web server with E2B's `wait_for_port` as the ready command. Sandboxes from the name then
have all of it, the server already running (it is in the snapshot). The same definition built
again takes every step from the cache; with its last step changed, only that step runs again. A
failing step fails the build with the SDK's BuildException naming the step and carrying its output,
and leaves nothing behind; a COPY whose files were never uploaded fails at that step. The JS SDK's
Template.build runs the same flow (tests/e2e/js/template_build.mjs).
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import uuid

import httpx
import pytest
from e2b import BuildException, Template
from e2b.template.main import TemplateClass

from testkit.template_defs import PORT, STEPS, definition, make_context
from tests.e2e.run import CREATED
from tests.e2e.test_e2e_js import JS, js_env
from tests.support.npm import npm_ci

pytestmark = pytest.mark.timeout(1500)


def _build(template: TemplateClass, name: str) -> tuple[float, list[str]]:
    logs: list[str] = []
    t0 = time.monotonic()
    Template.build(template, name, on_build_logs=lambda e: logs.append(e.message))
    return time.monotonic() - t0, logs


def _no_build_vm_left() -> None:
    out = subprocess.run(["pgrep", "-af", "tplbuild-"], capture_output=True, text=True).stdout
    assert "qemu" not in out, out


@pytest.fixture
def names(api):
    """Template names a test builds under: deleted (with what they name) when it ends."""
    made: list[str] = []
    yield made
    for name in made:
        r = api.delete(f"/templates/{name}", params={"force": "true"})
        assert r.status_code in (204, 404), r.text


def test_sdk_template_build_with_cache_and_a_one_step_rebuild(tmp_path, sandboxes, names, api):
    value = uuid.uuid4().hex[:12]
    name = f"sdk-{value}"
    names.append(name)
    ctx = make_context(tmp_path, value)

    cold_s, logs = _build(definition(ctx, "echo first-build-marker"), f"{name}:v1")
    print(f"cold build {cold_s:.1f}s")
    assert any("first-build-marker" in line for line in logs), logs[-40:]
    assert any("Uploaded 'app'" in line for line in logs), logs[:20]
    assert Template.exists(name)
    assert "v1" in [t.tag for t in Template.get_tags(name)]

    sbx = sandboxes.create(template=f"{name}:v1")
    assert sbx.run_code("import cubedemo; cubedemo.VALUE").text.strip("'") == value
    out = sbx.commands.run("echo $CUBE_DEMO/$CUBE_DEMO_WORDS; /opt/app/run.sh; stat -c '%U %a' /opt/app/run.sh")
    assert out.stdout.splitlines() == ["on/two words", "run.sh says hi", "user 755"], out.stdout
    # The start command runs in the snapshot: the server answers at once, through the proxy.
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    page = httpx.get(f"https://{sbx.get_host(PORT)}/index.html", verify=tls, timeout=30)
    assert page.status_code == 200 and value in page.text
    sbx.kill()

    # The same definition again: every step from the cache (the uploads too: same hashes).
    warm_s, logs = _build(definition(ctx, "echo first-build-marker"), name)
    print(f"cached rebuild {warm_s:.1f}s")
    cached = [line for line in logs if line.startswith("CACHED [")]
    assert len(cached) == STEPS, logs[-40:]
    assert any("already cached" in line for line in logs)
    assert not any(line == "first-build-marker" for line in logs)

    # Only the last step changed: it alone runs.
    changed_s, logs = _build(definition(ctx, "echo second-build-marker"), name)
    print(f"rebuild after a change to the last step {changed_s:.1f}s")
    assert len([line for line in logs if line.startswith("CACHED [")]) == STEPS - 1, logs[-40:]
    assert "second-build-marker" in logs
    sbx = sandboxes.create(template=name)
    assert sbx.run_code("import cubedemo; cubedemo.VALUE").text.strip("'") == value
    sbx.kill()
    # Each build made a template; the name's earlier ones went once nothing used them.
    mine = [t for t in api.get("/templates").json() if name in t["aliases"]]
    assert len(mine) == 1, mine
    _no_build_vm_left()


def test_a_failing_step_fails_the_build_naming_it_and_leaves_nothing(tmp_path):
    ctx = make_context(tmp_path, "x")
    name = f"sdk-fail-{uuid.uuid4().hex[:8]}"
    template = (Template(file_context_path=str(ctx)).from_template("code-interpreter")
                .run_cmd("echo fine").run_cmd("echo this step breaks >&2; exit 7"))
    with pytest.raises(BuildException) as e:
        Template.build(template, name)
    assert "step 2" in str(e.value) and "exit status 7" in str(e.value) and "this step breaks" in str(e.value)
    assert not Template.exists(name)
    _no_build_vm_left()


def test_bad_definitions_get_e2b_errors(api):
    r = api.post("/v3/templates", json={"name": f"sdk-bad-{uuid.uuid4().hex[:8]}"})
    tid, bid = r.json()["templateID"], r.json()["buildID"]
    for body, words in [
        ({"steps": []}, "fromImage"),
        ({"fromTemplate": "code-interpreter", "steps": [{"type": "FROB", "args": []}]}, "FROB"),
        ({"fromTemplate": "code-interpreter", "steps": [{"type": "COPY", "args": ["a", "/a"]}]}, "step 1"),
        ({"fromTemplate": "code-interpreter", "steps": [{"type": "ENV", "args": ["A"]}]}, "step 1"),
        ({"fromTemplate": "no-such-template-here"}, "no-such-template-here"),
    ]:
        bad = api.post(f"/v2/templates/{tid}/builds/{bid}", json=body)
        assert 400 <= bad.status_code < 500 and words in bad.json()["message"], (body, bad.text)
        assert set(bad.json()) == {"code", "message"}
    assert api.post("/v3/templates", json={"name": "Bad Name!"}).status_code == 400
    # The refused definitions left the build waiting. A COPY whose files never came fails it at
    # that step (after a step that passed), and frees its id.
    assert api.get(f"/templates/{tid}/builds/{bid}/status").json()["status"] == "waiting"
    missing = "0" * 64
    r = api.post(f"/v2/templates/{tid}/builds/{bid}", json={
        "fromTemplate": "code-interpreter",
        "steps": [{"type": "RUN", "args": ["true"]}, {"type": "COPY", "args": ["a", "/a"], "filesHash": missing}]})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 600
    while (status := api.get(f"/templates/{tid}/builds/{bid}/status").json())["status"] not in ("ready", "error"):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status["status"] == "error" and status["reason"]["step"] == "2", status
    assert "never uploaded" in status["reason"]["message"]
    # A second start of the same build is refused in E2B's error shape.
    again = api.post(f"/v2/templates/{tid}/builds/{bid}", json={"fromTemplate": "code-interpreter"})
    assert again.status_code in (400, 409) and set(again.json()) == {"code", "message"}
    assert api.get(f"/templates/{tid}").status_code == 404
    _no_build_vm_left()


def test_js_sdk_template_build(names):
    """The same flow with the unmodified JS SDK (tests/e2e/js/template_build.mjs)."""
    node = npm_ci(JS, "the JS SDK test")
    marker = uuid.uuid4().hex[:10]
    name = f"sdk-js-{marker}"
    names.append(name)
    r = subprocess.run([node, "template_build.mjs", name, marker], cwd=JS, env=js_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    CREATED.add(out["sandboxId"])
    print(f"JS build {out['buildMs'] / 1000:.1f}s")
    assert out["stepOutput"] and out["uploaded"], out
    assert out["env"] == marker and out["page"] == {"status": 200, "body": f"<p>{marker}</p>"}, out
    assert out["killed"] is True
    _no_build_vm_left()
