"""The trainer's view of a loader: batches, classes, and a resumable position."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from partialfc.seeding import generator
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime

log = logging.getLogger(__name__)


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


def _dali_file(loader: Any, state: dict[str, Any]) -> str:
    return (
        f"dali-rank{loader.rank}-of{loader.world_size}"
        f"-epoch{int(state['epoch'])}-batch{int(state['batch'])}.bin"
    )


def _is_dali(loader: Any) -> bool:
    from partialfc.data.dali import DaliLoader  # DALI itself is imported only when built

    return isinstance(loader, DaliLoader)


def loader_files(loader: TrainLoader) -> dict[str, bytes]:
    """Per-rank files a checkpoint needs for this loader's exact position (name -> bytes).

    DALI's pipeline checkpoint (reader progress, shuffle buffer, generators) is one blob per rank,
    so it goes beside the DCP files, named by rank, world size and position; the position
    itself, the same on every rank, is ``state_dict()`` in the DCP checkpoint.
    """
    if not _is_dali(loader):
        return {}
    return {_dali_file(loader, loader.state_dict()): loader.pipeline_checkpoint()}


def load_loader_state(loader: TrainLoader, state: dict[str, Any], checkpoint_path: Path) -> None:
    """Restores ``loader`` to ``state`` (the checkpoint's ``data`` entry) and its per-rank files.

    A DALI loader resumed on another world size finds no file of its rank: the readers' shards
    differ, so no saved reader state applies. It then runs as many batches of a fresh pipeline
    unseen as the checkpoint's epoch had used (as many samples, not the same ones) and warns.
    """
    if not _is_dali(loader):
        loader.load_state_dict(state)
        return
    path = Path(checkpoint_path) / _dali_file(loader, state)
    if path.is_file():
        loader.load_state_dict(state, path.read_bytes())
        return
    loader.load_state_dict(state)
    found = sorted(p.name for p in Path(checkpoint_path).glob("dali-rank*.bin"))
    log.warning(
        "%s holds no DALI reader state for rank %d of %d (%s): epoch %s continues from a fresh "
        "reader, %s batches run unseen; its samples are not exactly the ones an uninterrupted "
        "run would read",
        checkpoint_path,
        loader.rank,
        loader.world_size,
        f"it has {', '.join(found[:4])}{' ...' if len(found) > 4 else ''}" if found else "none",
        state["epoch"],
        state["batch"],
    )

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

    return DaliLoader(d.root, per_rank, world_size=rt.world_size, rank=rt.rank, seed=cfg.train.seed,
                      num_threads=max(1, d.workers))  # fmt: skip
