"""The optional sinks' wiring: W&B without the package is a one-line user error (the sink and the
preflight), and the sink hands wandb the TensorBoard tags, the step and a run id kept for resumes;
``metrics.tensorboard`` unset follows whether tensorboard is installed."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from partialfc.metrics.tensorboard import tag, tensorboard_available
from partialfc.metrics.weights_and_biases import (
    RUN_ID_FILE,
    WandbMissingError,
    WandbSink,
    wandb_available,
)
from partialfc.train.config import Config

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "configs" / "demo_cpu.toml"
needs_no_wandb = pytest.mark.skipif(wandb_available(), reason="wandb is installed here")


@needs_no_wandb
def test_wandb_sink_without_wandb_names_the_field_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(WandbMissingError) as err:
        WandbSink("faces", tmp_path, {})
    (problem,) = err.value.problems
    assert problem.startswith("metrics.wandb_project = 'faces': the wandb package is not installed")
    assert "pip install 'partialfc[wandb]'" in problem


@needs_no_wandb
def test_preflight_reports_a_wandb_project_without_wandb(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "partialfc.train",
            str(DEMO),
            "--check",
            "--data.loader=synthetic",
            "--data.num_classes=10",
            f"--train.output_dir={tmp_path / 'run'}",
            "--eval.sets=",
            "--metrics.wandb_project=faces",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: metrics.wandb_project = 'faces': the wandb package is not installed" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_wandb_sink_logs_tags_and_steps_and_keeps_the_run_id(tmp_path, monkeypatch) -> None:
    calls: list[tuple] = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    # A stand-in module: the real wandb is not installed here (see the tests above).
    fake = types.ModuleType("wandb")
    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("partialfc.metrics.weights_and_biases.wandb_available", lambda: True)
    for _ in range(2):  # the second sink is a resumed run
        sink = WandbSink("faces", tmp_path / "run", {"optim": {"lr": 0.1}})
        sink.log_dict(
            {
                "loss": 2.0,
                "lr": 0.1,
                "head_lr": 0.2,
                "eval/lfw": 0.9,
                "checkpoint_time": 1e9,
                "grad_norm": float("nan"),
            },
            step=7,
        )
        sink.close()
    inits = [c[1] for c in calls if c[0] == "init"]
    run_id = (tmp_path / "run" / RUN_ID_FILE).read_text().strip()
    assert [i["id"] for i in inits] == [run_id, run_id] and len(run_id) == 16
    assert inits[0]["resume"] == "allow" and inits[0]["project"] == "faces"
    assert inits[0]["dir"] == str(tmp_path / "run")
    logged = {"loss": 2.0, "lr/backbone": 0.1, "lr/head": 0.2, "eval/lfw/accuracy": 0.9}
    assert [c for c in calls if c[0] == "log"] == [("log", logged, 7)] * 2


def test_tensorboard_default_follows_the_package() -> None:
    cfg = Config.load(DEMO)
    assert cfg.metrics.tensorboard is None
    assert cfg.metrics.tensorboard_enabled() == tensorboard_available()
    off = Config.load(DEMO, ["--metrics.tensorboard=false"])
    assert not off.metrics.tensorboard_enabled()


def test_tensorboard_tags() -> None:
    assert [tag(k) for k in ("lr", "head_lr", "eval/lfw", "eval/lfw/xnorm", "margin/t")] == [
        "lr/backbone",
        "lr/head",
        "eval/lfw/accuracy",
        "eval/lfw/xnorm",
        "margin/t",
    ]
    assert tag("checkpoint_time") is None and tag("rank_samples") is None
