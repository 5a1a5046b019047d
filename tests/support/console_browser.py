"""The web console in a real browser, for the control and e2e tests: Debian's Chromium (installed by
scripts/setup.sh) driven by npm playwright-core (pinned in tests/control/console/package-lock.json,
`npm ci` once per lockfile) through tests/control/console/console_browser.mjs, and the check that a
screenshot holds a rendered page."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.support.npm import npm_ci

JS = Path(__file__).resolve().parents[1] / "control" / "console"
CHROMIUM = "/usr/bin/chromium"


def node_with_playwright() -> str:
    """The `node` binary, once console/node_modules matches the lockfile; fails the test when node,
    npm or Chromium is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    return npm_ci(JS, "the console's browser test", timeout=300)


def drive(node: str, timeout: float = 100, **env: str) -> dict:
    """Run console_browser.mjs with ``env`` (its header names the variables); what it saw."""
    full = {**os.environ, "CHROMIUM": CHROMIUM, **env}
    r = subprocess.run([node, "console_browser.mjs"], cwd=JS, env=full, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def rendered(path: str) -> tuple[float, int]:
    """(share of pixels unlike the page's background, distinct colours) of a screenshot: a blank
    or unstyled page has next to none of either."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((640, 640))  # enough to judge, and fast
    counts = img.getcolors(maxcolors=1 << 20) or []
    background = max(counts)[0] if counts else 0
    return 1 - background / (img.width * img.height), len(counts)


def assert_rendered(shots: dict[str, str]) -> None:
    """Every screenshot is a rendered page: many pixels unlike the background, many colours."""
    assert shots
    for name, path in shots.items():
        share, colours = rendered(path)
        assert share > 0.02 and colours > 30, (name, share, colours)
