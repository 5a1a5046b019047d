"""Fixtures for control-plane tests: a real etcd (session), real cube-master and cube-api
processes, and the in-test fake cubelet (a TEST DOUBLE of the node agent)."""

from __future__ import annotations

import pytest

from tests.control.cluster import Cluster, one_node_cluster
from tests.control.teams_support import Teams


@pytest.fixture(scope="module")
def cluster(etcd_server):
    """One master, one API (auth off), one fake node; shared by a module's tests."""
    with one_node_cluster(etcd_server.endpoint) as c:
        yield c


@pytest.fixture(scope="module")
def teams(etcd_server):
    """One master, one API with auth on, one fake node, and the teams' keys (teams_support.Teams);
    shared by a module's tests."""
    with one_node_cluster(etcd_server.endpoint, CUBE_AUTH="on") as c:
        yield Teams(c)


@pytest.fixture
def fresh(cluster):
    """The shared cluster with no sandboxes left from an earlier test."""
    cluster.wipe_sandboxes()
    yield cluster
    cluster.wipe_sandboxes()


@pytest.fixture
def sdk_env(monkeypatch, cluster):
    """Point the unmodified E2B SDK at this cluster's API with environment variables only."""
    monkeypatch.setenv("E2B_API_URL", cluster.api_url)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_SANDBOX_URL", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return cluster


@pytest.fixture
def own_cluster(etcd_server):
    """A cluster for one test that kills or reconfigures processes; the test starts them."""
    c = Cluster(etcd_server.endpoint)
    yield c
    c.stop()
