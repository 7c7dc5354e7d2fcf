"""The launchers and the Indexed Job's container command, run for real on CPU.

The Indexed Job test takes the command, arguments, environment and config from the *rendered*
manifest (kubectl kustomize k8s/overlays/indexed-job) and starts it as two local processes, with
what Kubernetes would give them (JOB_COMPLETION_INDEX 0 and 1, the job-name label) and three
values pointed at this machine: the rendezvous host (the headless Service's name for pod 0 ->
127.0.0.1), a free port, and the ConfigMap's file in a temporary folder. The run is the tiny
synthetic one below, so it shows the rendezvous and a few training steps, not GPU training.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration._deploy import (
    REPO,
    RUN_CONFIG,
    container_command,
    container_env,
    one,
    render,
    trainer,
)

LAUNCH = REPO / "launch"
STEPS = 3
TINY = [
    "--data.loader=synthetic", "--data.num_classes=50", "--data.workers=0",
    "--model.backbone=tinyface", "--model.embedding_size=16", "--data.global_batch_size=4",
    f"--train.max_steps={STEPS}", "--optim.warmup_steps=0", "--train.precision=fp32",
    "--eval.sets=",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    """This machine's environment with the launchers on PATH (as the images have them), this
    interpreter as their `python`, and one thread per process (two cores, two processes)."""
    env = dict(os.environ)
    env.update(
        PATH=f"{LAUNCH}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PYTHON=sys.executable,
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_trained_on_two_ranks(out: Path, log: str) -> None:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1)), log[-3000:]
    final = out / f"step-{STEPS:08d}"
    ranks = sorted(p.name for p in final.glob("rng-rank*"))
    assert ranks == ["rng-rank0-of2.pt", "rng-rank1-of2.pt"], (ranks, log[-3000:])


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train.sh", [], "no config file given"),
        ("train.sh", ["missing.toml", "--train.max_steps=1"], "config file 'missing.toml' not found"),
        ("train.sh", ["--nproc", "2", "--train.max_steps=1"], "no config file given"),
        ("multinode.sh", ["--nnodes=2", "--rdzv-endpoint=h:1", "missing.toml"], "'missing.toml' not found"),
        ("slurm.sbatch", ["missing.toml"], "submit with sbatch"),
    ],
)  # fmt: skip
def test_launchers_fail_early_with_a_clear_message(
    script: str, args: list[str], message: str, tmp_path: Path
) -> None:
    env = _env()
    env.pop("SLURM_JOB_ID", None)
    start = time.monotonic()
    out = subprocess.run(
        [str(LAUNCH / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert time.monotonic() - start < 10, "checked before torchrun starts"


def test_train_sh_runs_two_cpu_processes(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text('[data]\nloader = "synthetic"\nnum_classes = 50\n')
    out = tmp_path / "run"
    cmd = [
        str(LAUNCH / "train.sh"),
        "--nproc",
        "2",
        str(config),
        *TINY,
        f"--train.output_dir={out}",
    ]
    run = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"finished at step {STEPS}" in run.stdout
    _assert_trained_on_two_ranks(out, run.stdout)


def test_indexed_job_command_rendezvous_and_trains_as_two_local_pods(tmp_path: Path) -> None:
    docs = render("indexed-job")
    job = one(docs, "Job")
    container = trainer(job["spec"]["template"])
    (config_text,) = one(docs, "ConfigMap", RUN_CONFIG)["data"].values()
    config = tmp_path / "train.toml"  # the ConfigMap, as mounted
    config.write_text(config_text)
    out = tmp_path / "checkpoints"
    port = _free_port()
    procs, logs = [], []
    # Pod 1 first: a worker that starts before the rendezvous host must wait for it.
    for index in (1, 0):
        env = container_env(
            container,
            field_refs={
                "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
                "metadata.labels['batch.kubernetes.io/job-name']": job["metadata"]["name"],
            },
            overrides={
                "RDZV_HOST": "127.0.0.1",
                "RDZV_PORT": str(port),
                "PARTIALFC_CONFIG": str(config),
                "PARTIALFC_METRICS_PORT": "0",  # two "pods" on one host would share the port
                "OMP_NUM_THREADS": "1",
            },
        )
        assert env["JOB_COMPLETION_INDEX"] == str(index)
        cmd = [*container_command(container, env), *TINY, f"--train.output_dir={out}"]
        assert cmd[0] == "multinode.sh" and f"--node-rank={index}" in cmd
        assert f"--rdzv-endpoint=127.0.0.1:{port}" in cmd and str(config) in cmd
        log = tmp_path / f"pod-{index}.log"
        logs.append(log)
        with open(log, "w") as sink:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=tmp_path,
                    env=_env(**env),
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        time.sleep(2)
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    text = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)
    assert codes == [0, 0], text
    assert f"finished at step {STEPS}" in text
    _assert_trained_on_two_ranks(out, text)
