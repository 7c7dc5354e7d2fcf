"""Run a function on W local CPU processes joined in a gloo group (tests, demos, benchmarks).

The rendezvous is a FileStore in a temporary directory: no port is opened, so concurrent runs never
clash. For real jobs use torchrun.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from partialfc.distributed._groups import leave_together


def _entry(
    rank: int, fn: Callable[..., Any], world: int, store_path: str, threads: int, args: tuple
) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store_path, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        fn(rank, world, *args)
        leave_together()
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable[..., Any], world: int, *args: object, threads: int = 1) -> None:
    """Call ``fn(rank, world, *args)`` in ``world`` spawned processes sharing a gloo group.

    ``fn`` must be importable by name (a module-level function). An exception on any rank stops the
    others and is raised here (``torch.multiprocessing.ProcessRaisedException``).
    """
    with tempfile.TemporaryDirectory(prefix="partialfc-store-") as tmp:
        store = os.path.join(tmp, "store")
        mp.start_processes(
            _entry,
            args=(fn, world, store, threads, args),
            nprocs=world,
            start_method="spawn",
            join=True,
        )
