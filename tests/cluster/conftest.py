"""A whole cluster for the package (deploy/cluster.py): three hosts in network namespaces of its own
(``cubet-h1``..), a 3-member etcd, two masters, the API and the edge proxy on h1, in a state dir
of its own and on a subnet no other Cube uses. Without the loopback forwarder: clients run inside
h1's namespace, where names under ``.localhost`` reach h1's edge, so the package never competes
for this machine's port 443 with a node the operator runs. A container registry on this machine's
bridge address (`cluster.registry`) is allowlisted for teams' template builds on every host."""
from __future__ import annotations

import dataclasses

import pytest

from deploy import cluster as cluster_mod
from deploy.cluster import ClusterSettings
from testkit.ports import free_port
from testkit.registry import Registry


class Cluster:
    def __init__(self, settings: ClusterSettings, registry: Registry) -> None:
        self.s = settings
        self.registry = registry  # allowlisted for teams' builds on every host

    def sdk(self, script: str, timeout: float = 600) -> dict:
        """Run ``script`` with the unmodified E2B SDK as a client on h1 (only E2B_API_URL,
        E2B_API_KEY and SSL_CERT_FILE set); it prints one JSON object last, which is returned.
        A failure carries the masters' reasons for any refusal to place (logged, never sent to
        clients), so a 429 says which node lacked what."""
        try:
            return cluster_mod.run_client(self.s, script, timeout=timeout)
        except RuntimeError as e:
            reasons = [line for path in sorted(self.s.logs.glob("*-master.log"))
                       for line in path.read_text(errors="replace").splitlines() if "no node has room" in line]
            raise RuntimeError(f"{e}\nmasters' placement refusals:\n" + "\n".join(reasons[-5:])) from None

    def log(self, program: str) -> str:
        return (self.s.logs / f"{program}.log").read_text(errors="replace")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    s = ClusterSettings(dir=work, name="cubet", subnet="10.79.0.0/24", edge_forward=False).validate()
    # A registry on this machine's bridge address, which the hosts reach and which, being private,
    # teams' builds may pull from only because the operator allowlists it (and says it is plain HTTP).
    registry = f"{s.gateway}:{free_port()}"
    s = dataclasses.replace(s, registry_allowlist=(registry,), plain_http_registries=(registry,))
    reg: Registry | None = None
    try:
        cluster_mod.up(s)
        address, _, port = registry.partition(":")
        reg = Registry(work / "registry", work / "registry-storage", address=address, port=int(port)).start()
        yield Cluster(s, reg)
    finally:
        if reg is not None:
            reg.stop()
        cluster_mod.down(s)
