"""Run a function on W local CPU processes joined in a gloo group (tests, demos, benchmarks).

The rendezvous is a FileStore in a temporary directory: no port is opened, so concurrent runs never
clash. For real jobs use torchrun.

The ranks are forked from multiprocessing's fork server, which imports torch once, before it has
run anything (no thread pool to break in a fork), so a run costs about 0.1 s after the first,
against 3 to 5 s for spawned processes that each import torch (the test suite makes hundreds of
runs). ``fn`` runs with the caller's environment of the moment, as in a spawned process; only what
is read while the fork server starts or while ``fn``'s module is imported sees the environment of
the first call.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from partialfc.distributed._groups import leave_together


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world: int,
    store_path: str,
    threads: int,
    env: dict[str, str],
    args: tuple,
) -> None:
    os.environ.clear()
    os.environ.update(env)
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
    """Call ``fn(rank, world, *args)`` in ``world`` new processes sharing a gloo group.

    ``fn`` must be importable by name (a module-level function). An exception on any rank stops the
    others and is raised here (``torch.multiprocessing.ProcessRaisedException``).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        method = "forkserver"
        # Takes effect when the server starts (the first call); this module brings torch.
        multiprocessing.set_forkserver_preload([__name__])
    else:
        method = "spawn"  # Windows
    with tempfile.TemporaryDirectory(prefix="partialfc-store-") as tmp:
        store = os.path.join(tmp, "store")
        mp.start_processes(
            _entry,
            args=(fn, world, store, threads, dict(os.environ), args),
            nprocs=world,
            start_method=method,
            join=True,
        )
