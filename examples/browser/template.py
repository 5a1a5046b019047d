"""The `browser` template on the running node: the image of image.py, built by the operator's own
command, `cubemastercli tpl create-from-image`.

    eval "$(make -s env)"
    .venv/bin/python -m examples.browser.template        # or: make template-browser

The template's id is ``browser-<image key>``, so an unchanged image is never built twice: when that
template is ready this only points the alias `browser` at it (and says so). A changed image builds
a new template and then moves the alias; the old one stays until an operator deletes it (sandboxes may
still run from it).

The template exposes 9222 (CDP, through the image's socat) and is snapshotted once
``GET /json/version`` answers there: every sandbox starts with Chromium up and idle.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples.browser` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.browser import image
from sdk.client import CubeClient, CubeError, Status
from sdk.gen.cube.v1 import master_pb2

ALIAS = "browser"
CLI = str(Path(__file__).resolve().parents[2] / ".venv/bin/cubemastercli")
MEMORY_MB = 1024  # Chromium's browser, GPU-less renderer and network processes: ~300 MB in use
DISK = "1G"


def create_command(reference: str, template_id: str) -> list[str]:
    """The operator's command that builds the template (printed, then run)."""
    return ["tpl", "create-from-image", "--image", reference, "--template-id", template_id,
            "--expose-port", str(image.CDP_PORT), "--probe", str(image.CDP_PORT), "--probe-path", "/json/version",
            "--cpu", "1", "--memory", str(MEMORY_MB), "--writable-layer-size", DISK, "--wait"]


def ensure_template() -> str:
    """The `browser` template's id, built (or only re-aliased) as the module docstring says."""
    reference = image.ensure_image()
    template_id = f"browser-{image.image_key()}"
    with CubeClient() as c:
        ready = _ready(c, template_id)
        if not ready:
            args = create_command(reference, template_id)
            print("cubemastercli " + " ".join(args), file=sys.stderr)
            r = subprocess.run([CLI, *args], text=True, timeout=3600, stdout=sys.stderr)
            if r.returncode != 0:
                raise SystemExit(f"the browser template's build failed (exit {r.returncode})")
        # Pointed (or moved) only now: sandboxes of the alias never meet a template still building.
        c.set_template_alias(ALIAS, template_id)
        print(f"template {template_id}{' was ready: nothing built' if ready else ' built'}; "
              f"{ALIAS!r} names it", file=sys.stderr)
        return template_id


def _ready(c: CubeClient, template_id: str) -> bool:
    try:
        return c.get_template(template_id).status == master_pb2.TEMPLATE_STATUS_READY
    except CubeError as e:
        if e.code is not Status.NOT_FOUND:
            raise
        return False


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(ensure_template())


if __name__ == "__main__":
    main()
