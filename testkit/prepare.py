"""`python -m testkit.prepare`: everything the test suite fetches from the network, fetched and built
before it runs (what `make test` does first).

The suite itself runs in a network namespace with nothing but loopback (testkit/isolated.py), so
whatever needs Debian's mirror, PyPI or npm must be in place by then:

- the guest artifacts with Cube's agent (kernel, initramfs, base image: `services.cubelet.artifacts`);
- the default template's image (`services.cubelet.default_image`: Debian and PyPI packages, what a
  test node's first template build would otherwise fetch);
- the browser example's image (`examples.browser.image`: Debian's Chromium, Playwright);
- the npm packages of the tests that drive node scripts (`npm ci` per lockfile, testkit/npm.py).

Each is cached by its inputs, in the node's artifact cache (``$CUBE_STATE_DIR/artifacts``) or in the
lockfile's node_modules, so a run after the first only checks keys. The builds run as their own
commands (the modules they live in are not testkit's to import).
"""
from __future__ import annotations

import subprocess
import sys
import time

from testkit import REPO, npm

# Commands that build (or find cached) what the suite needs, each quiet on success.
BUILDS = (
    ("guest artifacts", "services.cubelet.artifacts"),
    ("default template image", "services.cubelet.default_image"),
    ("browser example image", "examples.browser.image"),
)
# The directories whose package-lock.json tests install with `npm ci` (testkit/npm.py).
NPM_DIRS = (REPO / "tests" / "e2e" / "js", REPO / "tests" / "control" / "console")


def main() -> None:
    for what, module in BUILDS:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", module], cwd=REPO, stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SystemExit(f"prepare: the {what} failed to build (python -m {module}, exit {r.returncode})")
        took = time.monotonic() - t0
        if took > 5:  # quiet when everything was cached
            print(f"prepare: {what} ready in {took:.0f} s", flush=True)
    for d in NPM_DIRS:
        try:
            npm.node_modules(d, f"the tests in {d.relative_to(REPO)}")
        except npm.NpmError as e:
            raise SystemExit(f"prepare: {e}") from None


if __name__ == "__main__":
    main()
