"""A stop signal is never lost: one arriving while the ranks vote on the step's flags stops the
run at the next step (the vote carries what the handler recorded, and never clears it)."""

from __future__ import annotations

import os
import signal

import torch

from partialfc.train import trainer as trainer_module
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.trainer import Trainer


def _trainer(tmp_path) -> Trainer:
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": 20, "global_batch_size": 4, "image_size": 112},
        "model": {"backbone": "tinyface_gn", "embedding_size": 8},
        "head": {"margin": "cosface", "margin_args": {"s": 8.0, "m": 0.2}},
        "train": {"max_steps": 6, "output_dir": str(tmp_path), "checkpoint_every": 100},
    })  # fmt: skip
    return Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))


def test_a_signal_during_the_vote_stops_the_next_step(tmp_path, monkeypatch) -> None:
    trainer = _trainer(tmp_path)
    votes = 0
    vote = trainer_module.all_reduce_max

    def signalled_while_voting(flags: torch.Tensor) -> torch.Tensor:
        nonlocal votes
        result = vote(flags)
        votes += 1
        if votes == 2:  # the second step's vote has been counted when SIGTERM arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer_module, "all_reduce_max", signalled_while_voting)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert result["stopped"] and result["step"] == 3, result
    assert [p.name for p in trainer_module.checkpoint.list_checkpoints(tmp_path)] == [
        "step-00000003"
    ]
