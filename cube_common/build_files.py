"""Where the archives of E2B template COPY steps live: ``<build files dir>/<team dir>/<hash>.tar``.

The API writes them (services/api/build_files.py owns the directory: uploads, checks, pruning);
a node's template builds only read them (services/cubelet/build_steps.py), from this directory when
the node shares it with the API (one machine), else through the signed read URL each COPY step of a
build carries (services/cubelet/build_file_fetch.py). Both name a team's directory and an archive
with the functions here, so they agree on the layout.
"""
from __future__ import annotations

import re
from pathlib import Path

TEAM_DIR_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
# The directory of builds with no team: an operator's, or the local team's with auth off.
OPERATOR_TEAM_DIR = "_local"


def team_dir(team_id: str) -> str:
    """The directory name of a team id; ValueError for one that is not safe as a path segment."""
    name = team_id or OPERATOR_TEAM_DIR
    if not TEAM_DIR_RE.match(name):
        raise ValueError(f"team id {team_id!r} cannot name a build files directory")
    return name


def archive_path(root: Path, team_id: str, files_hash: str) -> Path:
    """The archive of ``files_hash`` uploaded by ``team_id`` (ValueError for a malformed hash)."""
    if not HASH_RE.match(files_hash):
        raise ValueError("a files hash is 64 lowercase hex digits")
    return root / team_dir(team_id) / f"{files_hash}.tar"
