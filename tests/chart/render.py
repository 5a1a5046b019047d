"""Offline renders of charts/cube, and the few Kubernetes semantics the chart tests need.

No cluster and no ``helm`` binary: Helm v4's own library (PyPI ``helm-python-sdk``, ``helm_python``)
renders and lints, exactly as ``helm template`` / ``helm lint`` would, and ``kubernetes-validate``
holds the Kubernetes API schemas. Both are installed by scripts/setup.sh (requirements-chart.lock).

Invariants:
- ``render`` returns every object of a render (hooks and tests included) as plain dicts, parsed by
  PyYAML's safe loader; a template that fails raises ``helm_python.HelmError``.
- Renders are cached by their values (as JSON), so scenarios shared by several tests render once;
  callers must not mutate what they get.
- ``container_env`` resolves a container's environment the way the kubelet does: ``envFrom``
  ConfigMaps first, then ``env`` in order, the downward API from the given pod facts and
  ``$(NAME)`` expanded from variables defined before it (``$$`` escapes).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "cube"
RELEASE = "cube"
NAMESPACE = "sandboxes"

Obj = dict[str, Any]

# What the downward API gives a pod in these tests.
POD_FACTS = {"metadata.name": "pod-0", "status.podIP": "10.244.1.7", "spec.nodeName": "worker-1"}

# The chart's scenarios: the defaults and the overrides a real install would use.
SCENARIOS: dict[str, Obj | None] = {
    "default": None,
    "external-etcd": {
        "etcd": {"enabled": False},
        "externalEtcd": {"endpoints": ["etcd-a.db.example.internal:2379", "etcd-b.db.example.internal:2379",
                                       "[2001:db8::5]:2379"]},
    },
    "loadbalancer": {
        "proxy": {
            "expose": {"type": "loadBalancer"},
            "publicTls": {"secretName": "cube-public-tls"},
            "loadBalancer": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                             "externalTrafficPolicy": "Local",
                             "loadBalancerSourceRanges": ["203.0.113.0/24"]},
        },
    },
    # One API replica keeping its build files in an emptyDir (no shared storage at hand).
    "one-api": {
        "api": {"replicas": 1, "buildFiles": {"persistence": {"enabled": False}}},
    },
    "custom": {
        "fullnameOverride": "sbx",
        "clusterDomain": "k8s.example.internal",
        "domain": "sandboxes.example.org",
        "logLevel": "DEBUG",
        "image": {"repository": "registry.example.org/cube", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "metrics": {"prometheusAnnotations": True},
        "tls": {"secrets": {"master": "prod-master-cert", "operator": "ops-cert"}},
        "api": {"replicas": 3, "settings": {"create_timeout_s": 200, "max_body_bytes": 2097152},
                "buildFiles": {"persistence": {"storageClassName": "nfs-rwx", "size": "100Gi",
                                               "annotations": {"helm.sh/resource-policy": "keep"}}},
                "resources": {"requests": {"cpu": "250m", "memory": "300Mi"},
                              "limits": {"cpu": "2", "memory": "700Mi"}}},
        "master": {"replicas": 3, "image": {"tag": "1.2.4"},
                   "settings": {"default_timeout_s": 600, "default_aliases": ["base", "python"]},
                   "nodeSelector": {"node-role.example.org/control": "true"},
                   "tolerations": [{"key": "control", "operator": "Exists", "effect": "NoSchedule"}]},
        "proxy": {"replicas": 4, "envoyConcurrency": 4,
                  "ingress": {"className": "nginx", "tlsSecretName": "wildcard-tls",
                              "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}},
                  "settings": {"access_log": "all", "upstream_connect_timeout": 2.5}},
        "node": {"stateDir": "/srv/cube", "image": {"repository": "registry.example.org/cube-node"},
                 "nodeSelector": {"cube.example.org/sandboxes": "true"},
                 "tolerations": [{"key": "sandboxes", "operator": "Equal", "value": "only",
                                  "effect": "NoSchedule"}],
                 "cubelet": {"settings": {"warm_pool_size": 4, "registry_allowlist": ["registry.lan:5000"]},
                             "vmmSettings": {"accel": "kvm", "tcg_tb_size_mb": 256},
                             "resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                                           "limits": {"cpu": "16", "memory": "60Gi"}}},
                 "vs": {"settings": {"pool_cidr": "198.19.0.0/20", "max_sandboxes": 512}}},
        "etcd": {"replicas": 5, "persistence": {"size": "20Gi", "storageClass": "fast-ssd"},
                 "peerTls": {"secretName": "etcd-peer-from-ca"}},
    },
}


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@functools.cache
def _render_json(values_json: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    values = json.loads(values_json)
    rendered = _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return tuple((path, tuple(_split(text))) for path, text in sorted(rendered.items()))


def _split(text: str) -> list[str]:
    return [doc for doc in re.split(r"^---\s*$", text, flags=re.M) if doc.strip()]


def render_files(values: Obj | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return {path: "\n---\n".join(docs) for path, docs in _render_json(json.dumps(values, sort_keys=True))}


def render(values: Obj | None = None) -> list[Obj]:
    """Every Kubernetes object the chart renders with ``values``."""
    out: list[Obj] = []
    for path, docs in _render_json(json.dumps(values, sort_keys=True)):
        if path.endswith("NOTES.txt"):
            continue
        for doc in docs:
            obj = yaml.safe_load(doc)
            if obj:
                assert isinstance(obj, dict), f"{path}: not a mapping"
                out.append(obj)
    return out


def scenario(name: str) -> list[Obj]:
    return render(SCENARIOS[name])


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload or a Pod; None for other kinds."""
    if obj["kind"] == "Pod":
        spec: Obj = obj["spec"]
        return spec
    if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        spec = obj["spec"]["template"]["spec"]
        return spec
    return None


def pod_metadata(obj: Obj) -> Obj:
    meta: Obj = obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]
    return meta


@dataclass(frozen=True)
class Container:
    owner: Obj          # the workload or Pod
    pod: Obj            # its pod spec
    spec: Obj           # the container
    init: bool

    @property
    def where(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}:{self.spec['name']}"

    @property
    def program(self) -> str:
        """The program the image's entry point runs (its first argument)."""
        argv = self.spec.get("command") or self.spec.get("args") or [""]
        return str(argv[0])


def containers(objs: list[Obj], init: bool = True) -> Iterator[Container]:
    for obj in objs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        for c in (pod.get("initContainers") or []) if init else []:
            yield Container(obj, pod, c, True)
        for c in pod["containers"]:
            yield Container(obj, pod, c, False)


def container(objs: list[Obj], kind: str, name: str, container_name: str) -> Container:
    owner = one(objs, kind, name)
    pod = pod_spec(owner)
    assert pod is not None
    for c in pod["containers"]:
        if c["name"] == container_name:
            return Container(owner, pod, c, False)
    raise AssertionError(f"{kind}/{name} has no container {container_name}")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(NAME) expansion: defined names are replaced, others left as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))
    return _REF.sub(sub, text)


def container_env(objs: list[Obj], c: Container, facts: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives container ``c`` (see the module docstring). A variable
    from a Secret is rendered as ``<secret:NAME/KEY>``."""
    facts = {**POD_FACTS, **(facts or {})}
    env: dict[str, str] = {}
    for source in c.spec.get("envFrom") or []:
        ref = source.get("configMapRef")
        assert ref, f"{c.where}: envFrom other than a ConfigMap"
        cm = one(objs, "ConfigMap", ref["name"])
        env.update({str(k): str(v) for k, v in (cm.get("data") or {}).items()})
    for item in c.spec.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = facts[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
        else:
            raise AssertionError(f"{c.where}: env {item['name']} of an unexpected source {item}")
    return env


def volume(pod: Obj, name: str) -> Obj:
    for v in pod.get("volumes") or []:
        if v["name"] == name:
            return dict(v)
    raise AssertionError(f"no volume {name}")


def mount_for(c: Container, path: str) -> tuple[Obj, Obj]:
    """The (volumeMount, volume) that holds ``path`` in container ``c`` (the deepest mount)."""
    best: Obj | None = None
    for m in c.spec.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    assert best is not None, f"{c.where}: nothing is mounted at {path}"
    return best, volume(c.pod, best["name"])
