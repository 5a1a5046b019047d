"""`make env`: the variables the unmodified E2B SDKs need to use this node, and the project's
commands (`cubemastercli`) on PATH."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from cube_common.mtls import Role
from deploy import local_key
from deploy.supervisor import REPO, NodeConfig

# Where setup.sh installs the project's commands (`cubemastercli`, what the README runs).
TOOLS = REPO / ".venv" / "bin"

DEFAULT_TEMPLATE = "code-interpreter"
# The key `make up` issued (the local team's admin key, deploy/local_key.py) when there is one;
# this constant only before that, when auth is off and any non-empty key is accepted. It has E2B's
# shape so that SDK versions that check the format locally accept it too.
LOCAL_KEY = "e2b_" + "0" * 40


def sdk_env(cfg: NodeConfig) -> dict[str, str]:
    return {
        # The address, not `localhost`: the API listens on 127.0.0.1 only, and `localhost` is also
        # ::1, which Node (17+, without happy eyeballs) may try alone and be refused.
        "E2B_API_URL": f"http://{cfg.api_host}:{cfg.api_port}",
        "E2B_API_KEY": local_key.read(cfg.state_dir) or LOCAL_KEY,
        "SSL_CERT_FILE": str(cfg.state_dir / "tls" / "ca.pem"),
        "CUBE_TEMPLATE_ID": DEFAULT_TEMPLATE,
    }


def shell_env(cfg: NodeConfig) -> dict[str, str]:
    """What `make env` exports: the SDK variables, NODE_EXTRA_CA_CERTS for the JS SDK (Node
    ignores SSL_CERT_FILE and reads extra CAs only from this variable), and for `cubemastercli`
    the master's address and the operator certificate it presents (mutual TLS)."""
    env = sdk_env(cfg)
    return {**env, "NODE_EXTRA_CA_CERTS": env["SSL_CERT_FILE"], "CUBE_MASTER_ADDR": cfg.master_addr,
            "CUBE_TLS_DIR": str(cfg.tls(Role.OPERATOR).dir)}


def exports(env: dict[str, str]) -> list[str]:
    """The shell lines that export ``env``, and put the project's commands on PATH when they are
    not yet (so evaluating them twice changes nothing)."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if str(TOOLS) not in os.environ.get("PATH", "").split(os.pathsep):
        lines.append(f'export PATH={shlex.quote(str(TOOLS))}:"$PATH"')
    return lines


def main() -> None:
    cfg = NodeConfig.from_env()
    env = shell_env(cfg)
    if not _running(cfg.pidfile):
        # No node here; a cluster on this machine (make cluster-up) is what there is to use.
        from deploy import cluster

        settings = cluster.ClusterSettings.from_env()
        if _running(settings.pidfile):
            env = cluster.shell_env(settings)
    print("\n".join(exports(env)))


def _running(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    main()
