"""An E2B template definition with every kind of step, for tests and benchmarks: a build context
holding a directory and a minimal wheel, and `Template().from_template("code-interpreter")` copying
both, installing the wheel offline (`pip install --no-index`), setting env vars, running a last
command (the one callers change to measure a one-step rebuild) and starting a web server with the
SDK's `wait_for_port` as its ready command. Nothing in it reaches the network."""
from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

from e2b import Template, wait_for_port
from e2b.template.main import TemplateClass

WHEEL = "cubedemo-0.1-py3-none-any.whl"
PORT = 8765
STEPS = 5  # the definition's steps (the start and ready command are not steps)


def write_wheel(path: Path, value: str) -> Path:
    """A minimal pure-Python wheel (cubedemo 0.1) whose module holds ``value``."""
    files = {
        "cubedemo/__init__.py": f"VALUE = {value!r}\n".encode(),
        "cubedemo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: cubedemo\nVersion: 0.1\n",
        "cubedemo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: cube-test\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("cubedemo-0.1.dist-info/RECORD,,")
    files["cubedemo-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    whl = path / WHEEL
    whl.write_bytes(buf.getvalue())
    return whl


def make_context(root: Path, value: str) -> Path:
    """A build context: app/static/index.html (holding ``value``), an executable app/run.sh, the wheel."""
    ctx = root / "ctx"
    (ctx / "app" / "static").mkdir(parents=True)
    (ctx / "app" / "static" / "index.html").write_text(f"<h1>{value}</h1>\n")
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\necho run.sh says hi\n")
    (ctx / "app" / "run.sh").chmod(0o755)
    write_wheel(ctx, value)
    return ctx


def definition(ctx: Path, last: str) -> TemplateClass:
    """The definition, its last step running ``last``."""
    return (Template(file_context_path=str(ctx))
            .from_template("code-interpreter")
            .copy("app", "/opt/app/")
            .copy(WHEEL, "/tmp/wheels/")
            .pip_install(["--no-index", f"/tmp/wheels/{WHEEL}"])
            .set_envs({"CUBE_DEMO": "on", "CUBE_DEMO_WORDS": "two words"})
            .run_cmd(last)
            .set_start_cmd(f"python3 -m http.server {PORT} --directory /opt/app/static", wait_for_port(PORT)))
