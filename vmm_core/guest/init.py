#!/usr/bin/python3 -I
"""cube-init: PID 1 inside every Cube guest (runs from the read-only guest base image).

Standard library only: it is the first thing the guest runs and everything else depends on it.

1. Mounts the kernel filesystems, the template root (disk serial `cube-tpl`, read-only) and the
   writable layer (serial `cube-rw`), and composes them with overlayfs at /run/cube/root.
2. Reads the machine's guest configuration from the writable layer (`/cube/guest.json`, written by
   the host when it made the layer, so it is outside the overlay's upper dir and invisible to
   sandbox code), configures the network, and starts the configured services (the guest agent from
   the base image, the template's own command chrooted into the template root), restarting them
   when they die.
3. Starts and supervises `cube-ctl` (cube_ctl.c), which owns the host control channel, a
   virtio-serial port named `cube.ctl`: one JSON object per line each way. After every snapshot
   restore the host sends the wall clock and fresh entropy there, because all clones wake up with
   the snapshot's clock and RNG state. cube-ctl answers those in native code (a Python answer cost
   every clone ~150 ms of translation under TCG) and forwards the rest (`status`, `mount_volume`)
   to this process.
4. Mounts volumes on request (`mount_volume`): the disk with the given serial (a volume slot the
   host has just filled, vmm_core/volumes.py) at a path inside the sandbox root. The root is a
   shared mount and the agent's namespace a slave of it (services/envd/rootfs.py), so the mount
   reaches the agent and everything it starts. The path is walked without following symlinks: the
   root's content is the template's and the sandbox's, never trusted.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

CTL_AGENT = "/sbin/cube-ctl"
CONFIG_PATH = "/run/cube/rw/cube/guest.json"
ROOT = "/run/cube/root"

libc = ctypes.CDLL(None, use_errno=True)


def log(msg: str) -> None:
    try:
        with open("/dev/console", "w") as c:
            c.write(f"cube-init: {msg}\n")
    except OSError:
        pass


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None) != 0:
        e = ctypes.get_errno()
        if e != errno.EBUSY:
            raise OSError(e, f"mount {fstype} {source} on {target}: {os.strerror(e)}")


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 1, 2, 4, 8, 4096, 16384
MS_SHARED = 1 << 20
BLKFLSBUF = 0x1261  # _IO(0x12, 97): drop the block device's buffer cache


def disk_by_serial(serial: str, wait_s: float = 5.0) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            for name in os.listdir("/sys/block"):
                try:
                    with open(f"/sys/block/{name}/serial") as f:
                        if f.read().strip() == serial:
                            return f"/dev/{name}"
                except OSError:
                    continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def mount_system() -> None:
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID)
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV)


def mount_layers() -> bool:
    """Compose template + writable layer at ROOT. False when this machine has no template disk."""
    tpl = disk_by_serial("cube-tpl")
    rw = disk_by_serial("cube-rw")
    if not tpl or not rw:
        log("no template/writable disks: running the base image only")
        return False
    mount(tpl, "/run/cube/lower", "ext4", MS_RDONLY, "noload")
    mount(rw, "/run/cube/rw", "ext4", 0)
    for d in ("/run/cube/rw/upper", "/run/cube/rw/work"):
        os.makedirs(d, exist_ok=True)
    mount("overlay", ROOT, "overlay", 0,
          "lowerdir=/run/cube/lower,upperdir=/run/cube/rw/upper,workdir=/run/cube/rw/work")
    # Shared, so that volumes mounted under it later reach the agent's (slave) namespace.
    if libc.mount(b"none", ROOT.encode(), None, MS_SHARED, None) != 0:
        log(f"making {ROOT} shared: {os.strerror(ctypes.get_errno())}")
    # Kernel filesystems inside the sandbox root, shared by the agent and the template's service.
    for src, sub, fstype, flags, data in (
        ("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("sysfs", "sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("/dev", "dev", "", MS_BIND | MS_REC, ""),
        ("tmpfs", "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755"),
    ):
        target = f"{ROOT}/{sub}"
        try:
            if os.path.islink(target):
                continue  # e.g. images whose /run is a symlink; never follow links out of the root
            mount(src, target, fstype, flags, data)
        except OSError as e:
            log(f"{e}")
    # /tmp is the root's own directory, on the writable layer (as in the image, in Docker and in
    # E2B): what a template step writes there is on the disk its cached layer keeps, so a build
    # from cached steps and a build that ran them agree. An image without one gets it, 1777.
    tmp = f"{ROOT}/tmp"
    if not os.path.lexists(tmp):
        try:
            os.mkdir(tmp)
            os.chmod(tmp, 0o1777)
        except OSError as e:
            log(f"making {tmp}: {e}")
    return True


def _dir_beneath(root: str, path: str) -> int:
    """An fd of directory ``path`` under ``root``, made (0755) where missing; never follows a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == ".." or len(part) > 255:
                raise OSError(errno.EINVAL, f"bad mount path {path!r}")
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def mount_volume(serial: str, target: str) -> None:
    dev = disk_by_serial(serial, wait_s=2.0)
    if dev is None:
        raise OSError(errno.ENODEV, f"no disk with serial {serial}")
    size_file = f"/sys/block/{os.path.basename(dev)}/size"
    deadline = time.monotonic() + 5.0
    # The new capacity arrives by a config-change interrupt that a kernel worker applies.
    while True:
        with open(size_file) as f:
            if int(f.read().strip() or 0) > 0:
                break
        if time.monotonic() > deadline:
            raise OSError(errno.EIO, f"{dev} still shows no capacity")
        time.sleep(0.01)
    fd = os.open(dev, os.O_RDONLY)
    try:  # whatever the 0-sized device left cached must not shadow the real superblock
        fcntl.ioctl(fd, BLKFLSBUF)
    finally:
        os.close(fd)
    dirfd = _dir_beneath(ROOT, target)
    try:
        point = f"/proc/self/fd/{dirfd}"
        if libc.mount(dev.encode(), point.encode(), b"ext4", MS_NOSUID | MS_NODEV, None) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount {dev} on {target}: {os.strerror(e)}")
    finally:
        os.close(dirfd)
    log(f"volume {serial} mounted at {target}")


def configure_network(net: dict) -> None:
    ifaces = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    cmds = [["ip", "link", "set", "lo", "up"]]
    if ifaces and net.get("ip"):
        dev = ifaces[0]
        cmds += [
            ["ip", "addr", "add", f"{net['ip']}/{net.get('prefix', 30)}", "dev", dev],
            ["ip", "link", "set", dev, "up"],
        ]
        if net.get("gateway"):
            cmds.append(["ip", "route", "add", "default", "via", net["gateway"], "dev", dev])
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"{' '.join(cmd)}: {r.stderr.strip()}")
    dns = net.get("dns") or []
    if dns and os.path.isdir(f"{ROOT}/etc"):
        resolv = f"{ROOT}/etc/resolv.conf"
        try:
            if os.path.islink(resolv):
                os.unlink(resolv)
            with open(resolv, "w") as f:
                f.write("".join(f"nameserver {s}\n" for s in dns))
        except OSError as e:
            log(f"resolv.conf: {e}")


class Service:
    """One supervised process. Output goes to the console with a `[name]` prefix."""

    def __init__(self, spec: dict, pass_fds: tuple[int, ...] = ()) -> None:
        self.name: str = spec["name"]
        self.argv: list[str] = spec["argv"]
        self.env: dict[str, str] = spec.get("env", {})
        self.cwd: str = spec.get("cwd", "/")
        self.in_template: bool = spec.get("root", "base") == "template"
        self.uid: int = int(spec.get("uid", 0))
        self.gid: int = int(spec.get("gid", 0))
        self.restart: bool = spec.get("restart", True)
        self.pass_fds = pass_fds  # descriptors the process inherits (cube-ctl's socket to us)
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0

    def _preexec(self) -> None:
        os.setsid()
        if self.in_template:
            os.chroot(ROOT)
        os.chdir(self.cwd if os.path.isdir(self.cwd) else "/")
        if self.gid:
            os.setgid(self.gid)
        if self.uid:
            os.setuid(self.uid)

    def start(self) -> None:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", **self.env}
        try:
            console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
            self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=console, preexec_fn=self._preexec, close_fds=True,
                                         pass_fds=self.pass_fds)
            os.close(console)
            self.started_at = time.monotonic()
            log(f"service {self.name} started pid {self.proc.pid}")
        except (OSError, subprocess.SubprocessError) as e:
            self.proc = None
            log(f"service {self.name} failed to start: {e}")

    def status(self) -> dict:
        running = self.proc is not None and self.proc.poll() is None
        return {"name": self.name, "running": running, "pid": self.proc.pid if self.proc else 0,
                "restarts": self.restarts}


class ControlAgent:
    """cube-ctl, supervised, and the socket on which it forwards the ops it leaves to cube-init."""

    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.service: Service | None = None
        self.sock: socket.socket | None = None
        self.buf = b""

    def start(self) -> None:
        """Start (or restart) cube-ctl, with a new socket to it."""
        if self.sock is not None:
            self.sock.close()
        self.buf = b""
        ours, theirs = socket.socketpair()
        self.service = Service({"name": "cube-ctl", "argv": [CTL_AGENT, "--init-fd", str(theirs.fileno())]},
                               pass_fds=(theirs.fileno(),))
        self.service.start()
        theirs.close()
        ours.setblocking(False)
        self.sock = ours

    def pump(self) -> None:
        if self.sock is None:
            return
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:  # cube-ctl is gone; reap() restarts it
                self.sock.close()
                self.sock = None
                return
            self.buf += chunk
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip():
                    self.sock.setblocking(True)
                    try:
                        self.sock.sendall(json.dumps(self.handle(line)).encode() + b"\n")
                    except OSError:  # cube-ctl died meanwhile; reap() restarts it
                        pass
                    finally:
                        self.sock.setblocking(False)

    def handle(self, line: bytes) -> dict:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            seq = msg.get("seq")
            if op == "status":
                return {"seq": seq, "ok": True, "services": [s.status() for s in self.services]}
            if op == "mount_volume":
                try:
                    mount_volume(str(msg["serial"]), str(msg["target"]))
                except OSError as e:
                    return {"seq": seq, "ok": False, "error": str(e)}
                return {"seq": seq, "ok": True}
            return {"seq": seq, "ok": False, "error": f"unknown op {op!r}"}
        except Exception as e:  # a bad message must never take PID 1 down
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main() -> None:
    if os.getpid() != 1:
        print("cube-init must run as PID 1", file=sys.stderr)
        sys.exit(1)
    mount_system()
    has_root = mount_layers()
    cfg: dict = {}
    if has_root:
        try:
            with open(CONFIG_PATH) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            log(f"no guest config: {e}")
    socket.sethostname(cfg.get("hostname", "cube"))
    configure_network(cfg.get("network", {}))
    services = [Service(s) for s in cfg.get("services", []) if has_root or s.get("root", "base") == "base"]

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    ctl = ControlAgent(services)
    ctl.start()
    for s in services:
        s.start()
    log("ready")

    while True:
        fds = [wake_r.fileno()]
        if ctl.sock is not None:
            fds.append(ctl.sock.fileno())
        try:
            readable, _, _ = select.select(fds, [], [], 60.0)
        except InterruptedError:
            readable = []
        if wake_r.fileno() in readable:
            try:
                while wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        ctl.pump()
        reap(services, ctl)


def reap(services: list[Service], ctl: ControlAgent) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for s in [ctl.service, *services]:
            if s is None or s.proc is None or s.proc.pid != pid:
                continue
            s.proc.returncode = os.waitstatus_to_exitcode(status)
            log(f"service {s.name} exited with {s.proc.returncode}")
            if s.restart:
                # Back off a crash loop so a broken service cannot eat the guest's CPU.
                if time.monotonic() - s.started_at < 1.0:
                    time.sleep(1.0)
                if s is ctl.service:
                    ctl.start()  # cube-ctl comes back with a new socket to us
                else:
                    s.restarts += 1
                    s.start()
            break


if __name__ == "__main__":
    main()
