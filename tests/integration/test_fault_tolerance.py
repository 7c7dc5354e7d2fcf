"""A real fault under real torchrun: SIGKILL of a worker mid-run, on the shipped demo config.

A run killed at a random step and restarted by torchrun (``--max-restarts``) must produce the
same per-step losses as an uninterrupted run, with the data-loader worker the demo config ships
(a killed trainer leaves an orphaned loader worker behind; the restart must not depend on it).
SIGTERM (an eviction) is tests/integration/test_sigterm.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration._service import (
    demo_overrides,
    finish,
    make_dataset,
    popen_train,
    wait_for_step,
)
from tests.runlog import step_losses

STEPS = 12
CHECKPOINT_EVERY = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sigkill") / "data")


def _torchrun(data: Path, out: Path, log: Path, restarts: int) -> subprocess.Popen:
    # The demo config as shipped (workers = 1, ...); only the step counts are shortened.
    args = demo_overrides(
        data, out, f"--train.max_steps={STEPS}", f"--train.checkpoint_every={CHECKPOINT_EVERY}"
    )
    cmd_restarts = [f"--max-restarts={restarts}"] if restarts else []
    return popen_train(*args, log=log, torchrun=2, launcher_args=cmd_restarts)


def _children(parent: int) -> list[int]:
    """PIDs of the processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def test_sigkill_mid_run_and_torchrun_restart_reproduce_every_loss(
    data: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    assert finish(_torchrun(data, straight, tmp_path / "straight.log", 0)) == 0
    expected = step_losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    # A random step past the first checkpoint, so the restart resumes rather than starts over.
    kill_at = random.Random().randint(CHECKPOINT_EVERY + 1, STEPS - 2)
    faulty, log = tmp_path / "faulty", tmp_path / "faulty.log"
    proc = _torchrun(data, faulty, log, restarts=1)
    wait_for_step(faulty, kill_at, proc, log, timeout=300)
    trainers = _children(proc.pid)
    assert len(trainers) == 2, f"expected two trainers under torchrun, found {trainers}"
    assert _children(trainers[-1]), "the shipped config's loader worker is running"
    os.kill(trainers[-1], signal.SIGKILL)
    assert finish(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "resumed from" in text, "the restarted workers resumed from a checkpoint"
    assert "Traceback" not in text.split("resumed from", 1)[1], text[-3000:]
    got = step_losses(faulty)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (
            f"step {step} (killed at {kill_at})"
        )
