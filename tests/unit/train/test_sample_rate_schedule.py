"""head.sample_rate_schedule: the head samples at the schedule's rate of each optimizer step, and a
run resumed mid-schedule trains exactly as one that was never interrupted."""

from __future__ import annotations

import json
import shutil

import torch

from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.trainer import Trainer
from tests.runlog import losses, step_losses

# 30 classes and 8 labels a step: 0.3 scores 9 rows (more than the batch's positives, so exactly
# 9), 0.6 scores 18, 1.0 all 30 (no sampling).
SCHEDULE = [[0, 0.3], [2, 0.6], [5, 1.0]]
ROWS = [9, 9, 18, 18, 18, 30, 30]


def _trainer(out, max_steps: int = 7, **train) -> Trainer:
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": 30, "global_batch_size": 8},
        "model": {"backbone": "tinyface_gn", "embedding_size": 8},
        "head": {"margin": "arcface", "margin_args": {"s": 8.0, "m": 0.3}, "sample_rate_schedule": SCHEDULE},
        "optim": {"lr": 0.05},
        "train": {"max_steps": max_steps, "output_dir": str(out), "checkpoint_every": 3} | train,
    })  # fmt: skip
    return Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))


def _rows_per_forward(trainer: Trainer) -> list[int]:
    rows: list[int] = []
    trainer.head.register_forward_hook(lambda head, *_: rows.append(head.last_index.numel()))
    return rows


def test_the_head_samples_at_the_schedules_rate_of_each_step(tmp_path) -> None:
    trainer = _trainer(tmp_path)
    rows = _rows_per_forward(trainer)
    trainer.fit()
    assert rows == ROWS
    logged = [r["sample_rate"] for r in _records(tmp_path)]
    assert logged == [0.3, 0.3, 0.6, 0.6, 0.6, 1.0, 1.0]


def test_gradient_accumulation_keeps_one_rate_per_optimizer_step(tmp_path) -> None:
    trainer = _trainer(tmp_path, grad_accum=2)
    rows = _rows_per_forward(trainer)
    trainer.fit()
    assert rows == [r for r in ROWS for _ in range(2)], "steps, not forward calls, index it"


def test_a_run_resumed_mid_schedule_matches_the_uninterrupted_run(tmp_path) -> None:
    whole = tmp_path / "whole"
    _trainer(whole).fit()
    # The interrupted run: only the step-3 checkpoint survived (rate 0.6, 0.3 before it).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "step-00000003", resumed / "step-00000003")
    trainer = _trainer(resumed)
    rows = _rows_per_forward(trainer)
    assert trainer.fit()["step"] == 7
    assert sorted(step_losses(resumed)) == [4, 5, 6, 7], "it resumed at step 3"
    assert rows == ROWS[3:]
    torch.testing.assert_close(
        torch.tensor(losses(resumed, after=3)), torch.tensor(losses(whole, after=3)), rtol=0, atol=0
    )


def _records(output_dir) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]
