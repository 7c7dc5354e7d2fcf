"""A run that succeeded ends together: no rank closes its sockets (returns from leave_together)
before every rank has arrived, so none can fail in the tail of the last collective."""

from __future__ import annotations

import json
import time
from pathlib import Path

from partialfc.distributed import leave_together
from tests.distributed.harness import run_ranks


def _arrive_late(rank: int, world: int, out: str) -> None:
    time.sleep(0.4 * rank)  # rank 2 arrives 0.8 s after rank 0
    arrived = time.time()
    leave_together()
    Path(out, f"{rank}.json").write_text(json.dumps([arrived, time.time()]))


def test_no_rank_leaves_before_the_last_arrives(tmp_path: Path) -> None:
    run_ranks(_arrive_late, 3, str(tmp_path))
    times = {r: json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)}
    last_arrival = max(arrived for arrived, _ in times.values())
    for rank, (_, left) in times.items():
        assert left >= last_arrival, f"rank {rank} left before rank 2 arrived"


def test_a_lone_process_returns_at_once() -> None:
    start = time.monotonic()
    leave_together()
    assert time.monotonic() - start < 0.1
