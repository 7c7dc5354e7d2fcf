"""Log lines of a real two-rank run (configs/demo_cpu.toml under torchrun, gloo): time, level and
rank on every line; rank 0 alone logs INFO unless --log-all-ranks or [metrics] log_all_ranks (and
rank 0 alone writes TensorBoard events)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from partialfc.metrics.tensorboard import tensorboard_available
from tests.integration._service import DEMO, REPO, demo_overrides, make_dataset

pytestmark = pytest.mark.slow
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\w+) \[rank (\d)\] ([\w.]+): (.*)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("log") / "data")


@pytest.mark.parametrize("option", ["", "--log-all-ranks", "--metrics.log_all_ranks=true"])
def test_two_ranks_log_with_time_level_and_rank(data: Path, tmp_path: Path, option: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0",
        "-m",
        "partialfc.train",
        str(DEMO),
        *demo_overrides(data, tmp_path / "run", "--train.max_steps=2", "--eval.sets="),
        *([option] if option else []),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = [m.groups() for m in map(LINE.match, done.stderr.splitlines()) if m]
    assert not [line for line in done.stdout.splitlines() if LINE.match(line)], "logs: stderr"
    info = {(rank, msg) for level, rank, name, msg in ours if level == "INFO"}
    for rank in ("0", "1") if option else ("0",):
        assert (rank, "step 2/2  loss") in {(r, m[:14]) for r, m in info}, done.stderr[-3000:]
        assert any(r == rank and m.startswith("optimizers: backbone SGD") for r, m in info)
    if not option:
        assert {r for r, _ in info} == {"0"}, "rank 1 logs no INFO by default"
    assert any(r == "0" and m.startswith("finished at step 2") for r, m in info)
    if tensorboard_available():
        events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
        assert len(events) == 1, "rank 0 alone writes TensorBoard events"
