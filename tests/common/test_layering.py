"""The dependency direction of docs/architecture.md, checked on every import in the tree.

Services talk to each other over gRPC through the generated code in ``sdk.gen``, never by importing
one another; ``cube_common`` is the bottom and imports nothing of ours; ``vmm_core`` knows nothing of
the services; nothing but ``tests`` imports ``tests``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = ("cube_common", "vmm_core", "services", "sdk", "deploy", "testkit", "bench", "tests")

# unit -> the units it may import (besides itself). A unit is a top-level package, or one service.
ALLOWED: dict[str, set[str]] = {
    "cube_common": set(),
    "vmm_core": {"cube_common"},
    "sdk.gen": set(),
    "sdk.typed": set(),
    "sdk": {"cube_common", "sdk.gen", "sdk.typed"},
    # The guest agent: standalone inside every sandbox; `services` is its parent package (bundle.py
    # finds the project root through it).
    "services.envd": {"cube_common", "services"},
    "services.vs": {"cube_common", "sdk.gen"},
    # The cubelet installs the agent into guests (services.envd.bundle) and runs VMs.
    "services.cubelet": {"cube_common", "sdk.gen", "vmm_core", "services.envd"},
    "services.master": {"cube_common", "sdk.gen"},
    "services.api": {"cube_common", "sdk.gen"},
    "services.proxy": {"cube_common", "sdk.gen"},
    "services": set(),
    # The one-node supervisor starts the services as processes; it imports only what it shares.
    "deploy": {"cube_common", "sdk.gen", "vmm_core"},
    "testkit": {"cube_common", "sdk.gen", "vmm_core", "services.vs"},
}
# Benchmarks and tests drive everything; only benchmarks must not lean on the tests.
ANYTHING_BUT = {"bench": {"tests"}, "tests": set()}


def allowed(src: str, dst: str) -> bool:
    if src in ANYTHING_BUT:
        return dst.split(".")[0] not in ANYTHING_BUT[src]
    return dst == src or dst in ALLOWED[src]


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "services" and len(parts) > 1 and parts[1] != "__init__":
        return "services." + parts[1]
    if parts[0] == "sdk" and len(parts) > 1 and parts[1] in ("gen", "typed"):
        return "sdk." + parts[1]
    return parts[0]


def imports_of(path: Path, module: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".")[: -node.level] if path.name != "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                out.add(".".join([*package, node.module] if node.module else package))
            elif node.module:
                out.add(node.module)
    return {m for m in out if m.split(".")[0] in OURS}


def sources() -> list[Path]:
    skip = {".venv", ".git", "gen", "typed", "__pycache__"}
    return sorted(p for top in OURS for p in (REPO / top).rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


def test_every_unit_is_known():
    units = {unit_of(".".join(p.relative_to(REPO).with_suffix("").parts)) for p in sources()}
    assert units <= set(ALLOWED) | set(ANYTHING_BUT), units - set(ALLOWED) - set(ANYTHING_BUT)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_dependency_direction(path):
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    src = unit_of(module)
    bad = sorted(m for m in imports_of(path, module) if not allowed(src, unit_of(m)))
    assert not bad, f"{module} ({src}) imports {bad}, against the dependency direction (docs/architecture.md)"
