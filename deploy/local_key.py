"""The node's own API key on disk: the local team's admin key that `make up` issues
(deploy/bootstrap.py) and `make env` exports as E2B_API_KEY (deploy/env.py).

Invariants: the key lives at ``$CUBE_STATE_DIR/secrets/api-key``; the directory is 0700 and the
file 0600 (owner only: whoever holds the key can act for the local team as its admin); the file
is written atomically (a temporary file in the same directory, flushed, then renamed over), so a
reader sees the old key or the new one, never a part of one. The master keeps only the key's
SHA-256, so this file is the key's only copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from cube_common.files import write_atomic
from cube_common.teams import API_KEY_RE as KEY_RE


def path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "api-key"


def read(state_dir: Path) -> str | None:
    """The stored key, or None when there is none (or the file holds no key of the right shape)."""
    p = path(state_dir)
    if not p.is_file():
        return None
    key = p.read_text().strip()
    return key if KEY_RE.match(key) else None


def write(state_dir: Path, key: str) -> Path:
    if not KEY_RE.match(key):
        raise ValueError("not an API key (want e2b_ and 40 lowercase hex digits)")
    p = path(state_dir)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(p.parent, 0o700)  # mkdir's mode is masked by the umask, and the directory may be older
    write_atomic(p, (key + "\n").encode(), 0o600)
    return p
