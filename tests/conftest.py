"""Fixtures shared by every test package."""
from __future__ import annotations

import pytest

from testkit.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server():
    """A real etcd on loopback for the whole session; tests isolate themselves by key prefix."""
    server = EtcdServer().start()
    yield server
    server.destroy()
