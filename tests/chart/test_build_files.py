"""Where the API keeps template build files in charts/cube (values.yaml, api.buildFiles).

The build files directory holds the archives the E2B SDK uploads for COPY steps and the key that
signs their URLs; every API replica must see the same one (services/api/build_files.py).

Invariants checked:
- The API's build files directory, as its settings class resolves it from the pod's environment,
  lies strictly below the mount of a volume that every replica shares: by default a claim the
  chart makes (ReadWriteMany, 20Gi), or the user's existing claim, never made twice. The API
  creates the directory itself (so it can make it 0700), in a mount that the pod's fsGroup makes
  writable by the API's uid and gid.
- Without shared storage the API runs as one replica: an emptyDir (persistence disabled) or a
  claim without ReadWriteMany with api.replicas > 1 fails the render, saying why; such a claim
  with one replica replaces the pod on upgrades instead of rolling it (Recreate).
- Every variant is valid Kubernetes.
"""

from __future__ import annotations

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from services.api.settings import Settings as ApiSettings
from tests.chart.render import Container, Obj, container, container_env, find, mount_for, one, render, scenario

API = ("Deployment", "cube-api", "api")
PVC = "cube-api-build-files"
NON_ROOT = 10001


def _build_files(objs: list[Obj], c: Container) -> tuple[str, Obj, Obj]:
    """(the directory the API keeps build files in, its volumeMount, its volume)."""
    path = str(ApiSettings.from_env(container_env(objs, c)).build_files_path)
    mount, vol = mount_for(c, path)
    return path, mount, vol


def _api(values: Obj | None) -> tuple[list[Obj], Container]:
    objs = render(values)
    return objs, container(objs, *API)


def _persistence(**kw: object) -> Obj:
    return {"buildFiles": {"persistence": kw}}


def _validate(objs: list[Obj]) -> None:
    for obj in objs:
        if obj["metadata"]["name"].startswith("cube-api"):
            kubernetes_validate.validate(obj, "1.33", strict=True)


def test_default_is_a_shared_claim_the_api_can_write() -> None:
    objs, api = _api(None)
    pvc = one(objs, "PersistentVolumeClaim", PVC)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in pvc["spec"]  # the cluster's default StorageClass
    assert pvc["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    assert len(find(objs, "PersistentVolumeClaim")) == 1

    path, mount, vol = _build_files(objs, api)
    assert path == "/var/lib/cube-api/build-files"
    assert vol == {"name": mount["name"], "persistentVolumeClaim": {"claimName": PVC}}
    assert not mount.get("readOnly")
    # Below the mount, not the mount itself: the API makes the directory, owned by it and 0700
    # (the root of a volume is root's, and fsGroup adds group bits to it).
    assert path.startswith(mount["mountPath"].rstrip("/") + "/")
    # The volume is group-owned by fsGroup and group-writable: the API's uid and gid can write it.
    sc = api.spec["securityContext"]
    assert sc["runAsUser"] == sc["runAsGroup"] == NON_ROOT
    assert api.pod["securityContext"]["fsGroup"] == NON_ROOT
    # Two replicas share the claim, so they roll as usual.
    deployment = one(objs, "Deployment", "cube-api")
    assert deployment["spec"]["replicas"] == 2 and "strategy" not in deployment["spec"]


def test_user_settings_cannot_move_the_directory() -> None:
    with pytest.raises(helm_python.HelmError, match="CUBE_API_BUILD_FILES_DIR"):
        render({"api": {"settings": {"build_files_dir": "/tmp/elsewhere"}}})


def test_claim_values_reach_the_claim() -> None:
    objs = scenario("custom")
    pvc = one(objs, "PersistentVolumeClaim", "sbx-api-build-files")
    assert pvc["spec"]["storageClassName"] == "nfs-rwx"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    api = container(objs, "Deployment", "sbx-api", "api")
    assert _build_files(objs, api)[2]["persistentVolumeClaim"] == {"claimName": "sbx-api-build-files"}


def test_an_existing_claim_is_used_and_none_made() -> None:
    objs, api = _api({"api": _persistence(existingClaim="shared-nfs", size="1Ti")})
    assert not find(objs, "PersistentVolumeClaim")
    path, _, vol = _build_files(objs, api)
    assert path == "/var/lib/cube-api/build-files"
    assert vol["persistentVolumeClaim"] == {"claimName": "shared-nfs"}
    _validate(objs)


def test_one_replica_without_persistence_has_an_emptydir() -> None:
    objs = scenario("one-api")
    api = container(objs, *API)
    assert not find(objs, "PersistentVolumeClaim")
    path, mount, vol = _build_files(objs, api)
    assert path.startswith(mount["mountPath"].rstrip("/") + "/")
    assert vol == {"name": mount["name"], "emptyDir": {"sizeLimit": "5Gi"}}
    assert api.pod["securityContext"]["fsGroup"] == NON_ROOT
    limited = render({"api": {"replicas": 1, "buildFiles": {"persistence": {"enabled": False},
                                                            "emptyDirSizeLimit": "512Mi"}}})
    assert _build_files(limited, container(limited, *API))[2]["emptyDir"] == {"sizeLimit": "512Mi"}


@pytest.mark.parametrize("replicas", [None, 2, 3])
def test_several_replicas_without_persistence_fail(replicas: int | None) -> None:
    api: Obj = _persistence(enabled=False)
    if replicas is not None:
        api["replicas"] = replicas
    with pytest.raises(helm_python.HelmError,
                       match=r"api\.buildFiles\.persistence\.enabled=false keeps build files on one replica's "
                             r"disk: set api\.replicas=1 or give shared storage"):
        render({"api": api})


@pytest.mark.parametrize("modes", [["ReadWriteOnce"], ["ReadWriteOncePod"], ["ReadWriteOnce", "ReadOnlyMany"]])
def test_several_replicas_on_a_single_node_claim_fail(modes: list[str]) -> None:
    with pytest.raises(helm_python.HelmError, match=r"api\.buildFiles\.persistence\.accessModes .*ReadWriteMany"
                                                    r".*set api\.replicas=1"):
        render({"api": {"replicas": 2, **_persistence(accessModes=modes)}})
    # An existing claim is taken to be what accessModes says.
    with pytest.raises(helm_python.HelmError, match="ReadWriteMany"):
        render({"api": {"replicas": 2, **_persistence(accessModes=modes, existingClaim="disk")}})


def test_one_replica_on_a_single_node_claim_is_replaced_not_rolled() -> None:
    objs, api = _api({"api": {"replicas": 1, **_persistence(accessModes=["ReadWriteOnce"], size="50Gi")}})
    pvc = one(objs, "PersistentVolumeClaim", PVC)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert _build_files(objs, api)[2]["persistentVolumeClaim"] == {"claimName": PVC}
    deployment = one(objs, "Deployment", "cube-api")
    assert deployment["spec"]["replicas"] == 1
    # A rolling update's new pod could not mount the claim on another node while the old one runs.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    _validate(objs)
