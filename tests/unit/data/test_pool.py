"""``ordered_map``: in order for any worker count, and it stops without hanging when a worker
dies or the consumer stops early."""

from __future__ import annotations

import os
import signal
import time

import pytest

from partialfc.data._pool import ordered_map
from partialfc.errors import UserError


def _square(x: int) -> int:
    return x * x


def _square_but_die_at_13(x: int) -> int:
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return x * x


def _square_but_fail_at_13(x: int) -> int:
    if x == 13:
        raise ValueError("no square for 13")
    return x * x


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_task_order(workers: int) -> None:
    tasks = list(range(50))
    assert list(ordered_map(_square, tasks, workers, "t", False, chunksize=3)) == [
        x * x for x in tasks
    ]


def test_a_killed_worker_is_one_error_not_a_hang() -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        list(ordered_map(_square_but_die_at_13, list(range(40)), 2, "pack", False, chunksize=2))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert message.startswith("pack: a worker process ended abruptly (killed, or out of memory?)")
    assert message.endswith("of 40 items; --workers 1 runs in this process")


def test_an_error_in_a_worker_is_raised_as_itself() -> None:
    with pytest.raises(ValueError, match="no square for 13"):
        list(ordered_map(_square_but_fail_at_13, list(range(40)), 2, "t", False, chunksize=2))


def test_stopping_early_ends_the_workers() -> None:
    import multiprocessing

    before = set(multiprocessing.active_children())
    results = ordered_map(_square, list(range(10_000)), 2, "t", False, chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    results.close()
    assert all(not p.is_alive() for p in workers)
