"""`python -m vmm_core artifacts`: build (or find cached) the guest kernel, initramfs and base image.

The guest agent the base image carries is given on the command line (vmm_core knows no agent of
its own); every flag about it is required, so a missing one stops here rather than building an
image without the agent:

    python -m vmm_core artifacts --agent-package NAME=DIR [--agent-package NAME=DIR ...] \\
        --agent-requirements FILE --agent-constraints FILE
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import accel
from .artifacts import ensure_guest_artifacts
from .guest.agent import AgentPackage, GuestAgent
from .settings import VmmSettings


def _package(value: str) -> AgentPackage:
    name, sep, source = value.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"want NAME=DIR (e.g. myagent=src/myagent), got {value!r}")
    return AgentPackage(name, Path(source))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vmm_core")
    p.add_argument("command", choices=["artifacts"])
    p.add_argument("--agent-package", type=_package, action="append", required=True, metavar="NAME=DIR",
                   help="a Python package of the guest agent: its import name in the guest and its directory here "
                        "(repeat for each package)")
    p.add_argument("--agent-requirements", type=Path, required=True, metavar="FILE",
                   help="pip requirements file: the PyPI packages the agent needs in the guest")
    p.add_argument("--agent-constraints", type=Path, required=True, metavar="FILE",
                   help="pip constraints file (a lock file) pinning their versions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = VmmSettings.from_env()
    agent = GuestAgent(tuple(args.agent_package), args.agent_requirements, args.agent_constraints)
    g = ensure_guest_artifacts(settings, agent)
    print(json.dumps({"accel": accel.resolve(settings.accel).value, "kernel": str(g.kernel.vmlinuz),
                      "kernel_version": g.kernel.key, "initramfs": str(g.initramfs.path),
                      "base_image": str(g.base_image.path), "key": g.key}, indent=1))


if __name__ == "__main__":
    main()
