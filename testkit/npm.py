"""npm packages for the node scripts tests drive: `npm ci` into a directory's node_modules once per
lockfile. A stamp in node_modules holds the hash of package.json and package-lock.json, so a run
after the first costs nothing and a changed lockfile is installed again.

`testkit.prepare` installs them before the suite runs (in its namespace npm's registry is out of
reach); tests check them again through tests/support/npm.py, which then finds the stamp."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path


class NpmError(RuntimeError):
    pass


def node_modules(directory: Path, what: str, timeout: float = 600) -> str:
    """The `node` binary, once ``directory``'s node_modules matches its lockfile. NpmError (naming
    ``what`` needs them) when node or npm is missing or `npm ci` fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise NpmError(f"node and npm are needed for {what} (Debian: apt-get install nodejs npm)")
    want = hashlib.sha256((directory / "package-lock.json").read_bytes()
                          + (directory / "package.json").read_bytes()).hexdigest()
    stamp = directory / "node_modules" / ".cube-lock-sha256"
    if not (stamp.exists() and stamp.read_text() == want):
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise NpmError(f"npm ci for {what} failed in {directory}:\n{r.stdout}\n{r.stderr}")
        stamp.write_text(want)
    return node
