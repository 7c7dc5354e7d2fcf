"""Distributed, resumable batches for torch: :class:`GlobalBatchSampler` and :class:`RecordLoader`.

The contract (tests pin it down):

* The order of the *global* batch depends only on ``(seed, epoch)``: epoch ``e`` permutes the
  ``N`` samples with a generator seeded from ``(seed, e)``; global batch ``g`` is the chunk
  ``perm[g*G:(g+1)*G]`` with ``G = batch_size * world_size``, and rank ``r`` takes rows
  ``[r*b, (r+1)*b)`` of it. Concatenating the ranks' batches gives the world-size-1 batch.
* Every rank yields ``N // G`` batches an epoch (the last incomplete global batch is dropped).
* Flips are a function of ``(seed, epoch, sample_index)`` too, so pixels match as well.
* ``state_dict()`` records ``(epoch, batch)`` *as consumed by the caller* (not as prefetched by
  workers); after ``load_state_dict`` the next batch is the one an uninterrupted run yields.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from partialfc.data.dataset import RecordDataset, WorkerError, collate_u8, normalize
from partialfc.seeding import generator


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The sample order of one epoch (world-size independent)."""
    if not shuffle:
        return torch.arange(num_samples)
    return torch.randperm(num_samples, generator=generator("order", seed, epoch))


def epoch_flips(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """Whether sample ``i`` is mirrored in epoch ``epoch``: bool tensor indexed by sample."""
    return torch.rand(num_samples, generator=generator("flips", seed, epoch)) < 0.5


class GlobalBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Yields this rank's slice of every global batch of one epoch, from a start batch.

    Items are ``(sample_index, flip)`` pairs for :class:`RecordDataset`. The epoch and start
    batch are plain attributes read when iteration starts, so a DataLoader with persistent
    workers can reuse the sampler across epochs.

    Args:
        num_samples: dataset size.
        batch_size: per-rank batch size ``b``.
        world_size: number of ranks ``W``.
        rank: this rank.
        seed: seed of the order and the flips.
        shuffle: permute the samples each epoch (else dataset order).
        flip: random horizontal flips (else none).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        flip: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.flip = flip
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise ValueError(
                f"{num_samples} samples cannot fill one global batch of {self.global_batch_size} "
                f"(batch_size {batch_size} x world_size {world_size})"
            )

    @property
    def global_batch_size(self) -> int:
        """``batch_size * world_size``."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self.num_samples // self.global_batch_size

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        flips = (
            epoch_flips(self.num_samples, self.seed, self.epoch)
            if self.flip
            else torch.zeros(self.num_samples, dtype=torch.bool)
        )
        gb, b = self.global_batch_size, self.batch_size
        for g in range(self.start_batch, len(self)):
            rows = order[g * gb + self.rank * b : g * gb + (self.rank + 1) * b]
            yield list(zip(rows.tolist(), flips[rows].tolist(), strict=True))


class RecordLoader:
    """Float32 NCHW batches in [-1, 1] and int64 labels, decoded by DataLoader workers.

    Iterating runs the current epoch from the current batch, then advances to the next epoch.

    Args:
        dataset: a :class:`RecordDataset` or a dataset folder.
        batch_size: per-rank batch size.
        world_size: number of ranks (the global batch is ``batch_size * world_size``).
        rank: this rank.
        seed: seed of the order and the flips.
        shuffle: permute the samples each epoch.
        flip: random horizontal flips.
        num_workers: decoding processes (0 decodes in this process).
        pin_memory: pin the uint8 batches (faster copies to ``device``).
        prefetch_factor: batches prefetched per worker.
        device: where batches are yielded; with a CUDA device the uint8 batch is copied there
            and normalised on it (a quarter of the bytes over PCIe, no CPU float pass).
    """

    def __init__(
        self,
        dataset: RecordDataset | str | os.PathLike[str],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        flip: bool = True,
        num_workers: int = 2,
        pin_memory: bool = False,
        prefetch_factor: int = 4,
        device: torch.device | str | None = None,
    ) -> None:
        self.dataset = dataset if isinstance(dataset, RecordDataset) else RecordDataset(dataset)
        self.sampler = GlobalBatchSampler(
            len(self.dataset), batch_size, world_size, rank, seed, shuffle, flip
        )
        self._loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_u8,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            worker_init_fn=_WorkerSignals() if num_workers > 0 else None,
        )
        self.device = None if device is None else torch.device(device)
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed to the caller
        if num_workers > 0:
            # However this loader ends (close, garbage collection, exit), its workers may end.
            weakref.finalize(self, self._loader.worker_init_fn.release)
            _track(self)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(images (b, 3, H, W) float32, labels (b,) int64)`` to the end of the epoch."""
        self.sampler.epoch, self.sampler.start_batch = self.epoch, self.batch
        if self._loader.num_workers and self._loader._iterator is None:  # workers start anew
            self._loader.worker_init_fn.hold()
        for batch in self._loader:
            if isinstance(batch, WorkerError):
                raise batch.error
            images, labels = batch
            self.batch += 1
            if self.device is not None:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield normalize(images), labels
        self.epoch, self.batch = self.epoch + 1, 0

    def close(self) -> None:
        """Stops the worker processes (the next iteration starts new ones); the position is kept.

        A trainer stopping on SIGTERM calls this before its last checkpoint: the workers ignore
        the signal (see :class:`_WorkerSignals`) and end here, when the trainer is ready.
        """
        workers = self._loader._iterator  # the persistent workers' iterator, if started
        if workers is not None:
            self._loader.worker_init_fn.release()
            workers._shutdown_workers()
            self._loader._iterator = None

    def state_dict(self) -> dict[str, Any]:
        """Position to resume from: epoch and batches already consumed in it."""
        epoch, batch = (self.epoch + 1, 0) if self.batch >= len(self) else (self.epoch, self.batch)
        return {
            "epoch": epoch,
            "batch": batch,
            "seed": self.sampler.seed,
            "global_batch_size": self.sampler.global_batch_size,
            "num_samples": self.sampler.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at ``state``'s position; the next batch is the one that would have followed.

        The world size may differ from the saving run's as long as the global batch size is the
        same: positions are counted in global batches.

        Raises:
            ValueError: ``state`` is from a different seed, global batch size or dataset size
                (then the order would differ), naming the field.
        """
        for name, mine in (
            ("seed", self.sampler.seed),
            ("global_batch_size", self.sampler.global_batch_size),
            ("num_samples", self.sampler.num_samples),
        ):
            if name in state and int(state[name]) != mine:
                raise ValueError(
                    f"loader state has {name}={state[name]} but this loader has "
                    f"{name}={mine}; the batch order would not continue"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ValueError(f"loader state batch={batch} is outside [0, {len(self)}]")
        if batch == len(self):  # saved after the last batch: the next one opens the next epoch
            epoch, batch = epoch + 1, 0
        self.epoch, self.batch = epoch, batch


class _WorkerSignals:
    """``worker_init_fn``: decoding workers leave SIGTERM and SIGINT to the trainer.

    torchrun, Kubernetes' init and a terminal signal the whole process group. A worker killed by
    it would make the trainer's next data-loader call (or torch's SIGCHLD handler, at any point:
    inside the last checkpoint's write) raise ``DataLoader worker ... killed by signal``. So a
    worker ignores SIGINT, and SIGTERM until its loader is released (:meth:`release`: by
    :meth:`RecordLoader.close`, the loader's collection, or this module at exit): the trainer
    stops its workers itself, and then torch's own SIGTERM (``Process.terminate``, its fallback
    when a worker misses its sentinel) ends them at once. A worker whose trainer died anyway exits
    on its own (torch's watchdog on the parent) or with the group's SIGKILL.

    The flag is shared memory inherited by the workers; the handler is Python's, so it acts on a
    signal delivered to any thread of the worker (it runs in the worker's main thread within
    torch's 5 s poll).
    """

    def __init__(self) -> None:
        self._released = multiprocessing.RawValue("b", 0)

    def hold(self) -> None:
        self._released.value = 0

    def release(self) -> None:
        self._released.value = 1

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self._released.value:
            os._exit(0)


_live_loaders: weakref.WeakSet[RecordLoader] = weakref.WeakSet()


def _track(loader: RecordLoader) -> None:
    # Registered after multiprocessing's exit handler (imported with torch.utils.data), so it runs
    # before it: the workers get their sentinel and end before that handler joins them.
    if not _live_loaders:
        atexit.unregister(_close_live_loaders)
        atexit.register(_close_live_loaders)
    _live_loaders.add(loader)


def _close_live_loaders() -> None:
    for loader in list(_live_loaders):
        loader.close()
