"""An ordered process-pool map with progress (:mod:`partialfc.progress`), shared by ``pack``,
``synth`` and ``inspect --verify``.

Built on :class:`concurrent.futures.ProcessPoolExecutor`, not :class:`multiprocessing.Pool`: the
executor notices a worker that died (SIGTERM or SIGKILL to the process group, the OOM killer) and
fails the work instead of waiting for it. A ``Pool`` cannot stop safely: ``terminate()`` must
first take the task queue's lock, which an idle worker holds while it waits for a task, so a
worker killed there leaves the parent waiting forever; and a Python-level SIGTERM handler that
would release it can lose the signal if it arrives just before the worker blocks on that lock
(seen on Python 3.12: two of three loops of 200 stops hung, one at its 158th).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from partialfc.errors import UserError
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

    Runs in worker processes when ``workers > 1`` (``fork`` where available: fast start, nothing
    to re-import). Keeping the input order is what makes outputs independent of ``workers``. An
    error in ``fn`` is raised here, and a worker that died (killed, out of memory) is a
    :class:`UserError` naming ``desc``; when the consumer stops early (an error, Ctrl-C,
    ``close()``) the workers are killed at once, not left to finish their chunks.
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
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_signals)
        finished = False
        try:
            for item in pool.map(fn, tasks, chunksize=chunksize):
                bar.update()
                yield item
            finished = True
        except BrokenProcessPool as exc:
            raise UserError(
                f"{desc}: a worker process ended abruptly (killed, or out of memory?) after "
                f"{bar.count} of {len(tasks)} items; --workers 1 runs in this process"
            ) from exc
        finally:
            if not finished:
                _kill_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    # Python 3.14 has ProcessPoolExecutor.kill_workers(); before it, its process table.
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.kill()


def _worker_signals() -> None:
    # Ctrl-C reaches the whole process group: only the parent handles it (it stops the workers and
    # cleans up), instead of every worker printing its own KeyboardInterrupt traceback. SIGTERM
    # keeps (or gets back, from a parent's handler inherited through fork) its default action:
    # the worker ends at once, and the executor fails the work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
