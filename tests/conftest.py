"""Fixtures shared by every test package."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.pki import Pki
from testkit.etcd import EtcdServer

# Operator clients (sdk.client, cubemastercli) present a certificate only when a test says which:
# never the one a `make env` shell exported, nor the one of a node the operator runs on this
# machine (sdk.client finds $CUBE_STATE_DIR/pki/operator by itself). The e2e package names its
# node's certificate (tests/e2e/conftest.py).
os.environ["CUBE_TLS_DIR"] = ""
# These machines have no VT-x/AMD-V: every machine the tests start runs under TCG, which vmm_core
# refuses unless allowed (tests/vmm/test_jail.py checks the refusal with its own settings).
os.environ.setdefault("CUBE_ALLOW_TCG", "1")


@pytest.fixture(scope="session")
def etcd_server():
    """A real etcd on loopback for the whole session; tests isolate themselves by key prefix."""
    server = EtcdServer().start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A cluster CA and the certificates of a node ``n1`` (deploy/pki.py); tests only read it."""
    root = tmp_path_factory.mktemp("pki")
    Pki(root).node("n1")
    return root


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory) -> Path:
    """Another CA with the same names and roles: what a peer from another cluster would hold."""
    root = tmp_path_factory.mktemp("other-pki")
    Pki(root).node("n1")
    return root
