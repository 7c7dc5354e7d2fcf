"""Regenerate the Kubeflow Trainer v2 schemas in this folder from a kubeflow/trainer checkout.

    python tests/integration/schemas/vendor_trainer_crds.py PATH/TO/kubeflow/trainer

Reads the CRDs under ``manifests/base/crds`` and writes each one's ``openAPIV3Schema`` as JSON
Schema, changed in three ways: the pod spec inside the JobSet template becomes a plain object
(kubernetes-validate checks pod templates, as core PodTemplateSpecs, in test_deploy.py); every
object with listed properties rejects others, as the API server's structural schema prunes them
(a typo would silently vanish there); apiVersion and kind are pinned. Descriptions are dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
CRDS = {
    "TrainJob": ("trainer.kubeflow.org_trainjobs.yaml", "trainjob-trainer-v1alpha1.json"),
    "TrainingRuntime": (
        "trainer.kubeflow.org_trainingruntimes.yaml",
        "trainingruntime-trainer-v1alpha1.json",
    ),
}


def structural(node: Any) -> Any:
    """The schema with pod specs opaque, unknown properties rejected, descriptions removed."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    props = node.get("properties", {})
    if "containers" in props and "volumes" in props:  # a core/v1 PodSpec
        return {"type": "object", "$comment": "PodSpec: validated by kubernetes-validate"}
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: structural(sub) for name, sub in value.items()}
        else:
            out[key] = structural(value)
    if props and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def main(checkout: Path) -> None:
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for kind, (source, target) in CRDS.items():
        crd = yaml.safe_load((checkout / "manifests" / "base" / "crds" / source).read_text())
        (version,) = crd["spec"]["versions"]
        schema = structural(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"openAPIV3Schema of kubeflow/trainer {source} at commit {commit}, made "
            "structural by tests/integration/schemas/vendor_trainer_crds.py (see its docstring).",
            **schema,
        }
        (HERE / target).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {HERE / target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
