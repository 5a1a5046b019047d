"""E2B volumes through cube-api (routes/volumes.py): the unmodified E2B SDK's Volume against a real
master and API with auth on (two teams) and the fake node, plus raw HTTP for what the SDK never
sends. Content calls go straight to the API's plain address (the SDK's ``api_url``, or
E2B_VOLUME_API_URL), not through the node's proxy."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    VolumeException,
    VolumeNotFoundException,
    VolumePathNotFoundException,
)

from tests.control.cluster import one_node_cluster
from tests.control.teams_support import Teams, point_sdk_at

pytestmark = pytest.mark.timeout(120)

CAP = 1 << 20  # the test API's volume_file_max_bytes
DOMAIN = "cube.localhost"  # the cluster's CUBE_DOMAIN
UNKNOWN = "zzzzzzzzzzzzzzzzzzzz"  # a well-formed volume id nobody has


@pytest.fixture(scope="module")
def vt(etcd_server) -> Iterator[Teams]:
    with one_node_cluster(etcd_server.endpoint, CUBE_AUTH="on", CUBE_API_VOLUME_FILE_MAX_BYTES=str(CAP)) as c:
        yield Teams(c)


@pytest.fixture
def t(vt, monkeypatch) -> Iterator[Teams]:
    point_sdk_at(vt, monkeypatch)
    monkeypatch.delenv("E2B_VOLUME_API_URL", raising=False)
    vt.c.wipe_sandboxes()
    yield vt
    vt.c.wipe_sandboxes()
    for key in (vt.a, vt.b):
        for v in vt.api(key, "GET", "/volumes").json():
            vt.api(key, "DELETE", f"/volumes/{v['volumeID']}")


def content(t: Teams, token: str | None, method: str, volume_id: str, route: str, **kw) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{t.c.api_url}/volumecontent/{volume_id}/{route}", headers=headers, timeout=30,
                         **kw)


def e2b_error(r: httpx.Response, status: int, contains: str = "") -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == status and isinstance(body["message"], str), body
    assert contains in body["message"], body
    return body["message"]


def new_volume(t: Teams, key: str, name: str) -> dict:
    r = t.api(key, "POST", "/volumes", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


# ---- the SDK, end to end ----------------------------------------------------------------------

def test_sdk_volume_lifecycle_and_content(t, monkeypatch):
    vol = Volume.create("data", **t.sdk(t.a))
    assert vol.name == "data" and vol.token
    # The SDK sends content calls to https://api.<domain>: ours, never E2B's.
    raw = t.api(t.a, "GET", f"/volumes/{vol.volume_id}").json()
    assert raw == {"volumeID": vol.volume_id, "name": "data", "token": vol.token, "domain": DOMAIN}
    assert vol._domain == DOMAIN
    assert [(v.volume_id, v.name) for v in Volume.list(**t.sdk(t.a))] == [(vol.volume_id, "data")]
    info = Volume.get_info(vol.volume_id, **t.sdk(t.a))
    assert (info.volume_id, info.name, info.token, info.domain) == (vol.volume_id, "data", vol.token, DOMAIN)
    same = Volume.connect(vol.volume_id, **t.sdk(t.a))
    assert same.token == vol.token

    opts = {"api_url": t.c.api_url}
    d = vol.make_dir("/app/logs", mode=0o700, force=True, **opts)
    assert (d.type.value, d.path, d.name) == ("directory", "/app/logs", "logs")
    with pytest.raises(VolumePathNotFoundException):
        vol.make_dir("/missing/child", **opts)  # no force: the parent must exist

    f = vol.write_file("/app/hello.txt", "hello volume", **opts)
    assert (f.type.value, f.path, f.size) == ("file", "/app/hello.txt", 12)
    assert f.mtime.tzinfo is not None
    assert vol.read_file("/app/hello.txt", **opts) == "hello volume"

    # A body larger than one gRPC message, streamed from a file object both ways.
    blob = os.urandom(700_000)
    f = vol.write_file("/app/blob.bin", io.BytesIO(blob), **opts)
    assert f.size == len(blob)
    assert vol.read_file("/app/blob.bin", format="bytes", **opts) == blob
    assert b"".join(vol.read_file("/app/blob.bin", format="stream", **opts)) == blob
    f = vol.write_file("/new/dir/x.txt", b"x", force=True, **opts)  # force: parents made
    assert f.path == "/new/dir/x.txt"

    # E2B_VOLUME_API_URL instead of the per-call option.
    monkeypatch.setenv("E2B_VOLUME_API_URL", t.c.api_url)
    top = vol.list("/")
    assert {e.path for e in top} == {"/app", "/new"}
    deep = vol.list("/", depth=3)
    assert {"/app", "/app/logs", "/app/hello.txt", "/app/blob.bin", "/new", "/new/dir", "/new/dir/x.txt"} == \
        {e.path for e in deep}
    st = vol.get_info("/app/hello.txt")
    assert (st.name, st.size, st.type.value) == ("hello.txt", 12, "file")
    up = vol.update_metadata("/app/hello.txt", uid=1000, gid=1001, mode=0o640)
    assert (up.uid, up.gid, up.mode) == (1000, 1001, 0o640)
    assert vol.exists("/app/hello.txt") and not vol.exists("/app/nope")
    vol.remove("/app")
    assert not vol.exists("/app/hello.txt")
    with pytest.raises(VolumePathNotFoundException):
        vol.read_file("/app/hello.txt")
    with pytest.raises(VolumePathNotFoundException):
        vol.remove("/app")
    with pytest.raises(NotFoundException):
        vol.get_info("/app")

    assert Volume.destroy(vol.volume_id, **t.sdk(t.a)) is True
    assert Volume.destroy(vol.volume_id, **t.sdk(t.a)) is False
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(vol.volume_id, **t.sdk(t.a))
    assert Volume.list(**t.sdk(t.a)) == []


def test_names_are_per_team_and_unique_within_one(t):
    a = new_volume(t, t.a, "shared")
    b = new_volume(t, t.b, "shared")
    assert a["volumeID"] != b["volumeID"] and a["token"] != b["token"]
    e2b_error(t.api(t.a, "POST", "/volumes", json={"name": "shared"}), 409)
    with pytest.raises(VolumeException):
        Volume.create("shared", **t.sdk(t.a))


# ---- isolation --------------------------------------------------------------------------------

def test_another_teams_volume_is_not_there(t):
    va = Volume.create("private", **t.sdk(t.a))
    vb = new_volume(t, t.b, "mine")
    # Team B cannot see, get, connect to or delete team A's volume: 404 as for an unknown one.
    assert [v.name for v in Volume.list(**t.sdk(t.b))] == ["mine"]
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(va.volume_id, **t.sdk(t.b))
    with pytest.raises(VolumeNotFoundException):
        Volume.connect(va.volume_id, **t.sdk(t.b))
    assert Volume.destroy(va.volume_id, **t.sdk(t.b)) is False
    unknown = e2b_error(t.api(t.b, "GET", f"/volumes/{UNKNOWN}"), 404)
    other = e2b_error(t.api(t.b, "GET", f"/volumes/{va.volume_id}"), 404)
    assert other == unknown.replace(UNKNOWN, va.volume_id)
    e2b_error(t.api(t.b, "DELETE", f"/volumes/{va.volume_id}"), 404)
    e2b_error(t.api(t.b, "GET", "/volumes/private"), 404)  # names resolve within the caller's team
    # Nor mount it, by name or id.
    for ref in ("private", va.volume_id):
        r = t.api(t.b, "POST", "/sandboxes", json={"templateID": "base",
                                                    "volumeMounts": [{"name": ref, "path": "/mnt/x"}]})
        e2b_error(r, 404)
    assert not t.c.sandbox_ids()

    # Content calls take the volume's token, not an API key: team B's key opens nothing.
    r = content(t, None, "GET", va.volume_id, "dir", params={"path": "/"}, headers={"X-API-KEY": t.b})
    e2b_error(r, 401)
    r = content(t, None, "GET", va.volume_id, "dir", params={"path": "/"}, headers={"X-API-KEY": t.a})
    e2b_error(r, 401)  # not even the owner's key
    token = va.token
    assert token
    for bad in (t.b, t.a, vb["token"], token + "x", token.upper(), "x"):
        e2b_error(content(t, bad, "GET", va.volume_id, "dir", params={"path": "/"}), 401)
        e2b_error(content(t, bad, "PUT", va.volume_id, "file", params={"path": "/f"}, content=b"data"), 401)
        e2b_error(content(t, bad, "GET", va.volume_id, "file", params={"path": "/f"}), 401)
    for header in (b"Bearer", b"Basic " + token.encode(), token.encode(), b"Bearer " + b"x" * 600,
                   "Bearer tök".encode(), b"bearer  " + token.encode() + b"x"):
        r = httpx.get(f"{t.c.api_url}/volumecontent/{va.volume_id}/dir", params={"path": "/"},
                      headers={b"Authorization": header})
        e2b_error(r, 401)
    # The SDK raises with the message when its token is wrong.
    with pytest.raises(AuthenticationException):
        Volume(va.volume_id, va.name, token=vb["token"]).list("/", api_url=t.c.api_url)
    # Nothing was written by any of them.
    assert va.list("/", api_url=t.c.api_url) == []
    # The right token works.
    assert content(t, va.token, "GET", va.volume_id, "dir", params={"path": "/"}).json() == []


# ---- bad input --------------------------------------------------------------------------------

BAD_CONTENT = [
    ("GET", "dir", {}), ("GET", "dir", {"path": ""}), ("GET", "dir", {"path": "/a/../b"}),
    ("GET", "dir", {"path": "/a\x00b"}), ("GET", "dir", {"path": "/a\nb"}), ("PUT", "file", {"path": "/a\rb"}),
    ("GET", "dir", {"path": "/" + "x" * 256}),
    ("GET", "dir", {"path": "/" + "a" * 4100}), ("GET", "dir", {"path": "/", "depth": "0"}),
    ("GET", "dir", {"path": "/", "depth": "17"}), ("GET", "dir", {"path": "/", "depth": "one"}),
    ("GET", "dir", {"path": "/", "depth": ""}), ("GET", "dir", {"path": "/", "depth": "-1"}),
    ("POST", "dir", {"path": "/d", "mode": "4096"}), ("POST", "dir", {"path": "/d", "mode": "-1"}),
    ("POST", "dir", {"path": "/d", "uid": "4294967295"}), ("POST", "dir", {"path": "/d", "gid": "x"}),
    ("POST", "dir", {"path": "/d", "force": "yes"}), ("POST", "dir", {"path": "/d", "force": ""}),
    ("POST", "dir", {"path": ".."}),
    ("GET", "path", {}), ("GET", "path", {"path": "../etc"}), ("DELETE", "path", {"path": "/"}),
    ("DELETE", "path", {}), ("GET", "file", {}), ("GET", "file", {"path": "/a/.."}),
    ("PUT", "file", {}), ("PUT", "file", {"path": "/"}), ("PUT", "file", {"path": "/f", "mode": "99999"}),
    ("PUT", "file", {"path": "/f", "force": "1"}), ("PUT", "file", {"path": "/f", "uid": "1.5"}),
]


def test_bad_content_inputs_are_400(t):
    v = new_volume(t, t.a, "inputs")
    for method, route, params in BAD_CONTENT:
        r = content(t, v["token"], method, v["volumeID"], route, params=params,
                    content=b"data" if method == "PUT" else None)
        assert r.status_code == 400, (method, route, params, r.text)
        e2b_error(r, 400)
    content(t, v["token"], "POST", v["volumeID"], "dir", params={"path": "/d"})
    for body in (b"[]", b"{", b'{"uid": "1"}', b'{"mode": 4096}', b'{"gid": -1}', b'{"uid": true}',
                 b'{"mode": 1.5}', b'"x"'):
        r = content(t, v["token"], "PATCH", v["volumeID"], "path", params={"path": "/d"}, content=body,
                    headers={"Content-Type": "application/json"})
        e2b_error(r, 400)
    # Reading a directory as a file is refused; the tree is as it was.
    assert content(t, v["token"], "GET", v["volumeID"], "file", params={"path": "/d"}).status_code in (400, 409)
    listing = content(t, v["token"], "GET", v["volumeID"], "dir", params={"path": "/"}).json()
    assert [e["path"] for e in listing] == ["/d"]
    # Paths are normalized the one way every service does it.
    r = content(t, v["token"], "GET", v["volumeID"], "path", params={"path": "d//./"})
    assert r.status_code == 200 and r.json()["path"] == "/d", r.text
    # An unknown volume, or one of another team, is not found (with any token of its own).
    e2b_error(content(t, v["token"], "GET", UNKNOWN, "dir", params={"path": "/"}), 404)


def test_entry_bodies_are_e2bs(t):
    v = new_volume(t, t.a, "bodies")
    r = content(t, v["token"], "PUT", v["volumeID"], "file", params={"path": "/a.txt", "mode": "384"},
                content=b"abc")
    assert r.status_code == 201, r.text
    e = r.json()
    assert set(e) >= {"name", "type", "path", "size", "mode", "uid", "gid", "atime", "mtime", "ctime"}
    assert (e["name"], e["type"], e["path"], e["size"]) == ("a.txt", "file", "/a.txt", 3)
    for k in ("atime", "mtime", "ctime"):
        assert e[k].endswith("Z"), e[k]
    r = content(t, v["token"], "GET", v["volumeID"], "file", params={"path": "/a.txt"})
    assert r.status_code == 200 and r.content == b"abc"
    assert r.headers["content-type"] == "application/octet-stream"
    r = content(t, v["token"], "PATCH", v["volumeID"], "path", params={"path": "/a.txt"}, json={"mode": 0o600})
    assert r.status_code == 200 and r.json()["mode"] == 0o600, r.text
    r = content(t, v["token"], "PATCH", v["volumeID"], "path", params={"path": "/a.txt"})  # no body: no change
    assert r.status_code == 200 and r.json()["mode"] == 0o600, r.text
    assert content(t, v["token"], "DELETE", v["volumeID"], "path", params={"path": "/a.txt"}).status_code == 204
    e2b_error(content(t, v["token"], "GET", v["volumeID"], "path", params={"path": "/a.txt"}), 404)


def test_bad_volume_requests_are_400(t):
    for body in ({}, {"name": ""}, {"name": "-x"}, {"name": "a" * 64}, {"name": "a/b"}, {"name": 5},
                 {"name": None}, {"name": "a b"}, {"name": "abc\n"}):
        e2b_error(t.api(t.a, "POST", "/volumes", json=body), 400)
    for raw in (b"", b"[]", b"{"):
        e2b_error(t.api(t.a, "POST", "/volumes", content=raw), 400)
    with pytest.raises(VolumeException, match="must be 1-63"):
        Volume.create("bad name", **t.sdk(t.a))
    assert t.api(t.a, "GET", "/volumes").json() == []
    e2b_error(httpx.get(t.c.api_url + "/volumes"), 401)  # no key
    e2b_error(t.api("e2b_" + "0" * 40, "POST", "/volumes", json={"name": "x"}), 401)


MOUNT_ERRORS = [
    ("x", "must be an array"), ([1], "must be an object"), ([{"name": "v"}], "must be an object"),
    ([{"path": "/mnt"}], "must be an object"), ([{"name": "v", "path": 3}], "must be an object"),
    ([{"name": "v", "path": "/"}], "cannot be mounted at /"), ([{"name": "v", "path": "/proc/v"}], "/proc"),
    ([{"name": "v", "path": "/tmp"}], "/tmp"), ([{"name": "v", "path": "/mnt/../etc"}], "'..'"),
    ([{"name": "v", "path": ""}], "required"), ([{"name": "v", "path": "/mnt/a\nb"}], "newline"),
    ([{"name": "-v", "path": "/mnt"}], "volume name"),
    ([{"name": "v\n", "path": "/mnt"}], "volume name"),
    ([{"name": "v", "path": "/a"}, {"name": "v", "path": "/b"}], "mounted twice"),
    ([{"name": "v", "path": "/a"}, {"name": "w", "path": "/a/b"}], "overlap"),
    ([{"name": n, "path": f"/m{n}"} for n in "abc"], "at most 2"),
]


def test_bad_volume_mounts_are_400(t):
    new_volume(t, t.a, "v")
    for mounts, message in MOUNT_ERRORS:
        r = t.api(t.a, "POST", "/v2/sandboxes", json={"templateID": "base", "volumeMounts": mounts})
        e2b_error(r, 400, message)
    assert not t.c.sandbox_ids()
    # Absent, null and empty are no mounts.
    extras: list[dict] = [{}, {"volumeMounts": None}, {"volumeMounts": []}]
    for extra in extras:
        r = t.api(t.a, "POST", "/v2/sandboxes", json={"templateID": "base", **extra})
        assert r.status_code == 201, r.text
        assert t.api(t.a, "GET", f"/sandboxes/{r.json()['sandboxID']}").json()["volumeMounts"] == []


def test_upload_is_capped_and_leaves_nothing(t):
    v = new_volume(t, t.a, "capped")
    vid, tok = v["volumeID"], v["token"]
    # Content-Length over the cap: refused before anything is sent on.
    e2b_error(content(t, tok, "PUT", vid, "file", params={"path": "/big"}, content=b"x" * (CAP + 1)), 413)

    # A chunked body (no Content-Length) that goes over it as it streams.
    def chunks():
        for _ in range(CAP // 65536 + 2):
            yield b"y" * 65536

    e2b_error(content(t, tok, "PUT", vid, "file", params={"path": "/big"}, content=chunks()), 413)
    # Exactly the cap is accepted, streamed in several messages.
    r = content(t, tok, "PUT", vid, "file", params={"path": "/big"}, content=b"z" * CAP)
    assert r.status_code == 201 and r.json()["size"] == CAP, r.text
    assert content(t, tok, "GET", vid, "file", params={"path": "/big"}).content == b"z" * CAP
    # An empty body is an empty file.
    r = content(t, tok, "PUT", vid, "file", params={"path": "/empty"})
    assert r.status_code == 201 and r.json()["size"] == 0, r.text


def test_cut_upload_leaves_no_partial_file(t):
    # gRPC ends a server's request stream normally when its client cancels: the write's last
    # message says the file is whole (VolumeFileChunk.eof), and the node writes nothing without it.
    v = new_volume(t, t.a, "cut")
    vid, tok = v["volumeID"], v["token"]

    def chunks():
        for _ in range(CAP // 65536 + 2):
            yield b"y" * 65536

    e2b_error(content(t, tok, "PUT", vid, "file", params={"path": "/big"}, content=chunks()), 413)
    e2b_error(content(t, tok, "GET", vid, "path", params={"path": "/big"}), 404)


# ---- sandboxes that mount volumes -------------------------------------------------------------

def test_sandbox_mounts_a_volume(t):
    vol = Volume.create("work", **t.sdk(t.a))
    vol.write_file("/seed.txt", "seed", api_url=t.c.api_url)
    sbx = Sandbox.create(volume_mounts={"/mnt/work/": vol}, **t.sdk(t.a))
    sid = sbx.sandbox_id
    # The master got the mount (the path normalized) and the node runs the sandbox with it.
    node = t.c.cubelets[0]
    assert node.mounted_volumes(sid) == [vol.volume_id]
    mounts = node.sandboxes[sid].volumes
    assert [(m.name, m.path, m.team_id) for m in mounts] == [("work", "/mnt/work", "team-a")]
    # Sandbox bodies carry E2B's volumeMounts, where the SDK reads them.
    assert sbx.get_info().volume_mounts == [{"name": "work", "path": "/mnt/work"}]
    listed = [s for s in t.api(t.a, "GET", "/v2/sandboxes").json() if s["sandboxID"] == sid]
    assert listed[0]["volumeMounts"] == [{"name": "work", "path": "/mnt/work"}]

    # While it is mounted: content calls and deletes are refused with a clear message (409).
    msg = e2b_error(content(t, vol.token, "GET", vol.volume_id, "dir", params={"path": "/"}), 409)
    assert sid in msg or "mounted" in msg, msg
    e2b_error(content(t, vol.token, "PUT", vol.volume_id, "file", params={"path": "/x"}, content=b"x"), 409)
    e2b_error(content(t, vol.token, "GET", vol.volume_id, "file", params={"path": "/seed.txt"}), 409)
    with pytest.raises(VolumeException, match="mounted"):
        vol.read_file("/seed.txt", api_url=t.c.api_url)
    with pytest.raises(VolumeException, match="mounted"):
        Volume.destroy(vol.volume_id, **t.sdk(t.a))
    e2b_error(t.api(t.a, "DELETE", f"/volumes/{vol.volume_id}"), 409, "mounted")
    # Nor can a second sandbox mount it (by name or by id).
    for ref in ("work", vol.volume_id):
        r = t.api(t.a, "POST", "/sandboxes", json={"templateID": "base",
                                                    "volumeMounts": [{"name": ref, "path": "/data"}]})
        e2b_error(r, 409)
    r = t.api(t.a, "POST", "/sandboxes", json={"templateID": "base",
                                                "volumeMounts": [{"name": "nope", "path": "/data"}]})
    e2b_error(r, 404)

    # Once the sandbox is gone the volume is free again, with what it held.
    sbx.kill()
    assert vol.read_file("/seed.txt", api_url=t.c.api_url) == "seed"
    assert Volume.destroy(vol.volume_id, **t.sdk(t.a)) is True
