"""The guest agent a base image carries: an input of vmm_core, described by its caller.

vmm_core runs whatever agent it is given and knows nothing about it beyond this description: which
Python packages to put in the image, and which PyPI packages (at which versions) they need there.

Invariants:
- Every package lands in the base image's app directory (on the agent's PYTHONPATH) under its
  import name: ``services.envd`` at ``<app>/services/envd``, its parents as empty packages.
- Every input exists when a base image is built; a missing or malformed one is an
  ``ArtifactError`` naming it, never an image built without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError


@dataclass(frozen=True)
class AgentPackage:
    """One Python package of the agent: the directory ``source`` (with its ``__init__.py``),
    importable in the guest as ``name`` (dotted)."""

    name: str
    source: Path

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))


@dataclass(frozen=True)
class GuestAgent:
    """What the guest agent consists of, as files on this host.

    ``packages`` are copied into the image; ``requirements`` (a pip requirements file) lists the
    PyPI packages they need at run time, installed at the versions ``constraints`` (a pip
    constraints file, typically a project's lock file) pins. The contents of all of them are part
    of the base image's cache key.
    """

    packages: tuple[AgentPackage, ...]
    requirements: Path
    constraints: Path

    def check(self) -> None:
        """Raise ArtifactError unless every input is there and the packages fit together."""
        if not self.packages:
            raise ArtifactError("the guest agent has no packages")
        names = {p.parts for p in self.packages}
        if len(names) != len(self.packages):
            raise ArtifactError(f"the guest agent names a package twice: {[p.name for p in self.packages]}")
        for p in self.packages:
            if not all(part.isidentifier() for part in p.parts):
                raise ArtifactError(f"guest agent package name {p.name!r} is not a dotted Python name")
            if not (p.source / "__init__.py").is_file():
                raise ArtifactError(f"guest agent package {p.name}: {p.source} is not a Python package directory")
            # Parents are written as empty packages, so a package cannot also be another's parent.
            if any(other[:len(p.parts)] == p.parts for other in names if other != p.parts):
                raise ArtifactError(f"guest agent package {p.name} contains another of its packages")
        for what, path in (("requirements", self.requirements), ("constraints", self.constraints)):
            if not path.is_file():
                raise ArtifactError(f"the guest agent's {what} file {path} does not exist")
