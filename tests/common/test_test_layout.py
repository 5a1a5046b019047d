"""Every test directory is a package (has __init__.py).

Without one, pytest gives the directory no package of its own: a ``scope="package"`` fixture there
lives for the whole session. It happened: tests/cluster's three-host cluster stayed up through the
rest of `make test` and was stopped (3 minutes) in the teardown of the run's last test."""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_directory_is_a_package():
    dirs = {p.parent for p in TESTS.rglob("test_*.py") if "node_modules" not in p.parts}
    missing = sorted(str(d.relative_to(TESTS)) for d in dirs if not (d / "__init__.py").is_file())
    assert not missing, f"test directories without __init__.py: {missing}"
