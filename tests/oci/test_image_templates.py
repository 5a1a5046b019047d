"""The cubelet's image step of a template build (TemplateStore._prepare_oci: pull, unpack, the
image's user, the ext4 image) on real images from the test registry, without booting anything:

- the image's users come from its layers' /etc/passwd and /etc/group entries: a passwd that is a
  symlink to /dev/zero (which once made the cubelet read until the OOM killer ended it at 23.6 GB)
  or to the host's /etc/shadow is no passwd, and the build fails at once, naming the user;
- a team's build (operator=False) pulls only from public registry addresses or the node's
  `registry_allowlist`, and never names local paths; an operator's build may do both;
- the metadata the image declares lands in the ext4 image, and the staging directory is 0700;
- the master refuses local paths from a team's caller with INVALID_ARGUMENT.
"""
from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import tarfile
import types
from pathlib import Path

import grpc
import pytest

from cube_common.mtls import Role
from cube_common.settings import SettingsError
from cube_common.teams import OPERATOR, Caller
from sdk.gen.cube.v1 import cubelet_pb2 as pb, master_pb2
from services.cubelet import oci
from services.cubelet.settings import CubeletSettings
from services.cubelet.templates import PreparedImage, TemplateError, TemplateStore, operator_build
from tests.oci.support import Entry, LayoutWriter, ext4_tree, make_tar, run
from vmm_core import VmmSettings

pytestmark = pytest.mark.timeout(60)
DIR, SYM, LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\nstaff:x:50:\n"


def _users_images() -> dict[str, tuple[list[list[Entry]], str]]:
    """name -> (layers, the config's User); every image has a command, so its user is resolved."""
    app = Entry("app", data=b"#!/bin/sh\n", mode=0o755)
    return {
        "passwd-zero": ([[Entry("etc/", DIR), Entry("etc/passwd", SYM, linkname="/dev/zero"), app]], "app"),
        "passwd-shadow": ([[Entry("etc/", DIR), Entry("etc/passwd", SYM, linkname="/etc/shadow"),
                            Entry("etc/group", SYM, linkname="/etc/gshadow"), app]], "root:shadow"),
        "passwd-zero-numeric": ([[Entry("etc/passwd", SYM, linkname="/dev/zero"), app]], "1000:1000"),
        "etc-symlink": ([[Entry("etc", SYM, linkname="/proc/self/root/etc"), app]], "app"),
        "passwd-hardlinked-out": ([[Entry("etc/", DIR), Entry("etc/passwd", LNK, linkname="/etc/passwd"), app]],
                                  "app"),
        "passwd-whited-out": ([[Entry("etc/passwd", data=PASSWD), app], [Entry("etc/.wh.passwd")]], "app"),
        "passwd-opaque": ([[Entry("etc/passwd", data=PASSWD), app], [Entry("etc/.wh..wh..opq")]], "app"),
        "passwd-replaced": ([[Entry("etc/passwd", data=b"app:x:1:1::/:/bin/sh\n"), Entry("etc/group", data=GROUP),
                              app], [Entry("etc/passwd", data=PASSWD)]], "app:staff"),
        "passwd-huge": ([[Entry("etc/passwd", data=b"#" * (2 << 20) + b"\n" + PASSWD), app]], "app"),
        "group-unknown": ([[Entry("etc/passwd", data=PASSWD), Entry("etc/group", data=GROUP), app]], "app:nogroup"),
    }


@pytest.fixture(scope="module")
def images(oci_env, tmp_path_factory) -> dict[str, str]:
    w = LayoutWriter(tmp_path_factory.mktemp("users") / "layout")
    refs = {}
    for name, (layers, user) in _users_images().items():
        w.tag(w.image([make_tar(entries) for entries in layers], config={"User": user, "Cmd": ["/app"]}), name)
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{w.path}:{name}",
            f"docker://{oci_env.anon.host}/users/{name}:1")
        refs[name] = f"{oci_env.anon.host}/users/{name}:1"
    return refs


def store_for(tmp_path: Path, allowlist: tuple[str, ...] = (), plain_http: tuple[str, ...] = ()) -> TemplateStore:
    settings = CubeletSettings(state_dir=tmp_path / "state", registry_allowlist=allowlist,
                               plain_http_registries=plain_http)
    return TemplateStore(settings, VmmSettings(state_dir=tmp_path / "state"), vs=None)  # type: ignore[arg-type]


async def prepare(store: TemplateStore, reference: str, *, operator: bool = False,
                  insecure: bool = True) -> PreparedImage:
    req = pb.BuildTemplateRequest(template_id="t", oci_image=pb.OciImageSource(
        reference=reference, insecure_registry=insecure))
    staging = store.settings.templates_dir / "t" / ".staging-test"
    prepared = None
    async for item in store._prepare_oci(req, staging, lambda phase: None, operator=operator):
        if isinstance(item, PreparedImage):
            prepared = item
    assert prepared is not None
    return prepared


def shadow_hashes() -> list[str]:
    fields = [line.split(":") for line in Path("/etc/shadow").read_text().splitlines()]
    return [f[1] for f in fields if len(f) > 1 and len(f[1]) > 2]


def app_ids(prepared: PreparedImage) -> tuple[int, int]:
    app = next(s for s in prepared.guest_config.services if s.name == "app")
    return app.uid, app.gid


@pytest.mark.parametrize("name, match", [
    ("passwd-zero", "user 'app' cannot be resolved: the image has no /etc/passwd"),
    ("passwd-shadow", "user 'root' cannot be resolved: the image has no /etc/passwd"),
    ("etc-symlink", "user 'app' cannot be resolved: the image has no /etc/passwd"),
    ("passwd-whited-out", "user 'app' cannot be resolved: the image has no /etc/passwd"),
    ("passwd-opaque", "user 'app' cannot be resolved: the image has no /etc/passwd"),
    ("passwd-huge", "the image's /etc/passwd is larger than 1048576 bytes"),
    ("group-unknown", "the image's group 'nogroup' is not in its /etc/group"),
])
async def test_users_that_cannot_be_resolved(oci_env, images, tmp_path, name, match):
    store = store_for(tmp_path, allowlist=(oci_env.anon.host,))
    with pytest.raises((TemplateError, oci.ImageTooLarge), match=match) as info:
        await prepare(store, images[name])
    assert not [h for h in shadow_hashes() if h in str(info.value)]  # nothing of the host's shadow


async def test_hard_link_to_the_hosts_passwd_is_refused(oci_env, images, tmp_path):
    with pytest.raises(oci.UnsafeLayer, match="absolute path '/etc/passwd'"):
        await prepare(store_for(tmp_path, allowlist=(oci_env.anon.host,)), images["passwd-hardlinked-out"])


@pytest.mark.parametrize("name, ids", [
    ("passwd-zero-numeric", (1000, 1000)),  # numeric ids need no passwd
    ("passwd-replaced", (1000, 50)),        # the last layer's passwd wins; the group by name
])
async def test_users_resolved_from_the_layers(oci_env, images, tmp_path, name, ids):
    prepared = await prepare(store_for(tmp_path, allowlist=(oci_env.anon.host,)), images[name])
    assert app_ids(prepared) == ids


async def test_image_step_end_to_end(oci_env, tmp_path):
    """The features image: its ext4 carries the declared metadata (e2fsck-clean), the unpacked
    tree is gone, the staging directory is private, the user is the image's 1000:1000."""
    store = store_for(tmp_path, allowlist=(oci_env.anon.host,))
    prepared = await prepare(store, f"{oci_env.anon.host}/features:1")
    assert app_ids(prepared) == (1000, 1000)
    staging = prepared.image.parent
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o700 and not (staging / "root").exists()
    fsck = await asyncio.to_thread(subprocess.run, ["e2fsck", "-fn", str(prepared.image)], capture_output=True,
                                   text=True)
    assert fsck.returncode == 0, fsck.stdout
    tree = await asyncio.to_thread(ext4_tree, prepared.image, tmp_path / "dump")
    assert tree["bin/suid"][:4] == (stat.S_IFREG, 0o4755, 0, 0)
    assert tree["dev/mynull"][:5] == (stat.S_IFCHR, 0o666, 0, 0, (1, 3))
    assert tree["home/app"][:4] == (stat.S_IFDIR, 0o750, 1000, 1000)
    assert prepared.env["GREETING"] == "hello world"


async def test_team_builds_pull_only_from_allowed_registries(oci_env, tmp_path):
    reference = f"{oci_env.anon.host}/bb:1"
    with pytest.raises(oci.RegistryNotAllowed, match="loopback"):
        await prepare(store_for(tmp_path / "a"), reference)
    # The operator allowlisted it for teams, or the build is an operator's.
    await prepare(store_for(tmp_path / "b", allowlist=(oci_env.anon.host,)), reference)
    await prepare(store_for(tmp_path / "c"), reference, operator=True)


async def test_plain_http_registries_are_the_operator_s_word(oci_env, tmp_path):
    """The E2B SDK's builds carry no insecure flag: a plain-HTTP registry is reached over HTTP only
    when the operator lists it (plain_http_registries), by host or host:port; otherwise over HTTPS,
    which the test registry does not speak."""
    host = oci_env.anon.host
    reference = f"{host}/bb:1"
    with pytest.raises(oci.RegistryError):
        await prepare(store_for(tmp_path / "a", allowlist=(host,)), reference, insecure=False)
    with pytest.raises(oci.RegistryError):  # another port of the same address is not listed
        await prepare(store_for(tmp_path / "b", allowlist=(host,), plain_http=(f"127.0.0.1:{oci_env.anon.port + 1}",)),
                      reference, insecure=False)
    for i, listed in enumerate((host, "127.0.0.1")):
        prepared = await prepare(store_for(tmp_path / f"c{i}", allowlist=(host,), plain_http=(listed,)), reference,
                                 insecure=False)
        assert app_ids(prepared) == (1000, 1000)
    # Listing a registry as plain HTTP does not allowlist its address.
    with pytest.raises(oci.RegistryNotAllowed, match="loopback"):
        await prepare(store_for(tmp_path / "d", plain_http=(host,)), reference, insecure=False)


def test_registry_entries_match_host_and_port():
    assert oci.registry_listed(("10.0.0.5:5000",), "10.0.0.5:5000")
    assert not oci.registry_listed(("10.0.0.5:5000",), "10.0.0.5:5001")
    assert not oci.registry_listed(("10.0.0.5:5000",), "10.0.0.5")  # no port named: not that entry
    assert oci.registry_listed(("Registry.LAN",), "registry.lan:443") and oci.registry_listed(("registry.lan",),
                                                                                              "registry.lan")
    assert oci.registry_listed(("[::1]:5000",), "[::1]:5000") and not oci.registry_listed(("[::1]:5000",), "[::2]:5000")
    assert not oci.registry_listed((), "registry.lan")


def test_plain_http_setting_is_checked():
    with pytest.raises(SettingsError, match="plain_http_registries"):
        CubeletSettings(plain_http_registries=("registry.lan:http",)).validate()


async def test_local_paths_are_for_operators(oci_env, tmp_path):
    reference = f"oci:{oci_env.layout}:bb"
    with pytest.raises(TemplateError, match="local image paths are for operators"):
        await prepare(store_for(tmp_path / "a"), reference)
    prepared = await prepare(store_for(tmp_path / "b"), reference, operator=True)
    assert app_ids(prepared) == (1000, 1000)


def test_operator_build_marker():
    marker = [("cube-build-origin", "operator")]
    assert operator_build([], Role.OPERATOR)                 # an operator's certificate calls directly
    assert operator_build(marker, Role.MASTER)               # the master relays an operator's build
    assert operator_build(marker, None)                      # plaintext (loopback-only) cubelet
    assert not operator_build([], Role.MASTER)               # a team's build
    assert not operator_build([], None)
    assert not operator_build(marker, Role.API)              # only the master may relay the marker
    assert not operator_build([("cube-build-origin", "team")], Role.MASTER)


# -- the master ---------------------------------------------------------------------------------------

class _Aborted(Exception):
    pass


class _Context:
    """Enough of a grpc.aio.ServicerContext for the master's _rpc wrapper (plaintext policy)."""

    def __init__(self, metadata):
        self._metadata = metadata
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise _Aborted()


@pytest.mark.parametrize("reference", ["oci:/var/lib/cube/x", "oci-archive:/etc/shadow",
                                       "docker-archive:/root/img.tar:app:1", "OCI-ARCHIVE:/x.tar"])
async def test_master_refuses_local_paths_from_teams(reference):
    from services.master.builds import Builds
    from services.master.caller import Policy
    from services.master.server import MasterService
    from services.master.settings import Settings

    builds = Builds(store=None, nodes=None, templates=None, settings=Settings())  # type: ignore[arg-type]
    service = MasterService(types.SimpleNamespace(store=None), None, None, None, builds, None, None,  # type: ignore[arg-type]
                            Policy(secure=False))
    request = master_pb2.CreateTemplateBuildRequest(build=pb.BuildTemplateRequest(
        oci_image=pb.OciImageSource(reference=reference)))
    context = _Context([("cube-team", "acme"), ("cube-role", "admin")])  # what cube-api sends
    with pytest.raises(_Aborted):
        await service.CreateTemplateBuild(request, context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "local image paths (oci:, oci-archive:, docker-archive:) are for operators" in context.details
    # An operator's request passes this check (and the registry references of anyone).
    builds._validate(request.build, [], OPERATOR)
    builds._validate(pb.BuildTemplateRequest(oci_image=pb.OciImageSource(reference="registry.example/app:1")),
                     [], Caller("acme", admin=False))
