"""charts/cube against the real tools: Helm v4's lint and renderer, and the Kubernetes API schemas.

Invariants checked:
- ``helm lint --strict`` finds no error and no warning, for the defaults and every scenario, at each
  Kubernetes version below (Helm checks the chart's kubeVersion and the rendered objects' API
  versions against it).
- Every object of every scenario validates strictly (unknown fields are errors) against the API
  schemas of each version below: a kind or API version the schemas lack fails, never skips.
- Both tools do catch faults: a broken copy of the chart fails lint, a misspelled field fails the
  schema (so a green run means something).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.chart.render import CHART, NAMESPACE, SCENARIOS, Obj, one, render, scenario

# Two supported Kubernetes minors and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.31", "1.33", "1.37")

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


def _findings(report: dict[str, Any]) -> list[str]:
    return [*report.get("errors", []),
            *(f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= WARNING)]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_helm_lint_is_clean(name: str, version: str) -> None:
    report = helm_python.lint(CHART, SCENARIOS[name], strict=True, namespace=NAMESPACE,
                              kube_version=f"v{version}.0")
    assert report["total_charts_linted"] == 1
    assert _findings(report) == []


def test_helm_lint_catches_a_broken_chart(tmp_path: Path) -> None:
    broken = tmp_path / "cube"
    shutil.copytree(CHART, broken)
    master = broken / "templates" / "master.yaml"
    master.write_text(master.read_text().replace("{{- $c := dict", "{{- $c := dict (", 1))
    assert _findings(helm_python.lint(broken, strict=True))


def _validate(obj: Obj, version: str) -> None:
    got = kubernetes_validate.validate(obj, version, strict=True)
    assert got == version, f"validated against {got}, not {version}"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_manifest_matches_the_api_schema(name: str, version: str) -> None:
    objs = scenario(name)
    assert len(objs) > 10
    failures = []
    for obj in objs:
        try:
            _validate(obj, version)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            where = ".".join(str(p) for p in getattr(e, "path", []))
            failures.append(f"{obj['kind']}/{obj['metadata']['name']} {where}: {getattr(e, 'message', e)}")
    assert failures == []


def test_the_schema_check_catches_a_misspelled_field() -> None:
    deployment = one(render(), "Deployment", "cube-master")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    _validate(deployment, KUBE_VERSIONS[0])
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad, KUBE_VERSIONS[0])
