"""Issue 14's calls with the unmodified E2B JS SDKs (`e2b` 2.51.0, `@e2b/code-interpreter` 2.8.0,
the newest on npm; pinned in js/package.json and js/package-lock.json): snapshots, fork, live
network update, private traffic with its access token, the v2 create/connect endpoints,
`Template.exists`, the envd details, filesystem-only pause and snapshots with reboot on resume,
`maskRequestHost`, `httpsPorts`, and template tags. The JS side of test_e2e_snapshots.py, test_e2e_network.py,
test_e2e_sdk.py, test_e2e_pause_modes.py and test_e2e_template_tags.py.

Each test runs one case of js/sdk_parity.mjs, which prints what it saw as JSON; the assertions
are here. The script kills its sandboxes and deletes its snapshots itself; whatever it could not
(it died, it timed out) is removed here through the API, and every sandbox it made is checked
gone from the node.
"""
from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cube_common import netns
from deploy.env import sdk_env
from tests.e2e import cluster
from tests.e2e.cluster import CFG
from tests.e2e.run import CREATED, RUN_ID
from tests.e2e.test_e2e_js import JS, js_env, node_modules  # noqa: F401 - node_modules is a fixture

TEMPLATES = cluster.STATE / "cubelet" / "templates"
SCRIPT_TIMEOUT_S = 600


def _text(b: str | bytes | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _remove_leftovers(sandbox_ids: list[str], snapshot_ids: list[str]) -> None:
    """What a script that did not finish left: its sandboxes, then its snapshots (a snapshot in use
    cannot be deleted)."""
    headers = {"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]}
    for path in [f"/sandboxes/{s}" for s in sandbox_ids] + [f"/templates/{s}" for s in snapshot_ids]:
        try:
            httpx.delete(f"{cluster.API_URL}{path}", headers=headers, timeout=60)
        except httpx.HTTPError:
            pass


def run_case(node: str, case: str, extra_env: dict[str, str] | None = None) -> dict:
    """Runs `node sdk_parity.mjs <case>`, records its sandboxes in CREATED, checks that it
    finished, cleaned up after itself and that its sandboxes are gone from the node, and returns
    its JSON."""
    env = {**js_env(), **(extra_env or {})}
    try:
        r = subprocess.run([node, "sdk_parity.mjs", case], cwd=JS, env=env, capture_output=True, text=True,
                           timeout=SCRIPT_TIMEOUT_S)
        stdout, stderr, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, rc = _text(e.stdout), _text(e.stderr), None
    lines = stdout.splitlines()
    created = [line.split()[1] for line in lines if line.startswith("created ")]
    snapshots = [line.split()[1] for line in lines if line.startswith("snapshot ")]
    CREATED.update(created)
    try:
        out = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    except json.JSONDecodeError:
        out = {}
    if rc != 0 or out.get("cleanup"):
        _remove_leftovers(created, snapshots)
    assert rc == 0 and out, (f"sdk_parity.mjs {case} {'timed out' if rc is None else f'exited {rc}'}\n"
                             f"error: {out.get('error')}\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}")
    assert out["created"] == created and out["cleanup"] == [], out
    for sid in created:
        cluster.wait_until(lambda sid=sid: not cluster.traces_of(sid), 60, what=f"JS sandbox {sid} gone")
    return out


def test_js_snapshot_create_list_delete(node_modules):  # noqa: F811
    """`sbx.createSnapshot({name})` of a running code interpreter; two sandboxes created from it
    (one by the snapshot id, one by its name) start with the source's kernel variable and file
    but not what the source wrote afterwards, each with its own env, writes and entropy;
    `listSnapshots` (static with `sandboxId` or `name`, on the instance, and the team's list
    paged one by one) shows it and `Template.exists(name)` is true; `deleteSnapshot` is refused
    (409) while sandboxes use it, then deletes it (true), then finds nothing (false), and the
    name is free again; the source runs on throughout."""
    out = run_case(node_modules, "snapshot")
    snap = out["snapshotId"]
    tid = snap.removesuffix(":default")
    assert tid != "code-interpreter" and out["templateIds"] == [tid, tid]
    assert out["names"] == [out["name"] + ":default"]
    assert out["srcSet"] == ["set\n"] and out["srcAfterSnapshot"] == "41" and out["srcAtEnd"] == "41"
    assert len(set(out["ids"])) == 3
    assert out["aAnswer"] == "42" and out["aMark"] == "from the source" and out["aHasLater"] is False
    assert out["aWho"] == "from-snapshot-a"
    assert out["mineElsewhere"] == [False, False]
    assert out["randoms"][0] != out["randoms"][1]
    assert out["listedBySandbox"] == [snap] and out["listedFromInstance"] == [snap] and out["inTeamListing"]
    assert out["listedByName"] == [snap] and out["nameExists"] is True
    in_use = out["deleteInUse"]
    assert in_use and in_use["name"] == "SandboxError" and in_use["statusCode"] == 409, in_use
    assert out["aAfterRefusal"] == "41" and out["killed"] == [True, True]
    assert out["deleted"] is True and out["deletedAgain"] is False
    assert out["nameExistsAfterDelete"] is False and out["listedByNameAfterDelete"] == []
    assert not (TEMPLATES / tid).exists()
    gone = out["createFromDeleted"]
    assert gone and gone["statusCode"] == 404, gone


def test_js_fork(node_modules):  # noqa: F811
    """`sbx.fork({count: 2})` answers two running `Sandbox` instances (of the code-interpreter
    class) with ids of their own that start where the source was (kernel state, a file, env,
    metadata) and then diverge; the source keeps running with its state and lists no snapshot;
    `Sandbox.fork(id, {count: 1})` works too. A count of 0 or -1 (which the JS SDK passes on
    unchecked) is the API's 400 and creates nothing; an unknown id is SandboxNotFoundError."""
    out = run_case(node_modules, "fork")
    assert out["forkKinds"] == ["Sandbox", "Sandbox"]
    assert out["distinct"] == 4
    assert out["srcSet"] == ["1\n"]
    assert out["aState"] == "['src', 'a']" and out["bState"] == "['src']" and out["srcState"] == "['src']"
    assert out["bWho"] == "source" and out["bFile"] == "written before the fork"
    assert out["onlyBElsewhere"] == [False, False]
    assert out["metadata"]["a"] == out["metadata"]["src"] == {"e2e": RUN_ID, "lang": "js", "case": "js-fork-src"}
    assert out["srcRunning"] is True and out["srcSnapshots"] == []
    assert out["staticFork"] == "['src']"
    for bad in ("countZero", "countNegative"):
        assert out[bad] and out[bad]["statusCode"] == 400 and "count" in out[bad]["message"], out[bad]
    assert out["unknown"] and out["unknown"]["name"] == "SandboxNotFoundError", out["unknown"]
    # Only the three forks carry the source's metadata: the refused counts made nothing.
    assert out["forksOfSrc"] == sorted(out["created"])


# ---- live network update: a UDP listener in a namespace of the test's own ---------------------

def _ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", "-n", ns, *args] if ns else ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def _routed_prefixes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix in the node's routing tables but the default route."""
    out = []
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "anycast"):
            words = words[1:]
        if words and words[0] != "default":
            out.append(ipaddress.IPv4Network(words[0], strict=False))
    return out


@pytest.fixture
def udp_listener(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A network namespace joined to the node by a veth pair, addressed from TEST-NET-3
    (203.0.113.0/24, RFC 5737: documentation only, never routed on the internet) with a /30 of
    its own, and a UDP socket in it that logs every datagram, one per line. The node routes the
    /30 to the veth, so what a sandbox sends there stays on this machine; CubeVS only NATs what
    leaves through an uplink, so nothing answers and the log is the only witness.
    Yields (address, port, log)."""
    suffix = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"cube-e2e-js-{suffix}", f"cjh{suffix}", f"cjn{suffix}"
    taken = _routed_prefixes()
    free = [n for n in ipaddress.ip_network("203.0.113.0/24").subnets(new_prefix=30)
            if not any(n.overlaps(t) for t in taken)]
    net = random.choice(free)
    node_addr, target = (str(a) for a in net.hosts())
    log = tmp_path / "udp.log"
    log.touch()
    stop = threading.Event()
    reader = None
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{node_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("addr", "add", f"{target}/30", "dev", ns_if, ns=ns)
        _ip("link", "set", ns_if, "up", ns=ns)
        _ip("route", "add", "default", "via", node_addr, ns=ns)  # replies toward sandbox addresses
        # The target is reached through the veth, never through the node's default route.
        assert f"dev {host_if}" in _ip("route", "get", target)
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((target, 0))
        sock.settimeout(0.2)
        port = sock.getsockname()[1]

        def receive() -> None:
            with sock, open(log, "a", encoding="utf-8") as f:
                while not stop.is_set():
                    try:
                        data = sock.recv(2048)
                    except TimeoutError:
                        continue
                    f.write(data.decode(errors="replace") + "\n")
                    f.flush()

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        yield target, port, log
    finally:
        stop.set()
        if reader is not None:
            reader.join(5)
        subprocess.run(["ip", "netns", "del", ns], timeout=30)
    # The kernel dismantles the namespace, and with it the veth pair, in the background.
    cluster.wait_until(lambda: host_if not in _ip("-o", "link", "show"), 30, what=f"{host_if} removed")
    assert not any(t.overlaps(net) for t in _routed_prefixes())


def test_js_update_network(node_modules, udp_listener):  # noqa: F811
    """`sbx.updateNetwork(...)` (PUT /sandboxes/{id}/network) changes what a running sandbox may
    send, each time replacing the whole policy: a datagram from the guest to an address on this
    machine arrives when open, not with `denyOut` of that address, again with `allowOut` of it
    beside `denyOut: 0.0.0.0/0` (allow wins), not with `allowInternetAccess: false`, and again
    once `{}` cleared everything; `getInfo` reports each policy; a rule that is not an IP or
    CIDR is a 400 that leaves the policy alone; an unknown id is SandboxNotFoundError; the
    kernel's memory shows the VM never restarted."""
    target, port, log = udp_listener
    out = run_case(node_modules, "network", {"CUBE_E2E_UDP_TARGET": f"{target}:{port}",
                                              "CUBE_E2E_UDP_LOG": str(log)})
    steps = {s["label"]: s for s in out["steps"]}
    assert [s["label"] for s in out["steps"]] == ["open", "deny-host", "allow-wins", "no-internet", "cleared"]
    assert {label: s["arrived"] for label, s in steps.items()} == {
        "open": True, "deny-host": False, "allow-wins": True, "no-internet": False, "cleared": True}, log.read_text()
    assert steps["deny-host"]["info"]["network"] == {"allowOut": [], "denyOut": [f"{target}/32"]}
    assert steps["allow-wins"]["info"]["network"] == {"allowOut": [f"{target}/32"], "denyOut": ["0.0.0.0/0"]}
    assert steps["no-internet"]["info"]["allowInternetAccess"] is False
    assert steps["cleared"]["info"]["allowInternetAccess"] is True
    assert steps["cleared"]["info"]["network"] in (None, {"allowOut": [], "denyOut": []})
    bad = out["badRule"]
    assert bad and bad["statusCode"] == 400 and "not-a-cidr" in bad["message"], bad
    assert out["afterBadRule"] is True
    assert out["unknown"] and out["unknown"]["name"] == "SandboxNotFoundError", out["unknown"]
    assert out["kept"] == "in memory"
    # Only what the guest sent while it was allowed arrived.
    arrived = {line.rsplit("-", 1)[0] for line in log.read_text().split()}
    assert arrived == {"open", "allow-wins", "cleared", "after-bad-rule"}, arrived


# ---- allowPublicTraffic: false -----------------------------------------------------------------

@pytest.fixture(scope="module")
def private_run(node_modules) -> dict:  # noqa: F811
    return run_case(node_modules, "private")


def test_js_private_traffic_needs_the_token(private_run):
    """`network: {allowPublicTraffic: false}`: the create answers a 32-character traffic access
    token, which the SDK sends on its own calls (runCode, port 49999), envd needs none; a plain
    `fetch` of `getHost(8000)` is refused without it (401, naming the header) and with a wrong
    one (403), and served with it; `Sandbox.connect` hands out the same token; a fork gets a
    token of its own, and its copy of the server answers to that token and not the source's."""
    out = private_run
    assert out["tokenLength"] == 32
    assert out["runCode"] == "42" and out["envd"] == "envd"
    assert out["withToken"] == {"status": 200, "listsHome": True}
    assert out["without"]["status"] == 401 and "missing E2B-Traffic-Access-Token" in out["without"]["body"]
    assert out["wrong"]["status"] == 403, out["wrong"]
    assert out["connectToken"] is True
    assert out["forkToken"] == {"set": True, "differs": True} and out["forkRunCode"] == "42"
    assert out["forkWithOwn"] == 200 and out["forkWithSources"] == 403


def test_js_private_traffic_reported_by_get_info(private_run):
    """`getInfo().network.allowPublicTraffic` is false for such a sandbox: GET /sandboxes/{id}
    reports it in `network` as E2B's SandboxDetail does (and leaves out the default, true)."""
    assert private_run["info"]["network"] == {"allowOut": [], "denyOut": [], "allowPublicTraffic": False}


# ---- v2 endpoints, Template.exists, not-found errors -------------------------------------------

def test_js_v2_endpoints_and_template_exists(node_modules):  # noqa: F811
    """The SDK creates with POST /v2/sandboxes and connects with POST /v2/sandboxes/{id}/connect
    (seen in its request log): connecting to a running sandbox is the same sandbox, connecting to
    a paused one resumes it with its memory. Unknown ids: connect and getInfo raise
    SandboxNotFoundError, kill answers false. `Template.exists` (GET /templates/aliases/{alias})
    is true for the default template's aliases `base` and `code-interpreter-v1`, false for an
    unknown name; the deprecated `Template.aliasExists` agrees."""
    out = run_case(node_modules, "api")
    sid = out["created"][0]
    assert out["requests"] == ["POST /v2/sandboxes", f"POST /v2/sandboxes/{sid}/connect",
                               f"POST /sandboxes/{sid}/pause", f"POST /v2/sandboxes/{sid}/connect"]
    assert out["connectSame"] is True and out["connectRunCode"] == "kept"
    assert out["paused"] is True and out["stateWhilePaused"] == "paused"
    assert out["stateAfterConnect"] == "running" and out["resumedRunCode"] == "kept"
    assert out["connectUnknown"]["name"] == "SandboxNotFoundError"
    assert out["getInfoUnknown"]["name"] == "SandboxNotFoundError"
    assert out["killUnknown"] is False
    exists = out["exists"]
    assert exists.pop("base") is True and exists.pop("code-interpreter-v1") is True
    assert list(exists.values()) == [False]
    assert out["aliasExistsBase"] is True


# ---- envd details --------------------------------------------------------------------------------

def test_js_envd_details(node_modules):  # noqa: F811
    """envd through the proxy as the JS SDK's own tests expect: a create-then-write under
    `watchDir` gives create, chmod, write (and nothing more); `getInfo` on a symlink reports its
    target's type and resolved path; a write without metadata clears the metadata an earlier
    write set; an expired signed download URL is 401 `signature is already expired` and a valid
    one serves the file; `python` is on PATH beside `python3`."""
    out = run_case(node_modules, "envd")
    assert out["events"] == [["f.txt", "create"], ["f.txt", "chmod"], ["f.txt", "write"]]
    assert out["link"] == {"type": "file", "symlinkTarget": "/home/user/w/f.txt", "name": "link"}
    assert out["metaWritten"] == {"k": "v"} and out["metaInfo"] == {"k": "v"}
    assert out["metaOverwritten"] is None and out["metaAfter"] is None
    assert out["expired"] == {"status": 401, "body": {"code": 401, "message": "signature is already expired"}}
    assert out["fresh"] == {"status": 200, "body": "2"}
    assert out["python"] == ["3", "Python"]


def test_js_command_running_when_its_sandbox_is_killed(node_modules):  # noqa: F811
    """A foreground `commands.run` streaming when its sandbox is killed ends within seconds with
    the JS SDK's TimeoutError "The sandbox was killed or reached its end of life while the request
    was in flight" (the stream is reset and its health probe meets the proxy's 502), not after its
    own timeout; afterwards `isRunning` is false and `connect` is SandboxNotFoundError."""
    out = run_case(node_modules, "killed")
    assert out["killedCall"] is True
    assert out["outcome"]["name"] == "TimeoutError", out["outcome"]
    assert "killed or reached its end of life" in out["outcome"]["message"], out["outcome"]
    assert out["endedAfterMs"] < 30_000, out["endedAfterMs"]
    assert out["runningAfter"] is False
    assert out["connectAfter"]["name"] == "SandboxNotFoundError"


# ---- filesystem-only pause and snapshots, reboot on resume (cold boots: tens of seconds) ---------

def _assert_booted_with_disk(booted: dict, notes: str) -> None:
    """What bootedWithDisk in the script saw: the file written before is there, the /dev/shm mark
    and the kernel variable are gone (NameError), and the new kernel runs code."""
    assert booted == {"notes": notes, "memoryMark": "booted", "keptError": "NameError", "runCode": "2"}, booted


def test_js_filesystem_pause_and_reboot_on_resume(node_modules):  # noqa: F811
    """`sbx.pause({keepMemory: false})` answers true and leaves the sandbox paused, GET
    /sandboxes/{id} saying pauseMode "filesystem"; `Sandbox.connect` (no option) brings the same
    sandbox back by a cold boot: the file written through envd (never synced) before the pause is
    there, the /dev/shm mark and the kernel variable are gone, runCode answers, its env var and
    disk work, and pauseMode is no longer reported. `connect({onResume: 'reboot'})` of the running
    sandbox leaves its memory alone. A full pause of it (pauseMode "full") and
    `Sandbox.connect({onResume: 'reboot'})` cold-boot it too, with what was synced and what the
    first boot wrote; an onResume outside 'restore'/'reboot' is the SDK's InvalidArgumentError."""
    out = run_case(node_modules, "fs-pause")
    assert out["set"] == ["ok\n"] and out["set2"] == ["ok\n"]
    assert out["fsPaused"] is True and out["fsState"] == "paused" and out["fsPauseMode"] == "filesystem"
    assert out["fsSameId"] is True and out["fsStateAfter"] == "running" and out["fsPauseModeAfter"] is None
    _assert_booted_with_disk(out["fsBooted"], "written before the pause")
    assert out["fsWho"] == "me" and out["fsAfter"] == "after the reboot"
    assert out["rebootWhileRunning"] == "in the kernel"
    assert out["fullPaused"] is True and out["fullPauseMode"] == "full"
    assert out["rebootState"] == "running"
    _assert_booted_with_disk(out["rebooted"], "written before the full pause")
    assert out["rebootAfter"] == "after the reboot"
    assert out["badOnResume"] and out["badOnResume"]["name"] == "InvalidArgumentError", out["badOnResume"]
    print(f"filesystem pause {out['fsPauseMs']} ms, cold-boot resume {out['fsBootMs']} ms, "
          f"reboot resume {out['rebootMs']} ms")


def test_js_filesystem_snapshot_boots_on_its_disk(node_modules):  # noqa: F811
    """A filesystem-only snapshot (POST /sandboxes/{id}/snapshots with `memory: false`: the JS SDK's
    createSnapshot has no option for it) is listed by `Sandbox.listSnapshots({sandboxId})`; a
    sandbox `Sandbox.create`d from it cold-boots on its disk (the file written before it, not the
    /dev/shm mark, the kernel variable, or what the source wrote afterwards), and its writes stay
    its own; the source keeps its memory throughout; `deleteSnapshot` deletes it."""
    out = run_case(node_modules, "fs-snapshot")
    tid = out["snapshotId"].removesuffix(":default")
    assert out["snapshotStatus"] == 201 and out["names"] == [out["name"] + ":default"]
    assert out["listedBySandbox"] == [out["snapshotId"]]
    assert out["set"] == ["ok\n"]
    assert out["srcKept"] == out["srcKeptAtEnd"] == ["in the kernel\n"]
    assert out["aTemplateId"] == tid
    _assert_booted_with_disk(out["aBooted"], "written before the pause")
    assert out["aHasLater"] is False and out["mineInSrc"] is False
    assert out["aKilled"] is True and out["deleted"] is True
    assert not (TEMPLATES / tid).exists()
    print(f"cold boot from the snapshot {out['bootMs']} ms")


def test_js_filesystem_auto_pause(node_modules):  # noqa: F811
    """`lifecycle: {onTimeout: {action: 'pause', keepMemory: false}}`: getInfo reports onTimeout
    pause without autoResume, and the timeout's pause keeps the disk only (pauseMode
    "filesystem"). Adding `autoResume: true` is refused by the SDK (InvalidArgumentError, before
    any request) and, sent as the SDK would (autoPauseMemory false, autoResume enabled), by the
    API (400); neither created a sandbox."""
    out = run_case(node_modules, "fs-autopause")
    assert out["lifecycle"] == {"onTimeout": "pause", "autoResume": False}
    assert out["autoPausedState"] == "paused" and out["autoPauseMode"] == "filesystem"
    assert out["sdkRefusal"] and out["sdkRefusal"]["name"] == "InvalidArgumentError", out["sdkRefusal"]
    assert "keepMemory: false" in out["sdkRefusal"]["message"]
    assert out["apiRefusal"]["status"] == 400 and "autoResume" in out["apiRefusal"]["message"], out["apiRefusal"]
    assert out["refusedCreated"] == [] and len(out["created"]) == 1


# ---- maskRequestHost ---------------------------------------------------------------------------

def test_js_mask_request_host(node_modules):  # noqa: F811
    """`network: {maskRequestHost: 'localhost:${PORT}'}`: a server in the sandbox fetched at
    `https://` + `getHost(port)` (the node's CA through NODE_EXTRA_CA_CERTS) sees Host
    `localhost:<port>` for each port it serves (8000, 3000) and the public name in
    X-Forwarded-Host; `getInfo().network.maskRequestHost` is the mask as given; the SDK's own
    calls (runCode, envd) work; after a pause and `Sandbox.connect` the mask still applies."""
    out = run_case(node_modules, "mask")
    for port in ("8000", "3000"):
        assert out["seen"][port] == {"host": f"localhost:{port}", "xfh": out["hosts"][port]}, out["seen"]
    assert out["info"]["maskRequestHost"] == "localhost:${PORT}"
    assert out["runCode"] == "42" and out["paused"] is True
    assert out["seenAfterResume"] == {"host": "localhost:8000", "xfh": out["hosts"]["8000"]}
    assert out["envdAfterResume"] == "envd"
    assert out["infoAfterResume"]["maskRequestHost"] == "localhost:${PORT}"


# ---- httpsPorts ---------------------------------------------------------------------------------

def test_js_https_ports(node_modules, tmp_path):  # noqa: F811
    """`network: {httpsPorts: [8443]}`: a server in the sandbox that speaks HTTPS itself, with a
    self-signed certificate, is fetched at `https://` + `getHost(8443)` (the proxy's TLS hop to it
    accepts the certificate); `getInfo().network.httpsPorts` lists the port."""
    from testkit.proxy import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    out = run_case(node_modules, "https", {"CUBE_E2E_TLS_CERT": str(cert), "CUBE_E2E_TLS_KEY": str(key)})
    assert out["seen"] == {"host": out["host"], "tls": True}, out
    assert out["info"]["httpsPorts"] == [8443]


# ---- template tags -------------------------------------------------------------------------------

def test_js_template_tags(node_modules):  # noqa: F811
    """A named snapshot is a template of the team: `Template.assignTags('<name>:default', ['v1',
    'Stable'])` answers the tags lower-cased and the build; `Template.getTags` (by name or id)
    lists `default` first, all on that build; a sandbox created from `<name>:v1` starts from it
    (its template id, its file), and tags match case-insensitively; an unknown tag is the API's
    404 (SandboxError on create, TemplateError on assignTags), `default` cannot be assigned
    (400), an unknown template's getTags is 404; `Template.removeTags` removes one (creating from
    it is then 404; removing it again is no error); deleting the snapshot deletes its tags."""
    out = run_case(node_modules, "tags")
    name, tid = out["name"], out["snapshotId"].removesuffix(":default")
    assert out["assigned"]["tags"] == ["stable", "v1"]
    assert out["tags"] == ["default", "stable", "v1"] and out["tagsById"] == out["tags"]
    assert out["tagBuildIds"] == [out["assigned"]["buildId"]] and out["tagDates"] is True
    assert out["fromTagTemplateId"] == tid and out["fromTagMark"] == "tagged build" and out["fromTagKilled"] is True
    assert out["fromUpper"] is None
    not_found = f"tag 'nope' of template '{name}' not found"
    assert out["createUnknown"] == {"name": "SandboxError", "statusCode": 404, "message": f"404: {not_found}"}
    assert out["assignUnknown"] == {"name": "TemplateError", "statusCode": 404, "message": f"404: {not_found}"}
    assert out["assignDefault"]["name"] == "TemplateError" and out["assignDefault"]["statusCode"] == 400
    assert out["getTagsUnknown"]["name"] == "TemplateError" and out["getTagsUnknown"]["statusCode"] == 404
    assert out["tagsAfterRemove"] == ["default", "v1"]
    assert out["createRemoved"]["name"] == "SandboxError" and out["createRemoved"]["statusCode"] == 404
    assert out["removeAgain"] is None
    assert out["srcKilled"] is True and out["deleted"] is True
    assert out["getTagsAfterDelete"]["name"] == "TemplateError" and out["getTagsAfterDelete"]["statusCode"] == 404
    assert not (TEMPLATES / tid).exists()
    assert not cluster.etcd_get_prefix(f"/cube/template-tags/{tid}/")
