"""What the guest agent consists of, as files on this host: the one description of it that every
builder of a guest base image uses (the cubelet, `make artifacts`, tests, benchmarks).

Invariants:
- Standard library only, and nothing of the host side (vmm_core, the other services): envd is
  standalone and this module ships inside it. Callers turn the description into their image
  builder's input (``vmm_core.GuestAgent``).
- The agent is two packages, importable from one directory in the guest: ``services.envd`` (started
  as ``python -m services.envd``) and ``cube_common``, which envd imports.
- Its PyPI dependencies are ``requirements.txt`` next to this file, at the versions the project's
  ``requirements.lock`` pins (used as pip constraints). The lock belongs to the source tree, next to
  the ``services`` package; without it there is no agent to describe, so that is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cube_common
import services
import services.envd

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
LOCK_NAME = "requirements.lock"


class BundleError(RuntimeError):
    """The agent's files are not all where this source tree should have them."""


@dataclass(frozen=True)
class AgentBundle:
    # (import name, package directory), in the order they are installed.
    packages: tuple[tuple[str, Path], ...]
    requirements: Path
    constraints: Path


def _package(module: ModuleType) -> tuple[str, Path]:
    # From the imported module rather than a path relative to this file: wherever Python found the
    # package is what the agent runs on the host too.
    if module.__file__ is None:
        raise BundleError(f"{module.__name__} is not a regular package (no __init__.py)")
    return module.__name__, Path(module.__file__).resolve().parent


def agent_bundle() -> AgentBundle:
    """The agent's packages, requirements and lock file. Raises BundleError when the lock is absent."""
    if services.__file__ is None:
        raise BundleError("the services package is not a regular package (no __init__.py)")
    root = Path(services.__file__).resolve().parent.parent
    lock = root / LOCK_NAME
    if not lock.is_file():
        raise BundleError(f"{LOCK_NAME} not found at {lock}: the guest agent's dependencies are pinned by the "
                          "lock file of the source tree the services package comes from")
    return AgentBundle(packages=(_package(services.envd), _package(cube_common)), requirements=REQUIREMENTS,
                       constraints=lock)
