"""Render the Helm chart offline and check what it renders against vendored JSON schemas.

`render` runs `.tools/helm-render` (Helm's own loader, values schema and template engine; built
by `make helm-render` from tests/deploy/helmrender/); `validate` checks one manifest against the
Kubernetes 1.33 schema of its kind, or the KEDA / Prometheus-operator CRD schema, and the name
rules the API server adds. `python -m tests.deploy.chart` (`make lint-helm`) renders every
profile under the chart's ci/ and fails on any error.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.protocols import Validator
from referencing import Registry, Resource

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "category-enrichment"
HELM_RENDER = REPO_ROOT / ".tools" / "helm-render"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_SCHEMAS = SCHEMAS / "kubernetes" / "v1.33.0-local-strict"
CRD_SCHEMAS = SCHEMAS / "crds"
# The CRDs the chart may render; `helm-render --api-versions` says the cluster serves them.
CRD_API_VERSIONS = ("keda.sh/v1alpha1", "monitoring.coreos.com/v1")
# What Kubernetes accepts as an object name (RFC 1123 label; every kind here is held to it).
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class RenderError(Exception):
    """helm-render refused the chart or its values; the message is Helm's."""


def render(
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    *,
    kube_version: str = "1.33.0",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """The manifests the chart renders with these values files and --set overrides."""
    if not HELM_RENDER.exists():
        raise FileNotFoundError(f"{HELM_RENDER} is missing: `make helm-render` builds it")
    command = [str(HELM_RENDER), "--kube-version", kube_version]
    for api in CRD_API_VERSIONS:
        command += ["--api-versions", api]
    for path in values:
        command += ["-f", str(path)]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(
        [*command, str(chart)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _schema_path(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    if group and "." in group and api_version in CRD_API_VERSIONS:
        return CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    suffix = f"-{group.split('.')[0]}" if group else ""
    return KUBERNETES_SCHEMAS / f"{kind.lower()}{suffix}-{version}.json"


@functools.cache
def _registry() -> Registry:
    definitions = json.loads((KUBERNETES_SCHEMAS / "_definitions.json").read_text())
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


@functools.cache
def _validator(api_version: str, kind: str) -> Validator:
    path = _schema_path(api_version, kind)
    if not path.exists():
        raise LookupError(f"no vendored schema for {api_version} {kind} ({path.name})")
    schema = json.loads(path.read_text())
    if "$schema" in schema:  # the Kubernetes ones: draft 2020-12, refs into _definitions.json
        return Draft202012Validator(schema, registry=_registry())
    return Draft7Validator(schema)  # the CRDs' OpenAPI v3 schemas


def validate(manifest: dict[str, Any]) -> list[str]:
    """Every way this manifest breaks its kind's schema or the API server's naming rules."""
    api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    metadata = manifest.get("metadata") or {}
    where = f"{kind}/{metadata.get('name', '?')}"
    try:
        validator = _validator(api_version, kind)
    except LookupError as exc:
        return [f"{where}: {exc}"]
    problems = [
        f"{where}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]
    name = str(metadata.get("name", ""))
    if not NAME.match(name) or len(name) > 63:
        problems.append(f"{where}: metadata.name is not a DNS-1123 label of at most 63 characters")
    labels = dict(metadata.get("labels") or {})
    if kind in {"Deployment", "Job"}:
        labels |= manifest["spec"]["template"]["metadata"].get("labels") or {}
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    return problems


def validate_all(manifests: Iterable[dict[str, Any]]) -> list[str]:
    """The problems of every manifest, in order."""
    return [problem for manifest in manifests for problem in validate(manifest)]


def profiles() -> dict[str, list[Path]]:
    """The values profiles `make lint-helm` checks: the defaults, each ci/ file, and all of them."""
    files = sorted((CHART / "ci").glob("*.yaml"))
    return {"default": [], **{path.stem: [path] for path in files}, "all": files}


def main() -> int:
    """Render every profile and validate it; print one line each; 1 if anything is wrong."""
    failed = False
    for name, files in profiles().items():
        try:
            manifests = render(files)
        except RenderError as exc:
            print(f"{name}: render failed: {exc}")
            failed = True
            continue
        problems = validate_all(manifests)
        kinds = ", ".join(sorted({m["kind"] for m in manifests}))
        print(f"{name}: {len(manifests)} manifests ({kinds}), {len(problems)} problems")
        for problem in problems:
            print(f"  {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
