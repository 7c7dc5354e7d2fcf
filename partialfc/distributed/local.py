"""Run a function on W local CPU processes joined in a gloo group (tests, demos, benchmarks).

The rendezvous is a FileStore in a temporary directory: no port is opened, so concurrent runs never
clash. For real jobs use torchrun.

The ranks are forked from multiprocessing's fork server, which imports torch once, before it has
run anything (no thread pool to break in a fork), so a run costs about 0.1 s after the first,
against 3 to 5 s for spawned processes that each import torch (the test suite makes hundreds of
runs). ``fn`` runs with the caller's environment, standard output and standard error of the
moment, as in a spawned process; only what is read while the fork server starts or while ``fn``'s
module is imported sees the environment of the first call.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from multiprocessing import reduction
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
    stdio: _Stdio | None,
    args: tuple,
) -> None:
    os.environ.clear()
    os.environ.update(env)
    if stdio is not None:
        stdio.install()
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


class _Stdio:
    """The caller's file descriptors 1 and 2, sent to a forked rank with it.

    A fork server's children inherit the server's standard streams, those of the first call (in
    pytest, the capture file of whichever test started it): the caller's current ones travel
    with each process instead, as multiprocessing sends descriptors (pickled while it starts the
    process), and the rank puts them in place before running anything.
    """

    def __init__(self, fds: tuple[int, int] = (1, 2)) -> None:
        self.fds = fds

    def __reduce__(self):
        return _Stdio._received, tuple(reduction.DupFd(fd) for fd in self.fds)

    @staticmethod
    def _received(*dups: Any) -> _Stdio:
        return _Stdio(tuple(dup.detach() for dup in dups))

    def install(self) -> None:
        for target, fd in enumerate(self.fds, start=1):
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)


def run_local(fn: Callable[..., Any], world: int, *args: object, threads: int = 1) -> None:
    """Call ``fn(rank, world, *args)`` in ``world`` new processes sharing a gloo group.

    ``fn`` must be importable by name (a module-level function). An exception on any rank stops the
    others and is raised here (``torch.multiprocessing.ProcessRaisedException``).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        method, stdio = "forkserver", _Stdio()
        # Takes effect when the server starts (the first call); this module brings torch.
        multiprocessing.set_forkserver_preload([__name__])
    else:
        method, stdio = "spawn", None  # Windows: spawned processes inherit the caller's streams
    with tempfile.TemporaryDirectory(prefix="partialfc-store-") as tmp:
        store = os.path.join(tmp, "store")
        mp.start_processes(
            _entry,
            args=(fn, world, store, threads, dict(os.environ), stdio, args),
            nprocs=world,
            start_method=method,
            join=True,
        )
