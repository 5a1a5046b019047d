"""Template build files (services/api/build_files.py, routes/build_files.py): the E2B SDK's file
upload link and its upload to the signed URL, against a real master and API with auth on (two
teams) and the fake node. The SDK's own functions make the hashes and archives and, end to end,
ask for the link and upload (e2b.template_sync.build_api)."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import stat
import tarfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from e2b.connection_config import ConnectionConfig
from e2b.template.utils import calculate_files_hash, tar_file_stream

from services.api.build_files import BuildFiles, files_hash, validate_archive
from services.api.routes.build_files import read_url
from services.cubelet.build_file_fetch import Fetcher, FetchError
from tests.control.cluster import one_node_cluster
from tests.control.teams_support import Teams, build

pytestmark = pytest.mark.timeout(120)
CAP = 256 * 1024  # the test API's build_file_max_bytes


def make_context(root: Path) -> Path:
    """A COPY source as users have them: files, a subdirectory, an executable, symlinks."""
    ctx = root / "ctx"
    (ctx / "app" / "lib").mkdir(parents=True)
    (ctx / "app" / "main.py").write_text("print('hello')\n")
    (ctx / "app" / "lib" / "util.py").write_text("X = 1\n" * 100)
    (ctx / "app" / "empty").write_bytes(b"")
    run = ctx / "app" / "run.sh"
    run.write_text("#!/bin/sh\nexec python main.py\n")
    run.chmod(0o755)
    (ctx / "app" / "lib" / "private").write_text("secret\n")
    (ctx / "app" / "lib" / "private").chmod(0o600)
    os.symlink("main.py", ctx / "app" / "entry.py")
    os.symlink("/usr/bin", ctx / "app" / "sysbin")
    return ctx


def sdk_archive(ctx: Path, src: str, resolve_symlinks: bool = False, gz: bool = True) -> bytes:
    f = tar_file_stream(src, str(ctx), [], resolve_symlinks, gz)
    try:
        return f.read()
    finally:
        f.close()


def plain(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


# ---- the hash, against the SDK's (no cluster) ----


@pytest.mark.parametrize("src,dest", [("app", "/srv/app"), (".", "/"), ("app/*.py", "/srv"), ("app/lib", "/l")])
@pytest.mark.parametrize("resolve_symlinks", [False, True])
@pytest.mark.parametrize("gz", [True, False])
def test_files_hash_is_the_sdks(tmp_path, src, dest, resolve_symlinks, gz):
    ctx = make_context(tmp_path)
    want = calculate_files_hash(src, dest, str(ctx), [], resolve_symlinks, None)
    tar = tmp_path / "files.tar"
    tar.write_bytes(plain(sdk_archive(ctx, src, resolve_symlinks, gz)))
    validate_archive(tar)
    assert files_hash(tar, src, dest) == want
    assert files_hash(tar, src, dest + "/other") != want  # the COPY line is part of it


def test_files_hash_counts_hardlinks_as_their_files(tmp_path):
    ctx = make_context(tmp_path)
    os.link(ctx / "app" / "main.py", ctx / "app" / "same.py")
    tar = tmp_path / "files.tar"
    tar.write_bytes(plain(sdk_archive(ctx, "app")))
    with tarfile.open(tar) as tf:
        assert any(m.islnk() for m in tf.getmembers())  # the SDK's tarfile stores the second as a link
    validate_archive(tar)
    assert files_hash(tar, "app", "/a") == calculate_files_hash("app", "/a", str(ctx), [], False, None)


def test_signature_covers_every_field(tmp_path):
    store = BuildFiles(tmp_path / "bf", url_ttl_s=60)
    h = "a" * 64
    expires, sig = store.sign("team-a", "tpl", h)
    store.verify("team-a", "tpl", h, str(expires), sig)
    assert stat.S_IMODE((tmp_path / "bf" / ".signing-key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "bf").stat().st_mode) == 0o700
    assert BuildFiles(tmp_path / "bf")._signing_key() == store._signing_key()  # another replica's view
    for args in [("team-b", "tpl", h, str(expires), sig), ("team-a", "tpl2", h, str(expires), sig),
                 ("team-a", "tpl", "b" * 64, str(expires), sig), ("team-a", "tpl", h, str(expires + 1), sig),
                 ("team-a", "tpl", h, str(expires), sig[:-1] + ("0" if sig[-1] != "0" else "1")),
                 ("team-a", "tpl", h, str(expires), ""), ("team-a", "tpl", h, "x", sig)]:
        with pytest.raises(Exception, match="invalid signature"):
            store.verify(*args)
    with pytest.raises(Exception, match="already expired"):
        store.verify("team-a", "tpl", h, str(expires), sig, now=expires + 1)


def test_prune_deletes_what_was_not_used(tmp_path):
    store = BuildFiles(tmp_path / "bf")
    tdir = store.root / "team-a"
    tdir.mkdir(parents=True)
    old, fresh = tdir / f"{'1' * 64}.tar", tdir / f"{'2' * 64}.tar"
    stale_upload = tdir / ".upload-x.tmp"
    for p in (old, fresh, stale_upload):
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 8 * 86400, time.time() - 8 * 86400))
    assert store.path("team-a", "2" * 64) == fresh  # a use keeps it
    assert store.prune(7 * 86400) == 2
    assert sorted(p.name for p in tdir.iterdir()) == [fresh.name]


# ---- through the API ----


class BfTeams(Teams):
    tid: str  # a ready template of team-a


@pytest.fixture(scope="module")
def bf(etcd_server):
    with one_node_cluster(etcd_server.endpoint, CUBE_AUTH="on", CUBE_API_BUILD_FILE_MAX_BYTES=str(CAP)) as c:
        t = BfTeams(c)
        t.tid = build(t, t.a)
        yield t


def root_of(t: Teams) -> Path:
    return t.c.workdir / "build-files"


def link(t: Teams, key: str, tid: str, h: str) -> httpx.Response:
    return t.api(key, "GET", f"/templates/{tid}/files/{h}")


def fresh_url(t: BfTeams, h: str) -> str:
    r = link(t, t.a, t.tid, h)
    assert r.status_code == 201, r.text
    return r.json()["url"]


def assert_error(r: httpx.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == status and text in body["message"], body


def team_dir_left(t: Teams) -> list[str]:
    d = root_of(t) / "team-a"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_sdk_uploads_then_the_file_is_present(bf, tmp_path):
    from e2b.api.client_sync import get_api_client
    from e2b.template_sync.build_api import get_file_upload_link, upload_file

    ctx = make_context(tmp_path)
    h = calculate_files_hash("app", "/srv/app", str(ctx), [], False, None)
    client = get_api_client(ConnectionConfig(api_key=bf.a, api_url=bf.c.api_url))
    first = get_file_upload_link(client, bf.tid, h)
    assert first.present is False and isinstance(first.url, str)
    url = urlsplit(first.url)
    assert (url.scheme, url.netloc, url.path) == ("http", bf.c.api.address, f"/build-files/team-a/{h}")
    assert set(parse_qs(url.query)) == {"template", "expires", "sig"}
    assert abs(int(parse_qs(url.query)["expires"][0]) - (time.time() + 3600)) < 60
    # The SDK's own upload: a gzip tar, no API key, Content-Length.
    upload_file(client, "app", str(ctx), first.url, [], False, True, None)
    assert get_file_upload_link(client, bf.tid, h).present is True
    stored = root_of(bf) / "team-a" / f"{h}.tar"
    assert team_dir_left(bf) == [stored.name]
    # Kept as a plain tar, private, with the hash the SDK named it by.
    assert stored.read_bytes()[257:262] == b"ustar"
    assert files_hash(stored, "app", "/srv/app") == h
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(root_of(bf).stat().st_mode) == 0o700
    assert stat.S_IMODE((root_of(bf) / ".signing-key").stat().st_mode) == 0o600
    # The other team does not have it (and may not see the template).
    assert_error(link(bf, bf.b, bf.tid, h), 404)
    # Uploading again (force) replaces it, plain tar this time.
    r = httpx.put(fresh_url(bf, h), content=plain(sdk_archive(ctx, "app")), timeout=30)
    assert r.status_code == 201, r.text
    assert team_dir_left(bf) == [stored.name] and files_hash(stored, "app", "/srv/app") == h


def test_link_needs_a_key_a_visible_template_and_a_hash(bf):
    h = "c" * 64
    r = httpx.get(f"{bf.c.api_url}/templates/{bf.tid}/files/{h}", timeout=30)
    assert_error(r, 401)
    assert_error(link(bf, bf.b, bf.tid, h), 404)
    assert_error(link(bf, bf.a, "no-such-template", h), 404)
    for bad in ("C" * 64, "c" * 63, "c" * 65, "g" * 64):
        assert_error(link(bf, bf.a, bf.tid, bad), 400, "hash")
    r = link(bf, bf.a, bf.tid, h)
    assert r.status_code == 201 and r.json()["present"] is False
    # Another team's link names its own directory.
    tid_b = build(bf, bf.b)
    assert "/build-files/team-b/" in link(bf, bf.b, tid_b, h).json()["url"]


def test_bad_signatures_are_refused(bf):
    h = "d" * 64
    url = fresh_url(bf, h)
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}"
    body = tar_of(reg("a.txt"))

    def put(path: str, **query) -> httpx.Response:
        return httpx.put(base + path, params={**q, **query}, content=body, timeout=30)

    store = BuildFiles(root_of(bf))
    expires, sig = store.sign("team-a", bf.tid, h, now=time.time() - 7200)
    assert_error(put(parts.path, expires=str(expires), sig=sig), 403, "signature is already expired")
    assert put(parts.path, expires=str(expires), sig=sig).json() == {
        "code": 403, "message": "signature is already expired"}
    tampered = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    assert_error(put(parts.path, sig=tampered), 403, "invalid signature")
    assert_error(put(parts.path, expires=str(int(q["expires"]) + 3600)), 403, "invalid signature")
    assert_error(put(parts.path, template="other"), 403, "invalid signature")
    assert_error(put(f"/build-files/team-b/{h}"), 403, "invalid signature")
    assert_error(put(f"/build-files/team-a/{'e' * 64}"), 403, "invalid signature")
    assert_error(httpx.put(base + parts.path, content=body, timeout=30), 403)  # no signature at all
    assert_error(put(f"/build-files/team.a/{h}"), 400)
    assert not (root_of(bf) / "team-a" / f"{h}.tar").exists()
    assert not any(n.startswith(".upload-") for n in team_dir_left(bf))
    assert put(parts.path).status_code == 201  # the untouched URL works


def test_uploads_over_the_cap_are_refused_and_leave_nothing(bf):
    h = "f" * 64
    url = fresh_url(bf, h)
    big = tar_of(reg("big.bin", os.urandom(CAP)))  # over CAP with its headers
    # Content-Length over the cap: refused before the body is read.
    assert_error(httpx.put(url, content=big, timeout=30), 413)
    # A chunked body (no Content-Length) that grows past it while it streams.
    def chunks():
        for i in range(0, len(big), 16384):
            yield big[i:i + 16384]
    assert_error(httpx.put(url, content=chunks(), timeout=30), 413)
    # A small gzip that unpacks to more than the cap.
    bomb = gzip.compress(tar_of(reg("zeros", b"\0" * (4 * CAP))))
    assert len(bomb) < CAP
    assert_error(httpx.put(url, content=bomb, timeout=30), 413)
    assert f"{h}.tar" not in team_dir_left(bf)
    assert not any(n.startswith(".upload-") for n in team_dir_left(bf))


def _dev(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _fifo(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info, None


@pytest.mark.parametrize("body,text", [
    pytest.param(b"this is not a tar archive at all" * 100, "not a tar archive", id='not-tar'),
    pytest.param(b"", "not a tar archive", id='empty'),
    pytest.param(b"\x1f\x8b\x08\x00garbage", "gzip", id='bad-gzip'),
    pytest.param(gzip.compress(b"not a tar inside a gzip" * 50), "not a tar archive", id='gzip-of-not-tar'),
    pytest.param(gzip.compress(tar_of(reg("a.txt", os.urandom(5000))))[:-200], "truncated gzip", id='truncated-gzip'),
    pytest.param(tar_of(reg("../x")), "'..'", id='dotdot'),
    pytest.param(tar_of(reg("a/../../x")), "'..'", id='dotdot-inside'),
    pytest.param(tar_of(reg("/etc/passwd")), "absolute", id='absolute'),
    pytest.param(tar_of(_dev("dev/null")), "not a regular file", id='device'),
    pytest.param(tar_of(_fifo("pipe")), "not a regular file", id='fifo'),
    pytest.param(tar_of(_link("h", "/etc/shadow", tarfile.LNKTYPE)), "absolute", id='hardlink-outside'),
    pytest.param(tar_of(reg("a.txt"), _link("h", "missing.txt", tarfile.LNKTYPE)), "hardlink", id='hardlink-missing'),
    pytest.param(tar_of(_link("d", "/etc"), reg("d/passwd")), "under the symlink", id='under-symlink'),
    pytest.param(tar_of(reg("a.txt"), reg("a.txt")), "twice", id='duplicate'),
    pytest.param(tar_of(reg("a.txt", b"x" * 5000))[:1024], "truncated", id='truncated-tar'),
])
def test_bad_archives_are_refused_and_leave_nothing(bf, body, text):
    h = "9" * 64
    r = httpx.put(fresh_url(bf, h), content=body, timeout=30)
    assert_error(r, 400, text)
    assert f"{h}.tar" not in team_dir_left(bf)
    assert not any(n.startswith(".upload-") for n in team_dir_left(bf))


def test_a_copy_whose_files_do_not_match_their_hash_is_refused_at_start(bf, tmp_path):
    # A single file: an archive with directories is not checked (the JS SDK hashes their sizes).
    ctx = tmp_path / "one"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "main.py").write_text("print('hi')\n")
    src = "app/main.py"
    h = calculate_files_hash(src, "/srv/app", str(ctx), [], False, None)
    reserved = bf.api(bf.a, "POST", "/v3/templates", json={"name": "hash-check"})
    assert reserved.status_code == 202, reserved.text
    tid, bid = reserved.json()["templateID"], reserved.json()["buildID"]
    r = link(bf, bf.a, tid, h)
    assert r.status_code == 201 and httpx.put(r.json()["url"], content=sdk_archive(ctx, src), timeout=30).is_success
    definition = {"fromTemplate": bf.tid, "steps": [{"type": "COPY", "args": [src, "/elsewhere"], "filesHash": h}]}
    assert_error(bf.api(bf.a, "POST", f"/v2/templates/{tid}/builds/{bid}", json=definition), 400,
                 "step 1 (COPY app/main.py): the uploaded files do not match their hash")
    # Nothing started: the build still waits, and the files as hashed start it.
    assert bf.api(bf.a, "GET", f"/templates/{tid}/builds/{bid}/status").json()["status"] == "waiting"
    definition["steps"][0]["args"] = [src, "/srv/app"]
    r = bf.api(bf.a, "POST", f"/v2/templates/{tid}/builds/{bid}", json=definition)
    assert r.status_code == 202, r.text


def fetch(fetcher: Fetcher, url: str, h: str) -> Path:
    return asyncio.run(fetcher.fetch(url, h))


def test_a_node_fetches_a_build_s_files_through_a_read_url(bf, tmp_path):
    """A node that does not share the API's disk fetches a COPY archive (the cubelet's Fetcher)
    through the read URL the build carries: the stored tar, whole. Upload and read URLs are not
    each other's; tampered, expired and foreign URLs are refused; a cap or a bad URL leaves no file."""
    from e2b.api.client_sync import get_api_client
    from e2b.template_sync.build_api import upload_file

    ctx = make_context(tmp_path)
    h = calculate_files_hash("app", "/srv/read", str(ctx), [], False, None)
    client = get_api_client(ConnectionConfig(api_key=bf.a, api_url=bf.c.api_url))
    upload_file(client, "app", str(ctx), fresh_url(bf, h), [], False, True, None)
    stored = root_of(bf) / "team-a" / f"{h}.tar"
    store = BuildFiles(root_of(bf))
    url = read_url(store, "team-a", bf.tid, h)
    assert url.startswith(f"/build-files/team-a/{h}?") and url.endswith("&read=1")

    dl = tmp_path / "dl"
    got = fetch(Fetcher(bf.c.api_url, dl, max_bytes=CAP), url, h)
    assert got.read_bytes() == stored.read_bytes() and stat.S_IMODE(got.stat().st_mode) == 0o600
    r = httpx.get(bf.c.api_url + url, timeout=30)
    assert r.status_code == 200 and r.headers["content-length"] == str(stored.stat().st_size)

    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def get(path: str = parts.path, **query) -> httpx.Response:
        return httpx.get(bf.c.api_url + path, params={**q, **query}, timeout=30)

    up = {k: v[0] for k, v in parse_qs(urlsplit(fresh_url(bf, h)).query).items()}
    assert_error(get(**up), 403, "invalid signature")                 # an upload URL does not read
    assert_error(httpx.put(bf.c.api_url + url, content=tar_of(reg("a.txt")), timeout=30), 403)  # nor a read URL write
    assert_error(get(template="other"), 403, "invalid signature")
    assert_error(get(f"/build-files/team-b/{h}"), 403, "invalid signature")
    expires, sig = store.sign("team-a", bf.tid, h, now=time.time() - 2 * 86400, read=True)
    assert_error(get(expires=str(expires), sig=sig), 403, "signature is already expired")
    assert_error(httpx.get(bf.c.api_url + parts.path, timeout=30), 400, "read URL")  # not a read URL at all
    missing = "9" * 64
    with pytest.raises(FetchError, match=r"404: build file .* is no longer stored"):
        fetch(Fetcher(bf.c.api_url, dl, max_bytes=CAP), read_url(store, "team-a", bf.tid, missing), missing)
    with pytest.raises(FetchError, match="larger than this node takes"):
        fetch(Fetcher(bf.c.api_url, dl, max_bytes=100), url, h)
    for bad in (f"http://127.0.0.1:1/build-files/team-a/{h}?x=1", f"//evil/build-files/team-a/{h}?x=1",
                f"/templates/team-a/{h}?x=1", f"/build-files/team-a/{'8' * 64}?{parts.query}",
                f"/build-files/../team-a/{h}?x=1", url + " "):
        with pytest.raises(FetchError, match="no valid URL"):
            fetch(Fetcher(bf.c.api_url, dl, max_bytes=CAP), bad, h)
    with pytest.raises(FetchError, match="unreachable"):
        fetch(Fetcher("http://127.0.0.1:9", dl, max_bytes=CAP), url, h)
    assert sorted(p.name for p in dl.iterdir()) == [got.name]  # nothing partial left
