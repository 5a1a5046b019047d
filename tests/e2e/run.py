"""Identity of this e2e run: every sandbox it creates carries the metadata {TAG: RUN_ID}, and every
id it gets back is remembered in CREATED for the end-of-session leftover check. (A module of its
own because pytest imports conftest.py under a second name.)"""
from __future__ import annotations

import uuid

RUN_ID = uuid.uuid4().hex[:10]
TAG = "e2e"
CREATED: set[str] = set()


def tag(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {TAG: RUN_ID, **(extra or {})}
