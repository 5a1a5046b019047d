"""Session fixtures: test images built here (umoci from a busybox-static root, plus hand-made
layouts for what umoci cannot express), pushed with skopeo to a real docker-registry on
loopback, served again by an htpasswd registry and a token-auth registry on the same storage."""
from __future__ import annotations

import os
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.cubelet.oci import RegistryAccess
from testkit.registry import Registry, TokenServer
from tests.oci.support import Entry, LayoutWriter, make_tar, run

USER, PASSWORD = "alice", "wonderland"
BUSYBOX = Path("/bin/busybox")
# security.capability v2 with CAP_NET_BIND_SERVICE (10) permitted and effective.
CAP_NET_BIND = struct.pack("<IIIII", 0x02000000 | 1, 1 << 10, 0, 0, 0)


def _tools_missing() -> list[str]:
    return [t for t in ("docker-registry", "skopeo", "umoci", "htpasswd", "zstd")
            if shutil.which(t) is None]


@dataclass
class OciEnv:
    work: Path
    layout: Path
    anon: Registry
    basic: Registry
    token: Registry
    tokens: TokenServer
    archives: dict[str, Path] = field(default_factory=dict)

    def ref(self, registry: Registry, name: str) -> str:
        return f"{registry.host}/{name}"

    @property
    def access(self) -> RegistryAccess:
        """What a pull from the test registries needs: they (and the token service) listen on
        127.0.0.1, which pulls refuse unless allowlisted, as an operator would allowlist them
        (the cubelet's registry_allowlist setting)."""
        return RegistryAccess(allowlist=(self.anon.host, self.basic.host, self.token.host,
                                         f"127.0.0.1:{self.tokens.port}"))


def _busybox_root(rootfs: Path) -> None:
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
        (rootfs / d).mkdir(exist_ok=True)
        os.chmod(rootfs / d, mode)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    os.chmod(rootfs / "bin/busybox", 0o755)
    for applet in ("sh", "ls", "cat", "echo", "env", "id", "stat"):
        os.symlink("busybox", rootfs / "bin" / applet)
    os.symlink("/bin/busybox", rootfs / "bin/ash")  # absolute target: read in the guest's root
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (rootfs / "home/app").mkdir(parents=True)
    os.chown(rootfs / "home/app", 1000, 1000)
    os.chmod(rootfs / "home/app", 0o750)


def _features_root(rootfs: Path) -> None:
    """The second layer: every kind of entry and metadata an unpacker must get right."""
    data = rootfs / "data"
    data.mkdir()
    os.chown(data, 1234, 5678)
    os.chmod(data, 0o750)
    (data / "file.txt").write_text("hello\n")
    os.chown(data / "file.txt", 1234, 5678)
    os.chmod(data / "file.txt", 0o640)
    os.setxattr(data / "file.txt", "user.cube", b"test-value")
    os.link(data / "file.txt", data / "hardlink")
    os.symlink("file.txt", data / "link")
    os.chown(data / "link", 42, 43, follow_symlinks=False)
    for name, mode, gid in (("suid", 0o4755, 0), ("sgid", 0o2711, 50), ("cap", 0o755, 0)):
        p = rootfs / "bin" / name
        p.write_text(f"#!/bin/sh\necho {name}\n")
        os.chown(p, 0, gid)
        os.chmod(p, mode)
    os.setxattr(rootfs / "bin/cap", "security.capability", CAP_NET_BIND)
    (rootfs / "sticky").mkdir()
    os.chmod(rootfs / "sticky", 0o1777)
    (rootfs / "dev").mkdir()
    os.mknod(rootfs / "dev/mynull", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(rootfs / "dev/mynull", 0o666)
    os.mknod(rootfs / "dev/myblk", 0o660 | 0o060000, os.makedev(7, 0))
    os.chown(rootfs / "dev/myblk", 0, 6)
    os.chmod(rootfs / "dev/myblk", 0o660)
    os.mkfifo(rootfs / "dev/fifo", 0o620)
    os.chmod(rootfs / "dev/fifo", 0o620)
    (rootfs / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", rootfs / "lib")  # usrmerge-style: later layers write through it
    (rootfs / "old").mkdir()
    (rootfs / "old/a").write_text("a")
    (rootfs / "old/b").write_text("b")
    (rootfs / "gone.txt").write_text("gone")
    (rootfs / "opq/sub").mkdir(parents=True)
    for n in ("opq/lower1", "opq/lower2", "opq/sub/lower3"):
        (rootfs / n).write_text(n)


def build_images(work: Path, anon: Registry) -> dict[str, Path]:
    layout = work / "layout"
    lay = f"{layout}"
    run("umoci", "init", "--layout", lay)
    run("umoci", "new", "--image", f"{lay}:empty")
    b1 = work / "b1"
    run("umoci", "unpack", "--image", f"{lay}:empty", str(b1))
    _busybox_root(b1 / "rootfs")
    run("umoci", "repack", "--image", f"{lay}:bb", str(b1))
    run("umoci", "config", "--image", f"{lay}:bb", "--config.env", "PATH=/bin",
        "--config.env", "GREETING=hello world", "--config.user", "1000:1000",
        "--config.workingdir", "/home/app", "--config.entrypoint", "/bin/sh",
        "--config.entrypoint", "-c", "--config.cmd", "echo $GREETING",
        "--config.exposedports", "8080/tcp", "--config.exposedports", "53/udp",
        "--config.label", "org.example.name=busybox-test", "--config.stopsignal", "SIGTERM")
    b2 = work / "b2"
    run("umoci", "unpack", "--image", f"{lay}:bb", str(b2))
    _features_root(b2 / "rootfs")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:features1", str(b2))
    # Third layer: deletions become whiteouts (umoci writes .wh.<name>).
    (b2 / "rootfs/gone.txt").unlink()
    shutil.rmtree(b2 / "rootfs/old")
    (b2 / "rootfs/new.txt").write_text("new")
    run("umoci", "repack", "--image", f"{lay}:features2", str(b2))
    # Fourth layer, hand-made: an opaque directory and a write through the lib -> usr/lib link.
    layer4 = work / "layer4.tar"
    layer4.write_bytes(make_tar([
        Entry("opq/", tarfile.DIRTYPE, mode=0o755),
        Entry("opq/.wh..wh..opq"),
        Entry("opq/upper", data=b"upper\n"),
        Entry("lib/fromlink.txt", data=b"via symlink\n", uid=7, gid=8, mode=0o600),
    ]))
    run("umoci", "raw", "add-layer", "--image", f"{lay}:features2", "--tag", "features", str(layer4))
    # zstd copy of the busybox image.
    run("skopeo", "copy", "--dest-compress", "--dest-compress-format", "zstd",
        f"oci:{lay}:bb", f"oci:{work}/layout-zstd:bbz")
    shutil.rmtree(b1)
    shutil.rmtree(b2)

    w = LayoutWriter(layout)
    arm = w.image([make_tar([Entry("arm64.txt", data=b"arm64\n")])], arch="arm64")
    w.tag(arm, "arm")
    w.tag(w.index([(w.manifest_of("bb"), "linux/amd64"), (arm, "linux/arm64")]), "multi")
    w.tag(w.index([(arm, "linux/arm64")]), "armidx")
    # A lone static binary: busybox picks its applet from argv[0], so it runs as /echo.
    w.tag(w.image([make_tar([Entry("echo", data=BUSYBOX.read_bytes(), mode=0o755)])],
                  config={"Entrypoint": ["/echo"], "Cmd": ["hi"]}), "noshell")
    w.tag(w.image([make_tar([Entry("random.bin", data=os.urandom(256 * 1024))])]), "corrupt")
    w.tag(w.image([make_tar([Entry("../escape.txt", data=b"x")])]), "traversal")

    dest = f"docker://{anon.host}"
    pushes = [("bb", "bb"), ("bb", "public/bb"), ("features", "features"), ("arm", "armonly"),
              ("noshell", "noshell"), ("corrupt", "corrupt"), ("traversal", "traversal")]
    for tag, repo in pushes:
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{lay}:{tag}", f"{dest}/{repo}:1")
    for tag, repo in (("multi", "multi"), ("armidx", "armidx")):
        run("skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{lay}:{tag}",
            f"{dest}/{repo}:1")
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{work}/layout-zstd:bbz", f"{dest}/bbz:1")

    archives = {
        "oci-archive": work / "features.oci.tar",
        "docker-archive": work / "features.docker.tar",
    }
    run("skopeo", "copy", "-q", f"oci:{lay}:features", f"oci-archive:{archives['oci-archive']}:features")
    run("skopeo", "copy", "-q", f"oci:{lay}:features",
        f"docker-archive:{archives['docker-archive']}:features:1")
    return archives


@pytest.fixture(scope="session")
def oci_env():
    missing = _tools_missing()
    if missing:
        pytest.skip(f"missing tools (scripts/setup.sh installs them): {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("building test images with owners and device nodes needs root")
    work = Path(tempfile.mkdtemp(prefix="cube-oci-test-"))
    storage = work / "storage"
    started: list[Registry | TokenServer] = []
    try:
        anon = Registry(work / "reg-anon", storage).start()
        started.append(anon)
        htpasswd = work / "htpasswd"
        htpasswd.write_text(run("htpasswd", "-Bbn", USER, PASSWORD))
        basic = Registry(work / "reg-basic", storage,
                         {"htpasswd": {"realm": "cube-test", "path": str(htpasswd)}}).start()
        started.append(basic)
        tokens = TokenServer(work / "tokens", {USER: PASSWORD}).start()
        started.append(tokens)
        token = Registry(work / "reg-token", storage, tokens.registry_auth()).start()
        started.append(token)
        archives = build_images(work, anon)
        yield OciEnv(work, work / "layout", anon, basic, token, tokens, archives)
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def cache(tmp_path):
    from services.cubelet.oci import LayerCache

    return LayerCache(tmp_path / "cache")


def assert_nothing_left(dest: Path, cache) -> None:
    """After a failed fetch: no root, no staging sibling, no partial blob."""
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]
    assert cache.partials() == []
