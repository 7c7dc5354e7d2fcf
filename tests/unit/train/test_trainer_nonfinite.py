"""Non-finite losses: the step is skipped (no parameter moves) and counted; a streak stops the run."""

from __future__ import annotations

import pytest
import torch

from partialfc.train.config import Config
from partialfc.train.runtime import Runtime
from partialfc.train.trainer import NonFiniteLossError, Trainer


def _trainer(tmp_path, **train) -> Trainer:
    cfg = Config.from_dict({
        "data": {"loader": "synthetic", "num_classes": 20, "global_batch_size": 4},
        "model": {"backbone": "tinyface_gn", "embedding_size": 8},
        "head": {"margin": "cosface", "margin_args": {"s": 8.0, "m": 0.2}},
        "train": {"max_steps": 6, "output_dir": str(tmp_path), "checkpoint_every": 100, **train},
        "metrics": {"jsonl": True},
    })  # fmt: skip
    return Trainer(cfg, Runtime(0, 1, 0, torch.device("cpu")))


class _PoisonedLoader:
    """Wraps a loader and turns the images of the listed (0-based) batches into NaN."""

    def __init__(self, loader, bad: set[int]) -> None:
        self.loader, self.bad, self.num_classes, self.count = loader, bad, loader.num_classes, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            if self.count in self.bad:
                images = torch.full_like(images, float("nan"))
            self.count += 1
            yield images, labels

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()


def test_nonfinite_steps_are_skipped_and_counted(tmp_path) -> None:
    trainer = _trainer(tmp_path)
    trainer.loader = _PoisonedLoader(trainer.loader, bad={2, 3})
    snapshots = []
    original = trainer.train_step

    def watched(images, labels):
        before = [p.detach().clone() for p in trainer.backbone.parameters()] + [
            trainer.head.weight.detach().clone()
        ]
        out = original(images, labels)
        after = [*trainer.backbone.parameters(), trainer.head.weight]
        snapshots.append(all(torch.equal(a, b) for a, b in zip(before, after, strict=True)))
        return out

    trainer.train_step = watched
    result = trainer.fit()
    assert result["step"] == 6 and trainer.nonfinite_total == 2
    assert snapshots == [False, False, True, True, False, False], (
        "only the NaN steps left the weights alone"
    )
    assert all(torch.isfinite(p).all() for p in trainer.backbone.parameters())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"nonfinite_steps": 2.0' in lines[-2] or '"nonfinite_steps": 2.0' in lines[-1]


def test_a_streak_of_nonfinite_steps_stops_training_clearly(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_nonfinite_steps=3)
    trainer.loader = _PoisonedLoader(trainer.loader, bad=set(range(100)))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit()
