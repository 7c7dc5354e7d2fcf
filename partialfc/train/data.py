"""The trainer's view of a loader: batches, classes, and a resumable position."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from partialfc.seeding import generator
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime


class TrainLoader(Protocol):
    """What the trainer needs from a loader (RecordLoader has exactly this)."""

    num_classes: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Stops background work (decoding processes, pipelines); the position is kept."""


class SyntheticLoader:
    """Random images and labels, a pure function of (seed, epoch, batch, rank): for smoke tests
    and throughput runs without a dataset. Each rank draws its own slice of the global batch."""

    def __init__(self, num_classes: int, batch_size: int, rank: int, seed: int, image_size: int = 112,
                 batches_per_epoch: int = 1000) -> None:  # fmt: skip
        self.num_classes, self.batch_size, self.rank, self.seed = (
            num_classes,
            batch_size,
            rank,
            seed,
        )
        self.image_size, self.batches_per_epoch = image_size, batches_per_epoch
        self.epoch = self.batch = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.batch < self.batches_per_epoch:
            gen = generator("synthetic", self.seed, self.epoch, self.batch, self.rank)
            self.batch += 1
            images = (
                torch.rand(self.batch_size, 3, self.image_size, self.image_size, generator=gen) * 2
                - 1
            )
            yield images, torch.randint(0, self.num_classes, (self.batch_size,), generator=gen)
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def close(self) -> None:
        """Nothing runs in the background."""


class _Counted:
    """Adds a (epoch, batch) position to a loader that has none (DALI); resuming fast-forwards."""

    def __init__(self, loader: Any, num_classes: int) -> None:
        self.loader, self.num_classes = loader, num_classes
        self.epoch = self.batch = self._skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, item in enumerate(self.loader):
            if i < self._skip:
                continue
            self.batch = i + 1
            yield item
        self.epoch, self.batch, self._skip = self.epoch + 1, 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self._skip = int(state["epoch"]), int(state["batch"])

    def close(self) -> None:
        """DALI's pipeline keeps no process of its own to stop."""


def build_loader(cfg: Config, rt: Runtime) -> TrainLoader:
    """The loader ``cfg.data`` describes, yielding this rank's part of every global batch."""
    d = cfg.data
    per_rank = d.global_batch_size // rt.world_size
    if d.loader == "synthetic":
        return SyntheticLoader(d.num_classes, per_rank, rt.rank, cfg.train.seed, d.image_size)
    if d.loader == "torch":
        from partialfc.data import RecordLoader

        loader = RecordLoader(
            d.root, per_rank, world_size=rt.world_size, rank=rt.rank, seed=cfg.train.seed,
            num_workers=d.workers, pin_memory=rt.device.type == "cuda",
        )  # fmt: skip
        loader.num_classes = loader.dataset.num_classes
        return loader
    from partialfc.data import DaliLoader
    from partialfc.data.layout import Property

    dali = DaliLoader(d.root, per_rank, world_size=rt.world_size, rank=rt.rank, seed=cfg.train.seed,
                      num_threads=max(1, d.workers))  # fmt: skip
    return _Counted(dali, Property.read(Path(d.root) / "property").num_classes)
