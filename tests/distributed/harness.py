"""Run a test body on W real gloo processes (spawned, FileStore rendezvous: no ports)."""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world: int, store_path: str, args: tuple) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90)
    )
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world: int, tmp_dir: Path, *args: object) -> None:
    """Call ``fn(rank, world, *args)`` on ``world`` processes; a failure on any rank fails the test.

    ``fn`` must be a module-level function (it is pickled by name).
    """
    store_path = os.path.join(tmp_dir, f"store-{uuid.uuid4().hex}")
    mp.start_processes(
        _entry, args=(fn, world, store_path, args), nprocs=world, start_method="spawn", join=True
    )
