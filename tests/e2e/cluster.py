"""What the end-to-end tests can see of a running Cube node without going through Cube's own
clients: etcd (v3 JSON gateway, with the operator's certificate), the supervisor's programs, QEMU
processes and their runtime dirs, the cubelet's and CubeVS's state files, taps and routes, the
service logs.

Everything here only reads, except `kill_service`/`stop_etcd` used by the fault tests.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cube_common.mtls import Role, TlsFiles
from deploy.pki import node_dirs
from deploy.supervisor import NodeConfig
from testkit.etcd import gateway

REPO = Path(__file__).resolve().parents[2]
CFG = NodeConfig.from_env()
STATE = CFG.state_dir
VMS = STATE / "vms"
CUBELET_RECORDS = STATE / "cubelet" / "sandboxes"
CUBELET_PAUSED = STATE / "cubelet" / "paused"
VS_STATE = STATE / "vs" / "state.json"
TAP_PREFIX = "cvs"
VS_WARM_TAPS = int(os.environ.get("CUBE_VS_POOL_SIZE", "4"))  # CubeVS keeps this many spare taps
API_URL = f"http://127.0.0.1:{CFG.api_port}"
# The node's etcd serves only mutual TLS (deploy/supervisor.py): the tests read it as the operator,
# with the certificate `deploy.pki node` made for this node.
ETCD_URL = f"https://{CFG.etcd_endpoint}"
ETCD_TLS = TlsFiles(node_dirs(STATE / "pki")[Role.OPERATOR])


# ---- etcd ------------------------------------------------------------------------------------

def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


def etcd_get_prefix(prefix: str, timeout: float = 5.0) -> dict[str, str]:
    answer = gateway(ETCD_URL, "/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)},
                     ETCD_TLS, timeout)
    out = {}
    for kv in answer.get("kvs", []):
        out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv.get("value", "")).decode()
    return out


def etcd_sandboxes() -> dict[str, dict]:
    return {k.rsplit("/", 1)[1]: json.loads(v) for k, v in etcd_get_prefix("/cube/sandboxes/").items()}


def etcd_routes() -> dict[str, dict]:
    return {k.rsplit("/", 1)[1]: json.loads(v) for k, v in etcd_get_prefix("/cube/routes/").items()}


# ---- processes -------------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def supervisor_pid() -> int | None:
    try:
        pid = int(CFG.pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def service_pid(name: str) -> int | None:
    """The pid of a supervised program: a child of the supervisor running `-m services.<name>`
    (or etcd)."""
    sup = supervisor_pid()
    if sup is None:
        return None
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != sup:
            continue
        argv = _cmdline(pid)
        if name == "etcd" and argv and Path(argv[0]).name == "etcd":
            return pid
        if f"services.{name}" in argv:
            return pid
    return None


def kill_service(name: str) -> int:
    pid = service_pid(name)
    assert pid is not None, f"no running {name} under the supervisor"
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_service_restarted(name: str, old_pid: int, ready, timeout: float = 120.0) -> int:
    """The supervisor brings the program back (a new pid) and it becomes ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = service_pid(name)
        if pid is not None and pid != old_pid and ready():
            return pid
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted by the supervisor within {timeout}s "
                         f"(last lines of its log:\n{log_tail(name, 20)})")


def log_tail(name: str, n: int = 40) -> str:
    try:
        return "\n".join((CFG.logs / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


def log_offset(name: str) -> int:
    try:
        return (CFG.logs / f"{name}.log").stat().st_size
    except OSError:
        return 0


def log_since(name: str, offset: int) -> list[str]:
    try:
        with open(CFG.logs / f"{name}.log", "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def json_lines(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def qemu_vm_ids() -> dict[str, int]:
    """vm id -> pid of every QEMU process whose runtime dir is under the node's vms dir."""
    out = {}
    marker = str(VMS) + "/"
    for pid in _pids():
        argv = _cmdline(pid)
        if not argv or "qemu-system" not in Path(argv[0]).name:
            continue
        for a in argv:
            i = a.find(marker)
            if i >= 0:
                out[a[i + len(marker):].split("/", 1)[0]] = pid
                break
    return out


# ---- node state files --------------------------------------------------------------------------

@dataclass
class Vm:
    vm_id: str
    labels: dict
    tap: str | None
    pid: int | None  # the recorded QEMU pid
    alive: bool      # a QEMU process with this runtime dir runs

    @property
    def sandbox_id(self) -> str | None:
        return self.labels.get("sandbox_id")


def vms() -> dict[str, Vm]:
    running = qemu_vm_ids()
    out = {}
    if VMS.is_dir():
        for d in VMS.iterdir():
            try:
                rec = json.loads((d / "machine.json").read_text())
            except (OSError, ValueError):
                rec = {}
            out[d.name] = Vm(d.name, rec.get("labels") or {}, ((rec.get("spec") or {}).get("network") or {}).get("tap"),
                             rec.get("pid"), d.name in running)
    for vm_id in running:
        if vm_id not in out:
            out[vm_id] = Vm(vm_id, {}, None, running[vm_id], True)
    return out


def cubelet_records() -> dict[str, dict]:
    out = {}
    if CUBELET_RECORDS.is_dir():
        for p in CUBELET_RECORDS.glob("*.json"):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                out[p.stem] = {}
    return out


def paused_dirs() -> set[str]:
    return {p.name for p in CUBELET_PAUSED.iterdir()} if CUBELET_PAUSED.is_dir() else set()


def vs_allocations() -> dict[str, dict]:
    """CubeVS allocations by its sandbox id (a sandbox id, or a warm-pool VM id)."""
    try:
        d = json.loads(VS_STATE.read_text())
    except (OSError, ValueError):
        return {}
    return {a["sandbox_id"]: a for a in d.get("allocations", [])}


def taps() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]") if link["ifname"].startswith(TAP_PREFIX)}


def sandbox_routes() -> dict[str, str]:
    """Host routes CubeVS installed (protocol 0xcb): address -> tap."""
    out = subprocess.run(["ip", "-j", "route", "show", "proto", "0xcb"], capture_output=True, text=True).stdout
    return {r["dst"]: r.get("dev", "") for r in json.loads(out or "[]")}


# ---- where a sandbox still is ------------------------------------------------------------------

def traces_of(sandbox_id: str) -> list[str]:
    """Every place a sandbox can leave something behind on this node; [] means it is gone."""
    found = []
    if sandbox_id in etcd_sandboxes():
        found.append(f"etcd /cube/sandboxes/{sandbox_id}")
    if sandbox_id in etcd_routes():
        found.append(f"etcd /cube/routes/{sandbox_id}")
    for vm in vms().values():
        if vm.vm_id == sandbox_id or vm.sandbox_id == sandbox_id:
            found.append(f"vm dir {VMS / vm.vm_id} (qemu {'running' if vm.alive else 'not running'}, tap {vm.tap})")
    rec = cubelet_records().get(sandbox_id)
    if rec is not None:
        found.append(f"cubelet record {CUBELET_RECORDS / (sandbox_id + '.json')} ({rec.get('state')})")
    if sandbox_id in paused_dirs():
        found.append(f"paused state {CUBELET_PAUSED / sandbox_id}")
    if sandbox_id in vs_allocations():
        found.append(f"CubeVS allocation {vs_allocations()[sandbox_id].get('tap')}")
    return found


def node_leftovers() -> list[str]:
    """Node-wide consistency, independent of who made what: every QEMU belongs to a VM dir and
    vice versa, every sandbox VM has its records, every CubeVS allocation has a live VM on its tap,
    every sandbox route has an allocated tap, and the taps nobody uses are no more than CubeVS's
    warm spares."""
    problems = []
    all_vms = vms()
    records = cubelet_records()
    allocs = vs_allocations()
    etcd_sbx = etcd_sandboxes()
    for vm in all_vms.values():
        if not vm.alive:
            problems.append(f"vm dir without a running QEMU: {vm.vm_id} {vm.labels}")
        elif not (VMS / vm.vm_id / "machine.json").exists():
            problems.append(f"QEMU without a runtime record: {vm.vm_id} pid {vm.pid}")
        role = vm.labels.get("role")
        if role == "sandbox":
            sid = vm.sandbox_id
            if sid not in records:
                problems.append(f"sandbox VM {vm.vm_id} ({sid}) has no cubelet record")
            if sid not in etcd_sbx:
                problems.append(f"sandbox VM {vm.vm_id} ({sid}) has no etcd record")
    tap_owner = {vm.tap: vm for vm in all_vms.values() if vm.tap and vm.alive}
    for vs_id, a in allocs.items():
        if a.get("tap") not in tap_owner:
            problems.append(f"CubeVS allocation {vs_id} (tap {a.get('tap')}) has no running VM on its tap")
    allocated_taps = {a.get("tap") for a in allocs.values()}
    for addr, dev in sandbox_routes().items():
        if dev not in allocated_taps:
            problems.append(f"route {addr} dev {dev} for a tap CubeVS has not allocated")
    spare = taps() - allocated_taps
    if len(spare) > VS_WARM_TAPS:
        problems.append(f"{len(spare)} taps not allocated to any sandbox (CubeVS keeps {VS_WARM_TAPS} spare): "
                        f"{sorted(spare)}")
    for sid, rec in records.items():
        if rec.get("state") in ("running", "paused") and sid not in etcd_sbx:
            problems.append(f"cubelet record {sid} ({rec.get('state')}) has no etcd record")
    return problems


def wait_until(pred, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


@dataclass
class Settled:
    """Result of waiting for a quiet node: how long it took and what is still wrong."""
    seconds: float
    problems: list[str] = field(default_factory=list)


def wait_node_consistent(timeout: float, extra=None) -> Settled:
    """Poll node_leftovers() (plus `extra()`) until it is empty twice in a row or time is up."""
    t0 = time.monotonic()
    clean_once = False
    problems: list[str] = []
    while time.monotonic() - t0 < timeout:
        problems = node_leftovers() + (extra() if extra else [])
        if not problems:
            if clean_once:
                return Settled(time.monotonic() - t0)
            clean_once = True
        else:
            clean_once = False
        time.sleep(1.0)
    return Settled(time.monotonic() - t0, problems)
