"""cubemastercli: operate a Cube cluster through its master.

    cubemastercli [--master HOST:PORT] [--json] COMMAND ...

    tpl list | tpl info TEMPLATE | tpl delete TEMPLATE [--force]
    sandbox list [--state running,paused] [--metadata k=v ...] [--template T]
    sandbox info ID | sandbox kill ID...
    node list
    apikey create [--name NAME] | apikey list | apikey revoke KEY_ID
    status

The master address comes from --master, else CUBE_MASTER_ADDR, else 127.0.0.1:7070. --json
prints proto3 JSON (camelCase) instead of tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from sdk.client import CubeClient, CubeError
from sdk.gen.cube.v1 import master_pb2 as P


# ---- output -----------------------------------------------------------------------------------

def _dict(msg) -> dict:
    return json_format.MessageToDict(msg)


def print_json(obj) -> None:
    if isinstance(obj, list):
        obj = [_dict(m) if hasattr(m, "DESCRIPTOR") else m for m in obj]
    elif hasattr(obj, "DESCRIPTOR"):
        obj = _dict(obj)
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: list[Sequence]) -> None:
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def when(t: Timestamp) -> str:
    if not t.seconds and not t.nanos:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.seconds))


def until(t: Timestamp) -> str:
    left = t.seconds - time.time()
    return f"{when(t)} ({int(left)}s)" if left > 0 else f"{when(t)} (due)"


def phase(p: int) -> str:
    return P.SandboxPhase.Name(p).removeprefix("SANDBOX_PHASE_").lower()


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}G"


def print_fields(pairs: list[tuple[str, object]]) -> None:
    w = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"{k.ljust(w)}  {v}")


# ---- commands ---------------------------------------------------------------------------------

def tpl_list(c: CubeClient, a) -> None:
    tpls = c.list_templates()
    if a.json:
        return print_json(tpls)
    print_table(["TEMPLATE", "ALIASES", "VCPUS", "MEMORY", "DISK", "ENVD", "STATUS", "NODES", "SPAWNS", "CREATED"],
                [[t.template_id, ",".join(t.aliases) or "-", t.vcpus, f"{t.memory_mb}M", f"{t.disk_size_mb}M",
                  t.envd_version, P.TemplateStatus.Name(t.status).removeprefix("TEMPLATE_STATUS_").lower(),
                  ",".join(t.node_ids) or "-", t.spawn_count, when(t.created_at)] for t in tpls])


def tpl_info(c: CubeClient, a) -> None:
    t = c.get_template(a.template)
    if a.json:
        return print_json(t)
    print_fields([("template", t.template_id), ("aliases", ", ".join(t.aliases) or "-"), ("source", t.source or "-"),
                  ("status", P.TemplateStatus.Name(t.status).removeprefix("TEMPLATE_STATUS_").lower()),
                  ("vcpus", t.vcpus), ("memory", f"{t.memory_mb} MiB"), ("disk", f"{t.disk_size_mb} MiB"),
                  ("envd", t.envd_version), ("nodes", ", ".join(t.node_ids) or "-"),
                  ("snapshot", f"{t.snapshot_bytes / (1 << 20):.1f} MiB"), ("spawns", t.spawn_count),
                  ("last spawn", when(t.last_spawned_at)), ("created", when(t.created_at)),
                  ("memory sharing", "off" if t.no_memory_sharing else "on")])


def tpl_delete(c: CubeClient, a) -> None:
    ok = c.delete_template(a.template, force=a.force)
    print_json({"deleted": ok}) if a.json else print(f"deleted template {a.template}")


def sandbox_list(c: CubeClient, a) -> None:
    meta = {}
    for kv in a.metadata or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"error: --metadata wants key=value, got {kv!r}")
        meta[k] = v
    states = tuple(s for s in (a.state or "").split(",") if s)
    sbs = list(c.list_sandboxes(metadata=meta, states=states, template=a.template or ""))
    if a.json:
        return print_json(sbs)
    print_table(["SANDBOX", "TEMPLATE", "STATE", "NODE", "STARTED", "ENDS", "METADATA"],
                [[s.sandbox_id, s.alias or s.template_id, phase(s.phase), s.node_id, when(s.started_at),
                  until(s.end_at), ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items())) or "-"] for s in sbs])


def sandbox_info(c: CubeClient, a) -> None:
    s = c.get_sandbox(a.sandbox_id)
    if a.json:
        d = _dict(s)
        d.pop("envdAccessToken", None)  # a secret; the SDK gets it from connect
        d.pop("envVars", None)
        return print_json(d)
    print_fields([("sandbox", s.sandbox_id), ("template", s.template_id + (f" ({s.alias})" if s.alias else "")),
                  ("state", phase(s.phase)), ("node", s.node_id), ("client", s.client_id),
                  ("started", when(s.started_at)), ("ends", until(s.end_at)),
                  ("on timeout", "pause" if s.auto_pause else "kill"), ("vcpus", s.vcpus),
                  ("memory", f"{s.memory_mb} MiB"), ("disk", f"{s.disk_size_mb} MiB"), ("envd", s.envd_version),
                  ("address", s.host_address or "-"),
                  ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(s.metadata.items())) or "-")])


def sandbox_kill(c: CubeClient, a) -> None:
    failed = 0
    for sid in a.sandbox_ids:
        try:
            c.kill_sandbox(sid)
            print_json({"sandboxId": sid, "killed": True}) if a.json else print(f"killed {sid}")
        except CubeError as e:
            failed += 1
            print(f"error: {sid}: {e}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def node_list(c: CubeClient, a) -> None:
    nodes = c.list_nodes()
    if a.json:
        return print_json(nodes)
    print_table(["NODE", "ADDRESS", "PROXY", "ACCEL", "VCPUS", "MEM FREE", "RUNNING", "PAUSED", "MAX", "TEMPLATES"],
                [[n.status.node_id, n.status.address, n.status.proxy_address or "-", n.status.accel or "-",
                  n.status.vcpus_total, f"{gib(n.status.memory_available_bytes)}/{gib(n.status.memory_total_bytes)}",
                  n.sandboxes_running, n.sandboxes_paused, n.status.max_sandboxes or "-",
                  ",".join(n.status.templates) or "-"] for n in nodes])


def apikey_create(c: CubeClient, a) -> None:
    rec, key = c.create_api_key(a.name or "")
    if a.json:
        return print_json({"apiKey": _dict(rec), "key": key})
    print(key)
    print(f"(key id {rec.key_id}; shown once: only its SHA-256 is stored)", file=sys.stderr)


def apikey_list(c: CubeClient, a) -> None:
    keys = c.list_api_keys()
    if a.json:
        return print_json(keys)
    print_table(["KEY ID", "NAME", "KEY", "CREATED"], [[k.key_id, k.name or "-", k.mask, when(k.created_at)] for k in keys])


def apikey_revoke(c: CubeClient, a) -> None:
    c.revoke_api_key(a.key_id)
    print_json({"keyId": a.key_id, "revoked": True}) if a.json else print(f"revoked {a.key_id}")


def status(c: CubeClient, a) -> None:
    s = c.cluster_status()
    if a.json:
        return print_json(s)
    print_fields([("leader", f"{s.leader.master_id} ({s.leader.address})" if s.leader.master_id else "none"),
                  ("leader since", when(s.leader.since)), ("this master", s.self.master_id),
                  ("is leader", "yes" if s.is_leader else "no")])


# ---- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--master", default=argparse.SUPPRESS, help="master gRPC address (env CUBE_MASTER_ADDR)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    ap = argparse.ArgumentParser(prog="cubemastercli", description="Operate a Cube cluster", parents=[common])
    groups = ap.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def cmd(sub, name: str, fn: Callable, help: str):
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(fn=fn)
        return p

    tpl = groups.add_parser("tpl", help="templates").add_subparsers(dest="cmd", required=True)
    cmd(tpl, "list", tpl_list, "list templates")
    cmd(tpl, "info", tpl_info, "show a template").add_argument("template", help="template id or alias")
    p = cmd(tpl, "delete", tpl_delete, "delete a template")
    p.add_argument("template")
    p.add_argument("--force", action="store_true", help="kill the sandboxes that use it first")
    # Room for the next ones: `tpl create-from-image`, `tpl watch` (template builds).

    sb = groups.add_parser("sandbox", help="sandboxes").add_subparsers(dest="cmd", required=True)
    p = cmd(sb, "list", sandbox_list, "list sandboxes")
    p.add_argument("--state", help="running, paused or running,paused (default both)")
    p.add_argument("--metadata", action="append", metavar="K=V", help="filter; repeatable")
    p.add_argument("--template")
    cmd(sb, "info", sandbox_info, "show a sandbox").add_argument("sandbox_id")
    cmd(sb, "kill", sandbox_kill, "kill sandboxes").add_argument("sandbox_ids", nargs="+", metavar="sandbox_id")

    node = groups.add_parser("node", help="nodes").add_subparsers(dest="cmd", required=True)
    cmd(node, "list", node_list, "list nodes")

    key = groups.add_parser("apikey", help="API keys").add_subparsers(dest="cmd", required=True)
    cmd(key, "create", apikey_create, "issue a key (printed once)").add_argument("--name", default="")
    cmd(key, "list", apikey_list, "list keys")
    cmd(key, "revoke", apikey_revoke, "revoke a key").add_argument("key_id")

    cmd(groups, "status", status, "leader and this master")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    with CubeClient(getattr(args, "master", None)) as client:
        try:
            args.fn(client, args)
        except CubeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
