"""Refresh the vendored JSON schemas (run by hand; nothing here runs at test time).

    python -m pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    python tests/deploy/schemas/vendor.py \
        --wheel /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl \
        --crds-catalog /path/to/datreeio/CRDs-catalog

Kubernetes: the `<kind>.json` files of the kinds the chart renders, as the wheel ships them,
and its `_definitions.json` cut to the definitions those kinds reach (each kept as is). CRDs:
copied as they are. README.md names the versions.
"""

import argparse
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "v1.33.0-local-strict"
KINDS = [
    "configmap-v1",
    "secret-v1",
    "service-v1",
    "deployment-apps-v1",
    "poddisruptionbudget-policy-v1",
    "job-batch-v1",
]
CRDS = ["keda.sh/scaledobject_v1alpha1.json", "monitoring.coreos.com/servicemonitor_v1.json"]
PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _refs(node: Any) -> set[str]:
    """Names of the definitions a schema fragment refers to."""
    if isinstance(node, dict):
        found = set()
        ref = node.get("$ref")
        for prefix in PREFIXES:
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref[len(prefix) :])
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node)) if node else set()
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--crds-catalog", type=Path, required=True)
    args = parser.parse_args()
    out = HERE / "kubernetes" / KUBERNETES_VERSION
    out.mkdir(parents=True, exist_ok=True)
    base = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}/"
    with zipfile.ZipFile(args.wheel) as wheel:
        definitions = json.loads(wheel.read(base + "_definitions.json"))
        wanted: set[str] = set()
        for kind in KINDS:
            raw = wheel.read(f"{base}{kind}.json")
            (out / f"{kind}.json").write_bytes(raw)
            wanted |= _refs(json.loads(raw))
    defs = definitions["$defs"]
    todo = list(wanted)
    while todo:
        for name in _refs(defs[todo.pop()]) - wanted:
            wanted.add(name)
            todo.append(name)
    definitions["$defs"] = {name: defs[name] for name in sorted(wanted)}
    (out / "_definitions.json").write_text(json.dumps(definitions, indent=1) + "\n")
    for crd in CRDS:
        target = HERE / "crds" / crd
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.crds_catalog / crd, target)
    print(f"{len(KINDS)} kinds, {len(wanted)} of {len(defs)} definitions, {len(CRDS)} CRDs")


if __name__ == "__main__":
    main()
