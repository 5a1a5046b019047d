"""`python -m services.cubelet.artifacts`: build (or find cached) the guest artifacts with Cube's agent.

What `make artifacts`, `make test` and `make up` run before anything boots, so that the first
template build does not wait minutes for a kernel. It is vmm_core's own command with Cube's agent
(``guest_agent.cube_agent()``) as its input, which keeps one implementation of the build and its
report, and vmm_core free of any knowledge of the agent. Extra arguments are passed on.
"""
from __future__ import annotations

import os
import sys

from vmm_core import GuestAgent

from .guest_agent import cube_agent


def agent_args(agent: GuestAgent) -> list[str]:
    """``agent`` as the flags of ``python -m vmm_core artifacts``."""
    args = [f"--agent-package={p.name}={p.source}" for p in agent.packages]
    return args + [f"--agent-requirements={agent.requirements}", f"--agent-constraints={agent.constraints}"]


def main() -> None:
    argv = [sys.executable, "-m", "vmm_core", "artifacts", *agent_args(cube_agent()), *sys.argv[1:]]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
