"""Template tags with the unmodified SDK (`e2b` 2.63) on the node `make up` runs: a snapshot of a
running code interpreter is a template of the team, named; `Template.assign_tags` tags its build,
`Template.get_tags` lists the tags, a sandbox created from `<name>:<tag>` starts from it (its
files are there), an unknown tag is the SDK's 404 (E2B's error body), `Template.remove_tags`
removes one, and deleting the snapshot deletes its tags. Real QEMU microVMs (TCG here)."""
from __future__ import annotations

import uuid

import pytest
from e2b import SandboxException, Template, TemplateException
from e2b_code_interpreter import Sandbox

from tests.e2e import cluster


def test_tags_name_a_build_that_sandboxes_start_from(sandboxes):
    name = f"e2e-tags-{uuid.uuid4().hex[:10]}"
    src = sandboxes.create({"case": "tags-src"})
    src.files.write("/home/user/mark.txt", "tagged build")
    snap = src.create_snapshot(name=name)
    tid = snap.snapshot_id.removesuffix(":default")
    try:
        info = Template.assign_tags(f"{name}:default", ["v1", "Stable"])
        assert sorted(info.tags) == ["stable", "v1"]
        tags = Template.get_tags(name)
        assert [t.tag for t in tags] == ["default", "stable", "v1"]
        assert {t.build_id for t in tags} == {info.build_id}

        sbx = sandboxes.create({"case": "tags-from-tag"}, template=f"{name}:v1")
        assert sbx.get_info().template_id == tid
        assert sbx.files.read("/home/user/mark.txt") == "tagged build"
        sbx.kill()

        with pytest.raises(SandboxException) as e:
            Sandbox.create(f"{name}:nope", metadata={"case": "tags-unknown"})
        assert e.value.status_code == 404 and f"tag 'nope' of template '{name}' not found" in str(e.value)
        with pytest.raises(TemplateException) as te:
            Template.assign_tags(f"{name}:nope", "v2")
        assert "404" in str(te.value)

        Template.remove_tags(name, "stable")
        assert [t.tag for t in Template.get_tags(tid)] == ["default", "v1"]
        with pytest.raises(SandboxException) as e:
            Sandbox.create(f"{name}:stable", metadata={"case": "tags-removed"})
        assert e.value.status_code == 404
        assert cluster.etcd_get_prefix(f"/cube/template-tags/{tid}/")
    finally:
        src.kill()
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert not cluster.etcd_get_prefix(f"/cube/template-tags/{tid}/")
    with pytest.raises(TemplateException):
        Template.get_tags(name)
