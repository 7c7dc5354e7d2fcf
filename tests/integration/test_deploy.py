"""Deployment files, checked without a cluster: every kustomize overlay renders and validates
against the Kubernetes API schemas (kubernetes-validate --strict) and, for the custom resources,
against minimal schemas of the kubeflow.org/v1 PyTorchJob and monitoring.coreos.com/v1
PodMonitor and the CRD schemas of Kubeflow Trainer v2's TrainJob and TrainingRuntime; the pieces that must agree across files do; hadolint passes on the Dockerfiles;
bash -n and shellcheck on the launchers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from partialfc import configs
from partialfc.train.config import Config
from tests.integration._deploy import (
    K8S,
    LAUNCHERS,
    OVERLAYS,
    REPO,
    RUN_CONFIG,
    container_command,
    container_env,
    one,
    pod_templates,
    render,
    tool,
    trainer,
    yaml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes the manifests are written for: podFailurePolicy is GA from 1.31.
KUBERNETES_VERSION = "1.31.0"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
CORE_KINDS = {"ConfigMap", "Service", "PersistentVolumeClaim", "Job"}
# The custom resource holding each operator overlay's pod template.
WORKLOADS = {"pytorchjob": "PyTorchJob", "trainjob": "TrainingRuntime"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def _kubernetes_validate(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    paths = []
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i}-{obj['kind']}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj))
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
         "-k", KUBERNETES_VERSION, *paths],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _schema_errors(obj: dict[str, Any], schema_file: str) -> list[str]:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def test_every_overlay_renders_only_known_kinds(rendered) -> None:
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    workload = WORKLOADS.get(name, "Job")
    assert workload in kinds
    assert "PodTemplate" not in kinds, "the base's template source must not be applied"
    known = CORE_KINDS | set(WORKLOADS.values()) | {"PodMonitor", "PrometheusRule", "TrainJob"}
    assert set(kinds) <= known, kinds
    assert "PrometheusRule" in kinds, "the overlays include k8s/monitoring"


def test_core_objects_and_every_pod_template_pass_strict_kubernetes_validation(
    rendered, tmp_path: Path
) -> None:
    _, docs = rendered
    core = [d for d in docs if d["kind"] in CORE_KINDS]
    # The PyTorchJob's templates (and the Job's again) as core PodTemplates: a typo in a pod
    # spec inside a custom resource would otherwise reach the cluster unchecked.
    as_pod_templates = [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": where.lower().replace("/", "-")},
            "template": template,
        }
        for where, template in pod_templates(docs).items()
    ]
    assert as_pod_templates
    _kubernetes_validate(core + as_pod_templates, tmp_path)


def test_the_validation_can_fail(tmp_path: Path) -> None:
    docs = render("indexed-job")
    job = one(docs, "Job")
    trainer(job["spec"]["template"])["volumeMount"] = []  # a typo'd field
    with pytest.raises(AssertionError, match="volumeMount"):
        _kubernetes_validate([job], tmp_path)


def test_pytorchjob_matches_the_kubeflow_v1_api_and_its_pods() -> None:
    docs = render("pytorchjob")
    job = one(docs, "PyTorchJob")
    assert _schema_errors(job, "pytorchjob-kubeflow-v1.json") == []
    spec = job["spec"]
    elastic = spec["elasticPolicy"]
    assert elastic["rdzvBackend"] == "c10d"
    replicas = {k: v["replicas"] for k, v in spec["pytorchReplicaSpecs"].items()}
    assert set(replicas) == {"Master", "Worker"}
    assert elastic["minReplicas"] <= sum(replicas.values()) <= elastic["maxReplicas"]
    assert elastic["maxRestarts"] >= 1
    for replica in spec["pytorchReplicaSpecs"].values():
        assert replica["restartPolicy"] == "OnFailure"
        container = trainer(replica["template"])  # the operator requires the name "pytorch"
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert spec["nprocPerNode"] == str(gpus), "one process per GPU of the pod"
        # The operator reads the rendezvous port of worker 0 from this named port.
        assert "pytorchjob-port" in {p["name"] for p in container["ports"]}
        # torchrun's arguments come from the operator's PET_* variables.
        assert container["command"] == ["multinode.sh"]


def test_the_pytorchjob_schema_can_fail() -> None:
    job = one(render("pytorchjob"), "PyTorchJob")
    job["spec"]["elasticPolicy"]["rdzvBackend"] = "c10"
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    job["spec"]["pytorchReplicaSpecs"]["Chief"] = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    errors = "\n".join(_schema_errors(job, "pytorchjob-kubeflow-v1.json"))
    assert "c10" in errors and "Chief" in errors and "1 was expected" in errors, errors


def test_trainjob_and_its_runtime_match_the_kubeflow_trainer_v2_crds() -> None:
    docs = render("trainjob")
    job, runtime = one(docs, "TrainJob"), one(docs, "TrainingRuntime")
    assert _schema_errors(job, "trainjob-trainer-v1alpha1.json") == []
    assert _schema_errors(runtime, "trainingruntime-trainer-v1alpha1.json") == []
    ref = job["spec"]["runtimeRef"]
    assert (ref["apiGroup"], ref["kind"]) == ("trainer.kubeflow.org", "TrainingRuntime")
    assert ref["name"] == runtime["metadata"]["name"]
    assert "torch" in runtime["spec"]["mlPolicy"], (
        "the torch plugin sets torchrun's PET_* variables"
    )
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    # The Trainer finds its pods by this label and its container by the name "node"; the
    # rendezvous address it gives (<trainjob>-node-0-0) uses the job's name.
    assert node["name"] == "node"
    assert node["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
    }
    pod = node["template"]["spec"]["template"]
    container = trainer(pod)
    assert container["name"] == "node"
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert job["spec"]["trainer"]["numProcPerNode"] == gpus, "one process per GPU of the pod"
    assert pod["spec"]["restartPolicy"] == "Never", "required by the Job's podFailurePolicy"
    assert runtime["spec"]["template"]["spec"]["network"]["publishNotReadyAddresses"] is True


def test_the_trainjob_command_takes_its_rendezvous_from_the_trainer() -> None:
    docs = render("trainjob")
    job, runtime = one(docs, "TrainJob"), one(docs, "TrainingRuntime")
    container = trainer(runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
                        ["spec"]["template"])  # fmt: skip
    name = job["metadata"]["name"]
    # What kubeflow/trainer's torch plugin appends to the container's env (torch.go).
    injected = [
        {"name": "PET_NNODES", "value": str(job["spec"]["trainer"]["numNodes"])},
        {"name": "PET_NPROC_PER_NODE", "value": str(job["spec"]["trainer"]["numProcPerNode"])},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
    ]
    reserved = {e["name"] for e in injected} & {e["name"] for e in container["env"]}
    assert not reserved, f"the Trainer rejects these variables in the pod: {reserved}"
    with_pet = {**container, "env": [*container["env"], *injected]}
    env = container_env(with_pet, field_refs={COMPLETION_INDEX: "1"}, overrides={})
    assert container_command(with_pet, env) == [
        "multinode.sh", "--node-rank=1", f"--rdzv-endpoint={name}-node-0-0.{name}:29500",
        "/etc/partialfc/train.toml",
    ]  # fmt: skip
    assert 29500 in {p["containerPort"] for p in container["ports"]}


def test_the_trainer_v2_schemas_can_fail() -> None:
    docs = render("trainjob")
    job, runtime = one(docs, "TrainJob"), one(docs, "TrainingRuntime")
    job["spec"]["trainer"]["numProcsPerNode"] = 8  # a typo
    job["spec"]["runtimeRef"]["name"] = ""
    runtime["spec"]["mlPolicy"]["pytorch"] = {}
    runtime["spec"]["template"]["spec"]["failurePolicy"]["restartStrategy"] = "Restart"
    errors = "\n".join(_schema_errors(job, "trainjob-trainer-v1alpha1.json"))
    assert "numProcsPerNode" in errors and "runtimeRef/name" in errors, errors
    errors = "\n".join(_schema_errors(runtime, "trainingruntime-trainer-v1alpha1.json"))
    assert "pytorch" in errors and "'Restart' is not one of" in errors, errors


def test_podmonitor_matches_the_api_the_pods_and_their_ports(rendered) -> None:
    _, docs = rendered
    monitor = one(docs, "PodMonitor")
    assert _schema_errors(monitor, "podmonitor-monitoring-v1.json") == []
    bad = json.loads(json.dumps(monitor))
    bad["spec"]["podMetricsEndpoints"][0]["paths"] = "/metrics"
    assert _schema_errors(bad, "podmonitor-monitoring-v1.json"), "the schema can fail"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for where, template in pod_templates(docs).items():
        labels = template["metadata"]["labels"]
        assert wanted.items() <= labels.items(), f"{where} is not selected by the PodMonitor"
        ports = {p["name"]: p["containerPort"] for p in trainer(template)["ports"]}
        metrics = {n for n in ports if n.startswith("metrics-")}
        assert metrics and metrics <= endpoints, (where, metrics)


def test_pods_share_the_base_settings(rendered) -> None:
    name, docs = rendered
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    config_map = one(docs, "ConfigMap", RUN_CONFIG)["metadata"]["name"]
    for where, template in pod_templates(docs).items():
        spec, container = template["spec"], trainer(template)
        env = {e["name"]: e.get("value") for e in container["env"]}
        # SIGTERM -> finish the step -> checkpoint, before torchrun's own SIGKILL and then the
        # kubelet's.
        shutdown = int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
        assert spec["terminationGracePeriodSeconds"] >= shutdown + 30, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
        assert volumes[mounts["/etc/partialfc"]]["configMap"]["name"] == config_map, where
        assert env["PARTIALFC_CONFIG"].startswith("/etc/partialfc/")
        used = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                if "persistentVolumeClaim" in v}  # fmt: skip
        assert used <= claims and "partialfc-checkpoints" in used, (where, used, claims)
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        port = int(env["PARTIALFC_METRICS_PORT"])
        assert annotations["prometheus.io/port"] == str(port)
        assert {"name": "metrics-0", "containerPort": port} in container["ports"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        if name == "cpu-smoke":
            assert gpus is None, "the CPU smoke test must schedule on nodes without GPUs"
        else:
            assert int(gpus) >= 1
            assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus


def test_the_config_maps_hold_configs_that_load(rendered, tmp_path: Path) -> None:
    _, docs = rendered
    (text,) = one(docs, "ConfigMap", RUN_CONFIG)["data"].values()
    path = tmp_path / "train.toml"
    path.write_text(text)
    cfg = Config.load(path)
    assert cfg.train.output_dir.startswith("/checkpoints/"), "checkpoints go to the shared claim"


def test_the_k8s_config_copies_follow_the_shipped_configs() -> None:
    # kustomize reads no file outside the kustomization's folder, hence the copies.
    base = K8S / "base" / "train.toml"
    assert base.read_text() == configs.read_text("ms1mv3_r50")
    smoke = tomllib.loads((K8S / "overlays" / "cpu-smoke" / "train.toml").read_text())
    demo = tomllib.loads(configs.read_text("demo_cpu"))
    demo["data"]["root"] = "/data/demo"
    demo["train"]["output_dir"] = "/checkpoints/demo"
    demo["eval"]["sets"] = ["/data/demo/val.bin"]
    assert smoke == demo


def _probe_window(probe: dict[str, Any]) -> int:
    """Seconds of failed answers before the kubelet acts (Kubernetes' defaults: 10 s x 3)."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_startup_and_liveness_probes_ask_rank_0s_healthz_within_the_launcher_and_config_bounds(
    rendered, tmp_path: Path
) -> None:
    _, docs = rendered
    (text,) = one(docs, "ConfigMap", RUN_CONFIG)["data"].values()
    (tmp_path / "train.toml").write_text(text)
    stall = Config.load(tmp_path / "train.toml").metrics.stall_seconds
    launcher = (REPO / "launch" / "multinode.sh").read_text()
    (default_join,) = re.findall(r"RDZV_JOIN_TIMEOUT:-(\d+)", launcher)
    for where, template in pod_templates(docs).items():
        container = trainer(template)
        env = {e["name"]: e.get("value") for e in container["env"]}
        join = int(env.get("RDZV_JOIN_TIMEOUT") or default_join)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        startup, liveness = container["startupProbe"], container["livenessProbe"]
        for probe in (startup, liveness):
            # Local rank 0's server: the port the launchers pass as --metrics.port.
            assert probe["httpGet"]["path"] == "/healthz", where
            assert ports[probe["httpGet"]["port"]] == int(env["PARTIALFC_METRICS_PORT"]), where
            assert probe["timeoutSeconds"] >= 5, f"{where}: a busy process answers slowly"
        # No server listens while the launcher waits for the rendezvous host's name and then
        # for the rendezvous (each up to the join timeout), nor while torch is imported.
        assert _probe_window(startup) >= 2 * join + 300, where
        # An elastic restart in the container re-forms the rendezvous within the join timeout;
        # /healthz already waits stall_seconds, so the probe adds less than that on top.
        assert join + 300 <= _probe_window(liveness) < stall, where
        # A checkpoint write must fit in the grace period; a step, an evaluation and that write
        # must fit in stall_seconds.
        assert stall > template["spec"]["terminationGracePeriodSeconds"], where


def test_indexed_job_nodes_rendezvous_at_pod_zero() -> None:
    docs = render("indexed-job")
    job, service = one(docs, "Job"), one(docs, "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in trainer(job["spec"]["template"])["env"]}
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == service["metadata"]["name"]
    # Pod i is <job>-i.<subdomain>; JOB_NAME comes from the job-name label.
    assert env["RDZV_HOST"] == f"$(JOB_NAME)-0.{pod['subdomain']}"
    assert (
        service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    )
    assert int(env["RDZV_PORT"]) in {p["port"] for p in service["spec"]["ports"]}
    # podFailurePolicy is only accepted with restartPolicy Never.
    assert pod["restartPolicy"] == "Never"


def test_cpu_smoke_generates_its_data_and_uses_the_cpu_image() -> None:
    job = one(render("cpu-smoke"), "Job")
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["partialfc", "synth"]
    assert {c["image"] for c in [*pod["containers"], init]} == {"partialfc:cpu"}
    data = {v["name"]: v for v in pod["volumes"]}["data"]
    assert "emptyDir" in data and "persistentVolumeClaim" not in data


def test_the_images_put_the_launchers_the_manifests_call_on_path() -> None:
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (REPO / "docker" / name).read_text()
        assert "ENV PATH=/opt/partialfc/launch:$PATH" in text, name
        assert "COPY launch ./launch" in text and "PARTIALFC_METRICS_PORT=9100" in text, name
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "**/__pycache__"} <= set(ignored)


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    files = [str(REPO / "docker" / n) for n in ("Dockerfile", "Dockerfile.cpu")]
    out = subprocess.run([tool("hadolint"), *files], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_parses_and_passes_shellcheck(script: str) -> None:
    path = REPO / "launch" / script
    assert path.stat().st_mode & 0o111, f"{script} must be executable"
    text = path.read_text()
    assert "set -euo pipefail" in text
    parsed = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    checked = subprocess.run(
        [tool("shellcheck"), "--shell=bash", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout
