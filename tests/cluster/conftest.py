"""A whole cluster for the package (deploy/cluster.py): three hosts in network namespaces of its own
(``cubet-h1``..), a 3-member etcd, two masters, the API and the edge proxy on h1, in a state dir
of its own and on a subnet no other Cube uses. Without the loopback forwarder: clients run inside
h1's namespace, where names under ``.localhost`` reach h1's edge, so the package never competes
for this machine's port 443 with a node the operator runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy import cluster as cluster_mod, local_key
from deploy.cluster import ClusterSettings

REPO = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, settings: ClusterSettings) -> None:
        self.s = settings

    def sdk(self, script: str, timeout: float = 600) -> dict:
        """Run ``script`` with the unmodified E2B SDK as a client on h1 (only E2B_API_URL,
        E2B_API_KEY and SSL_CERT_FILE set); it prints one JSON object last, which is returned."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "CUBE_"))}
        env.update({"E2B_API_URL": self.s.api_url, "E2B_API_KEY": local_key.read(self.s.host_dir("h1")) or "",
                    "SSL_CERT_FILE": str(self.s.host_dir("h1") / "tls" / "ca.pem"), "PYTHONPATH": str(REPO)})
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.s.netns('h1')}", "--", sys.executable, "-c",
                            textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"client failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return json.loads(r.stdout.strip().splitlines()[-1])

    def log(self, program: str) -> str:
        return (self.s.logs / f"{program}.log").read_text(errors="replace")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    s = ClusterSettings(dir=tmp_path_factory.mktemp("cluster"), name="cubet", subnet="10.79.0.0/24",
                        edge_forward=False).validate()
    try:
        cluster_mod.up(s)
        yield Cluster(s)
    finally:
        cluster_mod.down(s)
