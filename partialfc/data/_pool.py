"""An ordered process-pool map with progress (:mod:`partialfc.progress`), shared by ``pack``,
``synth`` and ``inspect --verify``."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from partialfc.progress import Progress

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int,
    desc: str,
    progress: bool,
    chunksize: int = 16,
) -> Iterator[R]:
    """Yields ``fn(task)`` for each task, in task order.

    Runs in a process pool when ``workers > 1`` (``fork`` where available: fast start, nothing
    to re-import). Keeping the input order is what makes outputs independent of ``workers``.
    """
    bar = Progress(len(tasks), desc, "img", progress)
    try:
        if workers <= 1:
            for task in tasks:
                result = fn(task)
                bar.update()  # before the yield: a consumer that stops after the last item
                yield result  # closes this generator there, and the count must be complete
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers, initializer=_worker_signals) as pool:
            for item in pool.imap(fn, tasks, chunksize=chunksize):
                bar.update()
                yield item
    finally:
        bar.close()


def _worker_signals() -> None:
    # Ctrl-C reaches the whole process group: only the parent handles it (it stops the pool and
    # cleans up), instead of every worker printing its own KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (sent to the group, or by Pool.terminate) ends a worker through SystemExit rather
    # than the default action: an idle worker waits for tasks holding the task queue's lock, and
    # one killed outright never releases it, so the parent's Pool.terminate would wait forever.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
