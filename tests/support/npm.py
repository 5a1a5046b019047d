"""npm packages for tests that drive node scripts (testkit/npm.py): a test that needs them fails,
naming what needs them, when they cannot be installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.npm import NpmError, node_modules


def npm_ci(directory: Path, what: str, timeout: float = 600) -> str:
    """The `node` binary, once ``directory``'s node_modules matches its lockfile."""
    try:
        return node_modules(directory, what, timeout)
    except NpmError as e:
        pytest.fail(str(e))
